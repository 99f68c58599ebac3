"""Grafana's side, checked without Grafana: Explore deep links, a small LogQL checker, Grafana's
variables in PromQL, and the PromQL of the provisioned dashboards.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

from tests.support import REPO
from tests.support.stack import load_yaml
from trail import links

# --- Grafana Explore URLs ---------------------------------------------------------------------

# The Explore deep link is built by the trail package (trail.links.explore_url: the trail page's
# button and /go/ use it); the tests compare the alert rules' Go templates against it.
explore_url = links.explore_url


def parse_explore_url(url: str, datasource_uids: set[str]) -> dict[str, Any]:
    """Decode an Explore link and check its shape; returns the panes object."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path.endswith("/explore"), url
    query = urllib.parse.parse_qs(parsed.query, strict_parsing=True)
    assert query.get("schemaVersion") == ["1"], url
    assert "left" not in query, f"old left= form loses data: {url}"
    (panes_text,) = query["panes"]
    panes = json.loads(panes_text)
    assert isinstance(panes, dict) and panes, url
    for pane in panes.values():
        assert pane["datasource"] in datasource_uids, f"unknown datasource {pane['datasource']!r}"
        assert pane["queries"], url
        for q in pane["queries"]:
            assert q["refId"] and q["expr"], q
            assert q["datasource"]["uid"] in datasource_uids, q
        rng = pane["range"]
        assert isinstance(rng["from"], str) and isinstance(rng["to"], str), f"range must be strings: {rng}"
    return panes


def explore_exprs(panes: dict[str, Any]) -> list[str]:
    return [q["expr"] for pane in panes.values() for q in pane["queries"]]


# --- LogQL: a deliberately small checker ------------------------------------------------------
# It knows log queries only (selector + pipeline), which is all this repo writes. It checks what
# a typo usually breaks: balanced braces/quotes, matcher syntax, known stage names, and Loki's
# rule that a selector needs one matcher that cannot match the empty string.

