"""Property tests: no log line, however hostile, makes ``trail.log_line``, the hop builder, the
root cause or any rendering raise, and nothing they show carries an invisible or reordering
character (issue 22, item 4). Lines are arbitrary JSON objects over the contract's keys (values
of every JSON type, ``Infinity``, ``NaN``, huge integers, odd times and offsets, hop links that
loop), arbitrary text, and brackets nested deeper than Python recurses. Example tests of the same:
tests/trail/test_hostile.py."""

from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from correlation import schema
from trail.cli.render import render_text
from trail.document import render_json
from trail.hops import RawLine, build_trail
from trail.log_line import MAX_DURATION_MS, MAX_TIME_NS, STATUS_RANGE, parse_line
from trail.lookup import TrailLookup
from trail.root_cause import root_cause
from trail.web.page import page_view
from trail.window import Window

pytestmark = pytest.mark.unit

CID = "01a2131f87d47bef86b795a8b15dfdba"
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: Bounded examples and no deadline: the suite runs on a loaded 2-core machine.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE_STRINGS = st.sampled_from(
    [
        "Infinity",
        "-Infinity",
        "NaN",
        "1e300",
        "-1",
        "",
        "9999-12-31T23:59:59.999999-23:59",
        "0001-01-01T00:00:00+23:59",
        "2262-04-11T23:47:16.854776Z",  # one microsecond past int64 nanoseconds
        "2025-06-15T15:06:40Z",
        "correlation.access",
        "task",
        "ERROR",
        "\u202epaid\u2028\u200b\ud800\x1b[2J",
    ]
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | HOSTILE_STRINGS
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
#: A few hop IDs, so lines group into hops and parent links form trees, orphans and loops.
HOP_IDS = st.sampled_from(["a", "b", "c", "d\u202e"])
CONTRACT_KEYS = [
    schema.TIME,
    schema.LEVEL,
    schema.LOGGER,
    schema.MESSAGE,
    schema.SERVICE,
    schema.EXCEPTION,
    schema.STACK,
    schema.METHOD,
    schema.ROUTE,
    schema.PATH,
    schema.STATUS,
    schema.DURATION_MS,
    schema.CALLER,
    schema.KIND,
    schema.TASK,
    schema.STATE,
    schema.QUEUE_WAIT_MS,
]


#: Any calendar time (years 1..9999) with any offset up to +-23:59, as RFC 3339.
TIMES = st.builds(
    lambda moment, offset: moment.replace(tzinfo=timezone(offset)).isoformat(),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)),
)
NUMBERS = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats().map(repr)
    | HOSTILE_STRINGS
)
#: Each key's values: the ones its reader must survive most often, then any JSON at all.
KEY_VALUES = {
    schema.TIME: TIMES | HOSTILE_STRINGS | JSON_VALUES,
    schema.STATUS: NUMBERS | JSON_VALUES,
    schema.DURATION_MS: NUMBERS | JSON_VALUES,
    schema.QUEUE_WAIT_MS: NUMBERS | JSON_VALUES,
    schema.KIND: st.just(schema.KIND_TASK) | JSON_VALUES,
}


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    """One line as Python's json writes it (so ``Infinity`` and ``NaN`` appear bare)."""
    fields: dict[str, Any] = {
        key: draw(KEY_VALUES.get(key, JSON_VALUES)) for key in CONTRACT_KEYS if draw(st.integers(0, 2)) == 0
    }
    fields[schema.REQUEST_ID] = draw(HOP_IDS | JSON_VALUES)
    fields[schema.PARENT_REQUEST_ID] = draw(st.none() | HOP_IDS | JSON_VALUES)
    if draw(st.booleans()):
        fields[schema.LOGGER] = schema.ACCESS_LOGGER
    extra = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2))
    return json.dumps({**extra, **fields})


RAW_LINES = (
    json_lines()
    | st.text(max_size=80)
    | st.integers(min_value=33, max_value=5000).map(lambda depth: "[" * depth)
    | st.integers(min_value=30, max_value=40).map(lambda depth: '{"message": ' + "[" * depth + "]" * depth + "}")
)
LOKI_LINES = st.tuples(
    st.integers(min_value=0, max_value=2**63 - 1),  # Loki's timestamps: int64 ns
    RAW_LINES,
    st.none() | st.text(max_size=10),  # the service_name label
    st.fixed_dictionaries({schema.REQUEST_ID: st.none() | HOP_IDS, schema.LEVEL: st.none() | st.text(max_size=6)}),
)


def unsafe_characters(text: str) -> set[str]:
    return {ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES}


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*strings_in(key), *strings_in(item))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in strings_in(item)]
    if hasattr(value, "__dataclass_fields__"):
        return [s for name in value.__dataclass_fields__ for s in strings_in(getattr(value, name))]
    return []


@FAST
@given(LOKI_LINES)
def test_any_line_parses_to_readable_values_or_unknown(raw_line: RawLine) -> None:
    ts_ns, raw, label, metadata = raw_line
    line = parse_line(ts_ns, raw, label, metadata)
    assert 0 <= line.ts_ns < MAX_TIME_NS
    status = line.number(schema.STATUS)
    assert status is None or (float(status).is_integer() and int(status) in STATUS_RANGE)
    for name in (schema.DURATION_MS, schema.QUEUE_WAIT_MS):
        value = line.number(name)
        assert value is None or 0.0 <= value <= MAX_DURATION_MS
    for name in line.unreadable():
        assert line.fields is not None and name in line.fields
    assert isinstance(line.level, str) and line.is_error in (True, False)


@FAST
@given(st.lists(LOKI_LINES, min_size=1, max_size=8))
def test_any_lines_build_a_trail_that_every_view_shows_safely(raw_lines: list[RawLine]) -> None:
    trail = build_trail(CID, raw_lines)
    hops = list(trail.walk())
    assert {id(hop) for hop in hops} == {id(hop) for hop in trail.hops.values()}, "every hop is shown once"
    assert trail.line_count == len(raw_lines), "no line is dropped"
    for hop in hops:
        assert hop.status is None or hop.status in STATUS_RANGE
        assert hop.duration_ms is None or 0.0 <= hop.duration_ms <= MAX_DURATION_MS
    root_cause(trail)

    text = render_text(trail, window=(0, 2**63 - 1), color=False, note="a note \u202e")
    assert unsafe_characters(text) == set()
    text.encode("utf-8")  # a lone surrogate would fail here: what a terminal or a page would hit

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    document = json.loads(render_json(trail, query="q"), parse_constant=refuse)
    assert len(document["hops"]) == len(hops)

    lookup = TrailLookup(CID, "q", (Window(0, 2**63 - 1),), (), trail, ("why \u2028",), 10, True)
    view = page_view(lookup)
    assert len(view.hops) == len(hops)
    shown = strings_in(view)
    assert all(unsafe_characters(value) == set() for value in shown)
    "".join(shown).encode("utf-8")
