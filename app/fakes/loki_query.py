"""How the fake Loki answers ``GET /loki/api/v1/query_range``: a small LogQL evaluator.

It evaluates the part of LogQL that ``trail`` and the tests write, the way Loki does:

- a stream selector ``{name op "value", ...}`` (``=``, ``!=``, ``=~``, ``!~``; regexes anchored),
  with at least one matcher that cannot match the empty string;
- line filters ``|= "text"``, ``!= "text"``, ``|~ "re"``, ``!~ "re"``;
- ``| json`` and ``| json name="key", ...`` (top-level keys; a name already taken by a label or
  metadata field gets ``_extracted``; a line that is not a JSON object gets ``__error__``);
- label filters ``| name op "value"`` and numeric ``| name >= 500`` (``>``, ``>=``, ``<``,
  ``<=``, ``==``, ``!=``); a value that is not a number keeps the line with ``__error__`` set,
  as Loki does, so ``| __error__=""`` drops it.

Names come from ``correlation.schema``, not from a copy of them: the selector may use only
``STREAM_LABELS``, and a label filter only a stream label, a (``OPTIONAL_``)``METADATA_FIELDS`` name, a name a
``json`` stage extracted, or ``__error__``. Where a real Loki would silently find nothing (a
query on a label that is not there), the fake answers 400, so a test sees the mistake.

The answer has Loki's shape, ``{"status": "success", "data": {"resultType": "streams", "result":
[{"stream": {...}, "values": [["<ns>", "<line>"], ...]}], "stats": {...}}}``: ``start``
inclusive, ``end`` exclusive; ``limit`` counts entries across all streams; ``forward`` gives the
oldest, ``backward`` the newest; one result per distinct label set, structured metadata and
extracted labels merged into ``stream``, or, with ``X-Loki-Response-Encoding-Flags:
categorize-labels``, kept apart as ``{"structuredMetadata": {...}, "parsed": {...}}``.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from correlation import schema
from fakes.loki_push import PushedEntry

ERROR_LABEL = "__error__"
_TOKEN = re.compile(
    r"\s*(?:(?P<string>\"(?:[^\"\\]|\\.)*\"|`[^`]*`)"
    r"|(?P<op>\|=|\|~|!=|!~|=~|==|>=|<=|[{}|,=<>])"
    r"|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_LINE_FILTERS: dict[str, Callable[[str, str], bool]] = {
    "|=": lambda line, text: text in line,
    "!=": lambda line, text: text not in line,
    "|~": lambda line, pattern: re.search(pattern, line) is not None,
    "!~": lambda line, pattern: re.search(pattern, line) is None,
}
_STRING_MATCH: dict[str, Callable[[str, str], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "=~": lambda value, pattern: re.fullmatch(pattern, value) is not None,
    "!~": lambda value, pattern: re.fullmatch(pattern, value) is None,
}
_NUMERIC_MATCH: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class QueryError(ValueError):
    """A query the fake cannot run; its text is the 400 answer."""


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def test(self, labels: Mapping[str, str]) -> bool:
        return _STRING_MATCH[self.op](labels.get(self.name, ""), self.value)


@dataclass(frozen=True)
class LineFilter:
    op: str
    text: str


@dataclass(frozen=True)
class JsonStage:
    #: extracted label name -> top-level key; empty: every top-level key under its own name.
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LabelFilter:
    name: str
    op: str
    value: str | float


Stage = LineFilter | JsonStage | LabelFilter


@dataclass
class LogQuery:
    selector: list[Matcher]
    stages: list[Stage] = field(default_factory=list)

    def evaluate(self, entry: PushedEntry) -> dict[str, str] | None:
        """The labels the pipeline extracted when ``entry`` is selected, else None."""
        if not all(m.test(entry.labels) for m in self.selector):
            return None
        known = {**entry.labels, **entry.metadata}
        parsed: dict[str, str] = {}
        for stage in self.stages:
            if isinstance(stage, LineFilter):
                if not _LINE_FILTERS[stage.op](entry.line, stage.text):
                    return None
            elif isinstance(stage, JsonStage):
                _extract_json(entry.line, stage, known, parsed)
            elif not _label_filter(stage, {**known, **parsed}, parsed):
                return None
        return parsed


def _extract_json(line: str, stage: JsonStage, known: Mapping[str, str], parsed: dict[str, str]) -> None:
    try:
        document = json.loads(line)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        parsed[ERROR_LABEL] = "JSONParserErr"
        return
    wanted = stage.fields or tuple((key, key) for key in document)
    for name, key in wanted:
        value = document.get(key)
        if value is None or isinstance(value, dict | list):
            continue
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        parsed[f"{name}_extracted" if name in known else name] = text


def _label_filter(stage: LabelFilter, labels: Mapping[str, str], parsed: dict[str, str]) -> bool:
    value = labels.get(stage.name, "")
    if isinstance(stage.value, str):
        return _STRING_MATCH[stage.op](value, stage.value)
    try:
        number = float(value)
    except ValueError:
        parsed[ERROR_LABEL] = "LabelFilterErr"  # Loki keeps the line and marks it
        return True
    return _NUMERIC_MATCH[stage.op](number, stage.value)


# -- parsing -----------------------------------------------------------------------------------


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        found = _TOKEN.match(text, pos)
        if not found or found.end() == pos:
            raise QueryError(f"parse error at col {pos + 1}: unexpected {text[pos : pos + 10]!r}")
        kind = found.lastgroup or ""
        tokens.append((kind, found.group(kind)))
        pos = found.end()
    return tokens


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    # Go's escapes (Loki's): JSON's, and \UXXXXXXXX for a code point past the BMP, which JSON
    # writes as a surrogate pair instead. A backslash pair is matched first, so \\U stays text.
    unquoted: str = json.loads(_GO_LONG_ESCAPE.sub(_json_escape, token))
    return unquoted


_GO_LONG_ESCAPE = re.compile(r"\\(\\|U([0-9a-fA-F]{8}))")


def _json_escape(found: re.Match[str]) -> str:
    if found.group(2) is None:
        return found.group(0)
    return json.dumps(chr(int(found.group(2), 16)))[1:-1]  # ensure_ascii: "\udb40\udc01"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise QueryError(f"parse error: unexpected end of query {self.text!r}")
        got_kind, got = self.tokens[self.pos]
        if (kind and got_kind != kind) or (value and got != value):
            raise QueryError(f"parse error: expected {value or kind}, got {got!r} in {self.text!r}")
        self.pos += 1
        return got

    def query(self) -> LogQuery:
        self.take("op", "{")
        selector = [self.matcher()]
        while self.peek() == ",":
            self.take()
            selector.append(self.matcher())
        self.take("op", "}")
        if all(_STRING_MATCH[m.op]("", m.value) for m in selector):
            raise QueryError(
                "queries require at least one regexp or equality matcher that does not have an "
                f"empty-compatible value: {self.text!r}"
            )
        stages: list[Stage] = []
        while self.peek() is not None:
            stages.append(self.stage(stages))
        return LogQuery(selector, stages)

    def matcher(self) -> Matcher:
        name = self.take("name")
        if name not in schema.STREAM_LABELS:
            raise QueryError(
                f"fake Loki: {name!r} is not a stream label (correlation.schema.STREAM_LABELS: "
                f"{', '.join(schema.STREAM_LABELS)})"
            )
        op = self.take("op")
        if op not in _STRING_MATCH:
            raise QueryError(f"parse error: bad matcher operator {op!r} in {self.text!r}")
        return Matcher(name, op, _unquote(self.take("string")))

    def stage(self, earlier: list[Stage]) -> Stage:
        op = self.take("op")
        if op in _LINE_FILTERS:
            return LineFilter(op, _unquote(self.take("string")))
        if op != "|":
            raise QueryError(f"parse error: unexpected {op!r} in {self.text!r}")
        name = self.take("name")
        if name == "json":
            return self.json_stage()
        _check_filter_name(name, earlier)
        op = self.take("op")
        if self.peek() is not None and self.tokens[self.pos][0] == "number":
            if op not in _NUMERIC_MATCH:
                raise QueryError(f"parse error: {op!r} does not compare numbers in {self.text!r}")
            return LabelFilter(name, op, float(self.take("number")))
        if op not in _STRING_MATCH:
            raise QueryError(f"parse error: {op!r} needs a number in {self.text!r}")
        return LabelFilter(name, op, _unquote(self.take("string")))

    def json_stage(self) -> JsonStage:
        fields: list[tuple[str, str]] = []
        while self.peek() is not None and self.tokens[self.pos][0] == "name":
            name = self.take("name")
            self.take("op", "=")
            fields.append((name, _unquote(self.take("string"))))
            if self.peek() != ",":
                break
            self.take()
        return JsonStage(tuple(fields))


def _check_filter_name(name: str, earlier: list[Stage]) -> None:
    extracted = {n for s in earlier if isinstance(s, JsonStage) for n, _ in s.fields}
    extracts_all = any(isinstance(s, JsonStage) and not s.fields for s in earlier)
    allowed = {
        *schema.STREAM_LABELS,
        *schema.METADATA_FIELDS,
        *schema.OPTIONAL_METADATA_FIELDS,
        ERROR_LABEL,
        *extracted,
    }
    if name not in allowed and not extracts_all:
        raise QueryError(
            f"fake Loki: no label {name!r} to filter on: not a stream label or metadata field of "
            "correlation.schema, and no json stage before it extracts it"
        )


def parse_query(text: str) -> LogQuery:
    """The query as an evaluator, or QueryError (a 400 from the fake)."""
    return _Parser(text).query()


# -- answering ----------------------------------------------------------------------------------


def query_range_result(
    entries: list[PushedEntry], query: LogQuery, start: int, end: int, limit: int, direction: str, categorize: bool
) -> dict[str, Any]:
    """The body of a successful ``query_range`` answer over ``entries``."""
    hits = []
    for entry in entries:
        if start <= entry.timestamp_ns < end:
            parsed = query.evaluate(entry)
            if parsed is not None:
                hits.append((entry, parsed))
    # Loki's merge is global across streams: the limit keeps the oldest/newest overall.
    hits.sort(key=lambda hit: hit[0].timestamp_ns, reverse=direction == "backward")
    hits = hits[:limit]
    streams: dict[str, dict[str, Any]] = {}
    for entry, parsed in hits:
        if categorize:
            extra = {k: v for k, v in (("structuredMetadata", entry.metadata), ("parsed", parsed)) if v}
            stream, value = entry.labels, [str(entry.timestamp_ns), entry.line, extra]
        else:
            stream, value = {**entry.labels, **entry.metadata, **parsed}, [str(entry.timestamp_ns), entry.line]
        key = json.dumps(stream, sort_keys=True)
        streams.setdefault(key, {"stream": stream, "values": []})["values"].append(value)
    data: dict[str, Any] = {
        "resultType": "streams",
        "result": list(streams.values()),
        "stats": {"summary": {"totalEntriesReturned": len(hits), "execTime": 0.001}},
    }
    if categorize:
        data["encodingFlags"] = ["categorize-labels"]
    return {"status": "success", "data": data}