_STRING = r'"(?:[^"\\]|\\.)*"|`[^`]*`'
_MATCHER = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*")
_LINE_FILTER = re.compile(rf"\s*(\|=|!=|\|~|!~)\s*({_STRING})\s*")
_LABEL_FILTER = re.compile(rf"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|==|=|>=|<=|>|<)\s*({_STRING}|[0-9.]+[a-z]*)\s*")
_IDENT_LIST = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*\s*")
_PARSERS = {"json", "logfmt", "decolorize"}


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes."""
    parts, buf, quote = [], [], ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in '"`':
            quote = ch
            buf.append(ch)
        elif text.startswith(sep, i):
            parts.append("".join(buf))
            buf = []
            i += len(sep) - 1
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise ValueError(f"unterminated string in {text!r}")
    parts.append("".join(buf))
    return parts


_METRIC_QUERY = re.compile(
    r"\s*(?:(?:sum|max|min|avg|count)\s+by\s*\((?:" + _IDENT_LIST.pattern + r")?\)\s*\()?"
    r"\s*(?:count_over_time|rate|bytes_over_time|bytes_rate)\s*\((?P<inner>.*)\[\d+[smhd]\]\s*\)\s*\)?\s*",
    re.DOTALL,
)


def check_logql_metric(expr: str) -> None:
    """Raise ValueError unless ``expr`` is a metric query of the shape the dashboards write: an
    optional ``sum by (...)`` around a log range aggregation, over a log query :func:`check_logql` accepts."""
    found = _METRIC_QUERY.fullmatch(expr)
    if not found or expr.count("(") != expr.count(")"):
        raise ValueError(f"not a metric query of the dashboards' shape: {expr!r}")
    check_logql(found["inner"].strip())


def check_logql(expr: str) -> None:
    """Raise ValueError when `expr` is not a log query this checker understands."""
    text = expr.strip()
    if not text.startswith("{"):
        raise ValueError(f"log query must start with a stream selector: {expr!r}")
    close = _find_selector_end(text)
    selector, pipeline = text[1:close], text[close + 1 :]
    matchers = _split_top(selector, ",")
    if not matchers or not all(m.strip() for m in matchers):
        raise ValueError(f"empty matcher in {expr!r}")
    non_empty = False
    for m in matchers:
        found = _MATCHER.fullmatch(m)
        if not found:
            raise ValueError(f"bad matcher {m!r} in {expr!r}")
        op, value = found.group(2), found.group(3)[1:-1]
        if (op == "=" and value) or (op == "=~" and not re.fullmatch(value, "")):
            non_empty = True
    if not non_empty:
        raise ValueError(f"Loki needs a matcher that cannot match empty: {expr!r}")
    _check_pipeline(pipeline, expr)


def _find_selector_end(text: str) -> int:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == "\\" and quote == '"':
                continue
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in '"`':
            quote = ch
        elif ch == "}":
            return i
    raise ValueError(f"unbalanced braces or quotes: {text!r}")


def _check_pipeline(pipeline: str, expr: str) -> None:
    rest = pipeline
    while rest.strip():
        line_filter = _LINE_FILTER.match(rest)
        if line_filter:
            rest = rest[line_filter.end() :]
            continue
        if not rest.lstrip().startswith("|"):
            raise ValueError(f"expected a stage at {rest!r} in {expr!r}")
        rest = rest.lstrip()[1:]
        # A stage runs to the next top-level pipe (a `!=` line filter after a stage is not
        # supported: this repo never writes one).
        stage, rest = _next_stage(rest)
        _check_stage(stage.strip(), expr)


def _next_stage(text: str) -> tuple[str, str]:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in '"`':
            quote = ch
        elif ch == "|":
            return text[:i], text[i:]
    if quote:
        raise ValueError(f"unterminated string in {text!r}")
    return text, ""


def _check_stage(stage: str, expr: str) -> None:
    word = stage.split(None, 1)[0] if stage else ""
    args = stage[len(word) :].strip()
    if word in _PARSERS:
        if args and word != "decolorize":
            for param in _split_top(args, ","):
                if not re.fullmatch(rf"\s*[A-Za-z_][A-Za-z0-9_]*(\s*=\s*({_STRING}))?\s*", param):
                    raise ValueError(f"bad {word} parameter {param!r} in {expr!r}")
        return
    if word in ("keep", "drop"):
        if not _IDENT_LIST.fullmatch(args):
            raise ValueError(f"bad {word} list {args!r} in {expr!r}")
        return
    if word == "line_format":
        if not re.fullmatch(_STRING, args):
            raise ValueError(f"line_format needs one string: {expr!r}")
        return
    for condition in re.split(r"\s+(?:and|or)\s+|\s*,\s*", stage):
        if not _LABEL_FILTER.fullmatch(condition):
            raise ValueError(f"unknown stage {stage!r} in {expr!r}")


# --- Grafana variables in PromQL ---------------------------------------------------------------

_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$__auto": "1m",
}


def substitute_grafana_vars(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables so Prometheus can run the expression."""
    out = expr
    for name, value in sorted(_GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        out = out.replace("${" + name[1:] + "}", value).replace(name, value)
    for name, value in (values or {}).items():
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in out:
        raise AssertionError(f"unsubstituted Grafana variable in {out!r}")
    return out


# --- PromQL in the dashboards -----------------------------------------------------------------


def dashboard_promql_queries() -> Iterator[tuple[str, str]]:
    """(where, expr) for every Prometheus target and query variable in grafana/dashboards/*.json.
    Expressions still hold Grafana variables: run them through substitute_grafana_vars."""
    paths = sorted((REPO / "grafana/dashboards").glob("*.json"))
    assert paths, "grafana/dashboards/*.json is empty"
    for path in paths:
        dashboard = json.loads(path.read_text())
        uid = dashboard.get("uid", path.stem)
        for panel in dashboard["panels"]:
            for p in [panel, *panel.get("panels", [])]:  # collapsed rows hold their panels
                for target in p.get("targets", []):
                    if (target.get("datasource") or p.get("datasource") or {}).get("type") == "prometheus":
                        yield f"{uid}/{p['title']}/{target['refId']}", target["expr"]
        for var in dashboard.get("templating", {}).get("list", []):
            if var["type"] == "query":
                # label_values(metric, label) is Grafana's; the series it reads is PromQL.
                found = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
                assert found, f"{uid}/${var['name']}: not label_values(metric, label): {var['definition']!r}"
                metric, label = found.groups()
                yield f"{uid}/${var['name']}", f"count by ({label}) ({metric})"


def provisioned_datasource_uids() -> set[str]:
    config = load_yaml("grafana/provisioning/datasources/datasources.yml")
    return {ds["uid"] for ds in config["datasources"]}
