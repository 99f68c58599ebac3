"""How the fake Loki answers ``GET /loki/api/v1/query``: instant metric queries, a small subset.

What the trail web app and the dashboards send, evaluated the way Loki does:

- a range aggregation over a log query (:mod:`fakes.loki_query`'s subset):
  ``count_over_time(<log query> [<n>s|m|h])``, or ``max_over_time(<log query> | unwrap <label>
  [| __error__=""] [<range>])`` (a value that is not a number: the sample is dropped with
  ``__error__=""``, else the query fails as Loki's does), optionally ``by (<labels>)`` after it;
- optionally inside one vector aggregation ``sum by (<labels>) (...)`` or ``max by (...) (...)``;
- a ``| keep <labels>`` stage last in the log query: only those labels stay on each series (Loki
  3's way to count without a series per structured-metadata value such as ``correlation_id``).

Over ``query_range`` (:func:`matrix_result`) the same query is evaluated at every ``step`` from
``start`` to ``end`` (both inclusive), a ``matrix`` of the series' non-empty points, as Loki's; as
Loki 3.7 does, the points lie on multiples of ``step`` since the epoch: ``start`` moves back and
``end`` on to that grid (asked for 23 s .. 77 s with a 10 s step, Loki answers 20 s .. 80 s).

The range is Loki's: entries with ``time - range < ts <= time``. A series' labels are the entry's
stream labels, structured metadata and extracted labels (without ``__error__``), or only the
``by`` labels. Loki refuses a query past 500 series (``max_query_series``): so does the fake.
Values are written as Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: the shortest round trip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fakes.loki_push import PushedEntry
from fakes.loki_query import ERROR_LABEL, LogQuery, QueryError, parse_query

MAX_QUERY_SERIES = 500
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_GROUPING = r"\s*(?P<{0}>\(\s*(?:[A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)?\s*\))"
_RANGE_AGGREGATION = re.compile(
    r"\s*(?P<fn>count_over_time|max_over_time)\s*\((?P<inner>.*)\[(?P<n>\d+)(?P<unit>[smh])\]\s*\)"
    r"(?:\s*by" + _GROUPING.format("by") + r")?\s*",
    re.DOTALL,
)
_VECTOR_AGGREGATION = re.compile(
    r"\s*(?P<op>sum|max)\s+by" + _GROUPING.format("outer_by") + r"\s*\((?P<body>.*)\)\s*", re.DOTALL
)
_UNWRAP = re.compile(r"\|\s*unwrap\s+(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<errors>\|\s*__error__\s*=\s*\"\"\s*)?$")
_KEEP = re.compile(r"\|\s*keep\s+(?P<labels>[A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*$")
_FUNCTIONS: dict[str, Callable[[list[float]], float]] = {"count_over_time": len, "max_over_time": max}
_VECTOR_OPS: dict[str, Callable[[list[float]], float]] = {"sum": sum, "max": max}


@dataclass(frozen=True)
class MetricQuery:
    function: str
    log_query: LogQuery
    range_ns: int
    unwrap: str | None = None
    drop_unwrap_errors: bool = False
    by: tuple[str, ...] | None = None
    outer: str | None = None
    outer_by: tuple[str, ...] = ()
    keep: tuple[str, ...] | None = None


def _names(text: str | None) -> tuple[str, ...]:
    """The names in a grouping ``( a, b )``."""
    return tuple(name.strip() for name in (text or "").strip("()").split(",") if name.strip())


def parse_metric_query(text: str) -> MetricQuery:
    """The query as an evaluator, or QueryError (a 400 from the fake)."""
    outer: str | None = None
    outer_by: tuple[str, ...] = ()
    vector = _VECTOR_AGGREGATION.fullmatch(text)
    if vector:
        outer, outer_by, text = vector["op"], _names(vector["outer_by"]), vector["body"]
    found = _RANGE_AGGREGATION.fullmatch(text)
    if not found:
        raise QueryError(f"fake Loki: not a metric query it evaluates: {text!r}")
    inner, unwrap, drop, keep = found["inner"].strip(), None, False, None
    kept = _KEEP.search(inner)
    if kept:
        keep, inner = _names(kept["labels"]), inner[: kept.start()].strip()
    unwrapped = _UNWRAP.search(inner)
    if found["fn"] == "max_over_time":
        if not unwrapped:
            raise QueryError("parse error: invalid aggregation max_over_time without unwrap")
        unwrap, drop, inner = unwrapped["label"], bool(unwrapped["errors"]), inner[: unwrapped.start()]
    elif unwrapped:
        raise QueryError("parse error: invalid aggregation count_over_time with unwrap")
    if found["by"] is not None and found["fn"] == "count_over_time":
        raise QueryError("parse error: grouping not allowed for count_over_time aggregation")
    by = _names(found["by"]) if found["by"] is not None else None
    range_ns = int(found["n"]) * _UNIT_NS[found["unit"]]
    return MetricQuery(found["fn"], parse_query(inner), range_ns, unwrap, drop, by, outer, outer_by, keep)


def _format(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def instant_result(entries: list[PushedEntry], query: MetricQuery, time_ns: int) -> dict[str, Any]:
    """The body of a successful instant ``query`` answer over ``entries`` at ``time_ns``."""
    series: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for entry in entries:
        if not time_ns - query.range_ns < entry.timestamp_ns <= time_ns:
            continue
        parsed = query.log_query.evaluate(entry)
        if parsed is None:
            continue
        labels = {**entry.labels, **entry.metadata, **parsed}
        value = 1.0
        if query.unwrap is not None:
            raw = labels.pop(query.unwrap, "")
            try:
                value = float(raw)
            except ValueError:
                if query.drop_unwrap_errors:
                    continue
                raise QueryError(f'fake Loki: {query.unwrap}={raw!r} is not a number (add | __error__="")') from None
        if labels.get(ERROR_LABEL):
            continue  # Loki's own errors (a line that is not JSON): dropped unless asked for
        labels.pop(ERROR_LABEL, None)
        if query.keep is not None:
            labels = {name: labels[name] for name in query.keep if labels.get(name)}
        if query.by is not None:
            labels = {name: labels[name] for name in query.by if labels.get(name)}
        series.setdefault(tuple(sorted(labels.items())), []).append(value)
        if len(series) > MAX_QUERY_SERIES:
            raise QueryError(f"maximum number of series ({MAX_QUERY_SERIES}) reached for a single query")
    values = {key: _FUNCTIONS[query.function](samples) for key, samples in series.items()}
    if query.outer is not None:
        grouped: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for key, value in values.items():
            labels = dict(key)
            grouped.setdefault(tuple((n, labels[n]) for n in query.outer_by if labels.get(n)), []).append(value)
        values = {key: _VECTOR_OPS[query.outer](samples) for key, samples in grouped.items()}
    result = [{"metric": dict(key), "value": [time_ns / 1e9, _format(value)]} for key, value in values.items()]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def matrix_result(entries: list[PushedEntry], query: MetricQuery, params: Mapping[str, str]) -> dict[str, Any]:
    """The body of a successful ``query_range`` answer to a metric query: ``instant_result`` at
    ``start``, ``start + step``, ... up to ``end`` (Unix ns; ``step`` in seconds), both moved on to
    the step's grid as Loki moves them."""
    start, end = int(params.get("start", "0")), int(params.get("end", "0"))
    try:
        step_ns = int(float(params.get("step", "")) * 1e9)
    except ValueError:
        raise QueryError("fake Loki: give the metric range query a step in seconds") from None
    if step_ns <= 0 or end < start or (end - start) // step_ns > 11_000:
        raise QueryError("fake Loki: bad start, end or step (at most 11,000 points, as Loki)")
    start, end = start - start % step_ns, end + -end % step_ns
    series: dict[tuple[tuple[str, str], ...], list[list[Any]]] = {}
    for t in range(start, end + 1, step_ns):
        for sample in instant_result(entries, query, t)["data"]["result"]:
            series.setdefault(tuple(sorted(sample["metric"].items())), []).append(sample["value"])
    result = [{"metric": dict(key), "values": values} for key, values in series.items()]
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def instant_time(params: Mapping[str, str]) -> int:
    """The ``time`` parameter in Unix ns (Loki also reads seconds with a fraction)."""
    raw = params.get("time", "")
    if not raw:
        raise QueryError("fake Loki: give the instant query a time")
    return int(raw) if raw.isdigit() and len(raw) > 12 else int(float(raw) * 1e9)
