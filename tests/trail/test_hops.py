"""trail.hops, trail.cli.render and trail.document: the hop tree rebuilt from log lines alone, and how it is shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from correlation.ids import new_correlation_id
from correlation.schema import ACCESS_LOGGER
from fakes.trail_lines import GATEWAY, INVENTORY, ORDERS, PAYMENTS, checkout_lines, log_line
from trail.cli.render import RED, render_text
from trail.document import JSON_SCHEMA_VERSION, render_json, trail_to_dict
from trail.hops import UNKNOWN_HOP, Trail, build_trail
from trail.log_line import parse_time_ns

pytestmark = pytest.mark.unit

T0 = 1_750_000_000_000_000_000
MS = 1_000_000
CID = new_correlation_id(now_ms=T0 // MS)


def trail_of(lines: list[tuple[int, Any]], metadata: dict[str, str] | None = None) -> Trail:
    raw = [(ts, line if isinstance(line, str) else json.dumps(line), None, metadata or {}) for ts, line in lines]
    return build_trail(CID, raw)


def without(
    lines: list[tuple[int, dict[str, Any]]], request_id: str, *, access_only: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    return [
        (ts, line)
        for ts, line in lines
        if not (line["request_id"] == request_id and (not access_only or line["logger"] == ACCESS_LOGGER))
    ]


# -- the tree --------------------------------------------------------------------------------------
def test_checkout_tree_is_rebuilt_with_order_offsets_and_access_fields() -> None:
    trail = trail_of(checkout_lines(CID, T0))
    assert [(hop.request_id, hop.depth) for hop in trail.walk()] == [
        (GATEWAY, 0),
        (ORDERS, 1),
        (PAYMENTS, 2),
        (INVENTORY, 2),
    ]
    by_id = trail.hops
    gateway, orders, payments = by_id[GATEWAY], by_id[ORDERS], by_id[PAYMENTS]
    assert (gateway.service, gateway.method, gateway.route, gateway.status, gateway.duration_ms) == (
        "gateway",
        "POST",
        "/checkout",
        502,
        40.0,
    )
    # The access line is written at the end: start = its time - duration.
    assert trail.start_ns == T0 == gateway.start_ns
    assert [hop.start_ns - T0 for hop in trail.walk()] == [0, 3 * MS, 6 * MS, 20 * MS]
    assert orders.caller == "gateway" and payments.failed and payments.has_error_lines
    assert not by_id[INVENTORY].failed
    assert trail.complete and trail.problems() == []
    assert trail.line_count == 11


def test_lines_of_a_hop_are_in_time_order_whatever_order_loki_gave() -> None:
    lines = checkout_lines(CID, T0)
    trail = trail_of(list(reversed(lines)))
    times = [line.ts_ns for line in trail.hops[PAYMENTS].lines]
    assert times == sorted(times) and trail.hops[PAYMENTS].lines[-1].is_access


def test_hop_without_access_line_is_open() -> None:
    trail = trail_of(without(checkout_lines(CID, T0), INVENTORY, access_only=True))
    inventory = trail.hops[INVENTORY]
    assert inventory.open and inventory.status is None and inventory.duration_ms is None
    assert inventory.start_ns == T0 + 21 * MS  # its first line
    assert inventory.parent_request_id == ORDERS and inventory.depth == 2  # still placed under orders
    assert not trail.complete and "open" in trail.problems()[0]


def test_hop_whose_parent_is_missing_is_an_orphan_at_top_level() -> None:
    trail = trail_of(without(checkout_lines(CID, T0), GATEWAY))
    orders = trail.hops[ORDERS]
    assert orders.orphan and trail.roots == [orders] and orders.depth == 0
    assert [hop.request_id for hop in trail.walk()] == [ORDERS, PAYMENTS, INVENTORY]
    assert trail.problems() == [f"orders [{ORDERS}] has no parent {GATEWAY} in the logs"]


def test_parent_loop_from_corrupt_lines_is_shown_not_lost() -> None:
    lines = [
        log_line(CID, "aaaa", "bbbb", "x", T0, "one"),
        log_line(CID, "bbbb", "aaaa", "y", T0 + MS, "two"),
        log_line(CID, "cccc", "cccc", "z", T0 + 2 * MS, "self"),
    ]
    trail = trail_of(lines)
    assert sorted(hop.request_id for hop in trail.walk()) == ["aaaa", "bbbb", "cccc"]
    assert trail.hops["aaaa"].orphan and trail.hops["cccc"].orphan


def test_non_json_lines_and_lines_without_request_id_go_to_the_unknown_hop() -> None:
    lines: list[tuple[int, Any]] = list(checkout_lines(CID, T0))
    lines.append((T0 + 50 * MS, "panic: plain text from somewhere"))
    lines.append((T0 + 10 * MS, json.dumps({"message": "no hop named", "correlation_id": CID})))
    lines.append((T0 + 11 * MS, "[1, 2]"))
    trail = trail_of(lines)
    assert [line.raw for line in trail.unknown] == [lines[-2][1], "[1, 2]", "panic: plain text from somewhere"]
    assert len(trail.hops) == 4 and trail.complete


def test_hostile_field_types_do_not_crash() -> None:
    lines = [
        (
            T0,
            {
                "request_id": 12,
                "parent_request_id": {"x": 1},
                "logger": ACCESS_LOGGER,
                "status": "abc",
                "duration_ms": "NaN",
                "time": 5,
                "level": None,
                "message": ["m"],
            },
        )
    ]
    trail = trail_of(lines)
    hop = trail.hops["12"]
    assert hop.orphan and hop.status is None and hop.duration_ms is None and hop.start_ns == T0
    render_text(trail)
    json.loads(render_json(trail))


def test_line_time_comes_from_the_line_and_falls_back_to_loki() -> None:
    assert parse_time_ns("2025-06-15T15:13:20.123456Z") == 1_750_000_400_123_456_000
    assert parse_time_ns("2025-06-15T17:13:20.123456+02:00") == 1_750_000_400_123_456_000
    assert parse_time_ns("yesterday") is None and parse_time_ns(None) is None
    trail = trail_of([(T0 + 7, {"request_id": "r", "time": "garbage"})])
    assert trail.hops["r"].lines[0].ts_ns == T0 + 7


# -- text -------------------------------------------------------------------------------------------
def tree_rows(text: str) -> list[str]:
    rows = text.split("\n\n")[1].splitlines()
    assert rows[0].startswith("HOP")
    return rows[1:]


def test_text_tree_indents_children_and_lists_lines_per_hop_in_tree_order() -> None:
    text = render_text(trail_of(checkout_lines(CID, T0)), window=(T0 - 5 * 10**9, T0 + 35 * 10**9))
    assert text.splitlines()[0].startswith(f"Trail {CID}: 4 hops, 11 lines")
    assert "Loki window 2025-06-15T15:06:35.000000Z .. 2025-06-15T15:07:15.000000Z" in text
    rows = tree_rows(text)
    assert [row.split()[0] for row in rows] == ["gateway", "orders", "payments", "inventory"]
    indents = [len(row) - len(row.lstrip()) for row in rows]
    assert indents == [0, 2, 4, 4]
    assert rows[0].split()[1:7] == ["POST", "/checkout", "502", "40.0", "ms", "+0.0"]
    assert rows[2].split()[1:7] == ["POST", "/payments", "500", "12.0", "ms", "+6.0"]
    sections = [line for line in text.splitlines() if line.startswith("== ")]
    assert sections == [
        f"== gateway POST /checkout [{GATEWAY}]",
        f"== orders POST /orders [{ORDERS}]",
        f"== payments POST /payments [{PAYMENTS}]",
        f"== inventory POST /reservations [{INVENTORY}]",
    ]
    payments_block = text.split(sections[2])[1].split("== ")[0]
    assert payments_block.index("charging card") < payments_block.index("card processor timed out")
    assert "      TimeoutError: processor" in payments_block  # traceback rows indented
    assert "order_id=o-17" in text  # fields beyond the contract's are shown
    assert "\x1b[" not in text


def test_stack_info_keeps_its_shape_below_its_line() -> None:
    lines = [
        log_line(CID, "r1", None, "orders", T0, "where am I", stack='Stack (most recent call last):\n  File "x.py"')
    ]
    text = render_text(trail_of(lines))
    assert 'where am I\n      Stack (most recent call last):\n        File "x.py"' in text
    assert "stack=" not in text  # a contract key, not shown again as an extra field


def test_open_and_orphan_hops_are_noted_in_the_tree() -> None:
    lines = without(without(checkout_lines(CID, T0), GATEWAY), INVENTORY, access_only=True)
    rows = tree_rows(render_text(trail_of(lines)))
    assert rows[0].endswith(f"orphan: parent {GATEWAY} not in the logs")
    assert rows[2].split()[:3] == ["inventory", "-", "open"] and rows[2].endswith("open: no access line")


def test_unknown_hop_is_shown_last() -> None:
    lines: list[tuple[int, Any]] = list(checkout_lines(CID, T0)) + [(T0 + 60 * MS, "plain text")]
    text = render_text(trail_of(lines))
    assert text.rstrip().endswith("plain text")
    assert f"== {UNKNOWN_HOP} hop" in text


def test_colour_marks_errors_only_when_asked() -> None:
    trail = trail_of(checkout_lines(CID, T0, payments_status=500))
    coloured = render_text(trail, color=True)
    error_rows = [row for row in coloured.splitlines() if "card processor timed out" in row]
    assert error_rows and error_rows[0].startswith(RED)
    assert "\x1b[" not in render_text(trail, color=False)
    calm = render_text(trail_of(checkout_lines(CID, T0, payments_status=200)), color=True)
    assert RED not in calm


def test_hostile_control_characters_are_escaped() -> None:
    lines = [log_line(CID, "r1", None, "evil\x1b[2J", T0, "clear\x1b[2Jscreen\nfake line\x07")]
    text = render_text(trail_of(lines), color=False)
    assert "\x1b" not in text and "\x07" not in text
    assert "clear\\x1b[2Jscreen\\nfake line\\x07" in text


# -- JSON -------------------------------------------------------------------------------------------
def test_json_document_schema() -> None:
    trail = trail_of(checkout_lines(CID, T0))
    document = json.loads(render_json(trail, query="q", window={"start": "a", "end": "b"}, widened=False))
    assert document["schema_version"] == JSON_SCHEMA_VERSION
    assert set(document) == {
        "schema_version",
        "query",
        "window",
        "widened",
        "correlation_id",
        "start",
        "complete",
        "problems",
        "roots",
        "hops",
        "unknown_lines",
    }
    assert document["correlation_id"] == CID and document["roots"] == [GATEWAY] and document["complete"]
    hops = document["hops"]
    assert [hop["request_id"] for hop in hops] == [GATEWAY, ORDERS, PAYMENTS, INVENTORY]
    assert set(hops[0]) == {
        "request_id",
        "parent_request_id",
        "depth",
        "children",
        "service",
        "method",
        "route",
        "path",
        "caller",
        "status",
        "async",
        "task",
        "state",
        "queue_wait_ms",
        "duration_ms",
        "start",
        "start_offset_ms",
        "open",
        "orphan",
        "error",
        "unreadable",
        "lines",
    }
    orders = hops[1]
    assert orders["children"] == [PAYMENTS, INVENTORY] and orders["parent_request_id"] == GATEWAY
    assert (orders["status"], orders["duration_ms"], orders["start_offset_ms"], orders["depth"]) == (502, 30.0, 3.0, 1)
    assert hops[2]["error"] and not hops[3]["error"] and hops[2]["unreadable"] == []
    line = hops[2]["lines"][1]
    assert set(line) == {"time", "level", "logger", "message", "error", "unreadable", "fields", "raw"}
    assert line["level"] == "ERROR" and line["error"] and line["raw"] is None
    assert line["fields"]["request_id"] == PAYMENTS
    assert trail_to_dict(trail)["start"] == "2025-06-15T15:06:40.000000Z"


def test_a_line_cut_to_lokis_limit_stays_on_its_hop_through_metadata() -> None:
    lines = checkout_lines(CID, T0)
    payments = next(line for _, line in lines if line["service"] == "payments")
    cut = json.dumps({**payments, "message": "x" * 500})[:300] + " ...[truncated by loki shipper]"
    trail = build_trail(
        CID,
        [
            *((ts, json.dumps(line), None, {}) for ts, line in lines),
            (T0 + 5 * MS, cut, "payments", {"request_id": payments["request_id"], "level": "error"}),
        ],
    )
    hop = trail.hops[payments["request_id"]]
    assert any(line.raw == cut and line.is_error for line in hop.lines)
    assert trail.unknown == [] and not trail.problems()
