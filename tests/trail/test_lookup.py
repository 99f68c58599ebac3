"""trail.lookup and trail.last_error as a library: window policy, widening, the last-error search,
the root-cause hop.

These are the calls the CLI, bench, the alert notifier and the trail page make; they run against
the loopback query stand-in, without the command line.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from correlation import schema
from correlation.ids import new_correlation_id, shard_of
from correlation.schema import ACCESS_LOGGER
from correlation.settings import LokiSettings
from fakes import FakeLoki
from fakes.loki_push import Push, PushedEntry
from fakes.loki_query import JsonStage, LabelFilter, parse_query
from fakes.trail_lines import (
    GATEWAY,
    INVENTORY,
    ORDERS,
    PAYMENTS,
    access_line,
    checkout_lines,
    log_line,
    push_all,
    rfc3339,
)
from trail import lookup as lookup_module
from trail.hops import build_trail
from trail.last_error import LAST_ERROR_SCAN, find_last_failure, last_error
from trail.logql import error_lines_query, last_error_query, trail_query
from trail.loki_query import LokiQueryClient, LokiQueryError
from trail.lookup import lookup_trail
from trail.root_cause import root_cause
from trail.window import (
    MARGIN_SECONDS,
    WIDE_SECONDS,
    Window,
    explicit_window,
    first_window,
    id_window,
    parse_duration,
    parse_time,
    rest_of,
    widened_window,
)

pytestmark = pytest.mark.unit

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000_000 * MS  # the time inside CID
CID = new_correlation_id(now_ms=T0 // MS)
NOW = T0 + 3600 * S


def client_for(standin: FakeLoki, **settings: Any) -> LokiQueryClient:
    return LokiQueryClient(LokiSettings(url=standin.url, **settings))


def without_access_line(lines: list[tuple[int, dict[str, Any]]], request_id: str) -> list[tuple[int, dict[str, Any]]]:
    return [
        (ts, line) for ts, line in lines if not (line["request_id"] == request_id and line["logger"] == ACCESS_LOGGER)
    ]


# -- window policy ---------------------------------------------------------------------------------------
def test_an_id_of_ours_gives_a_narrow_window_around_its_own_time_and_one_wider() -> None:
    assert id_window(CID) == Window(T0 - int(MARGIN_SECONDS * S), T0 + int((30 + MARGIN_SECONDS) * S))
    assert id_window(CID, max_request_seconds=60) == Window(T0 - 5 * S, T0 + int((60 + MARGIN_SECONDS) * S))
    assert widened_window(CID) == Window(T0 - int(WIDE_SECONDS * S), T0 + int(WIDE_SECONDS * S))
    # A request allowed to last longer than the wide reach still fits in the widened window.
    assert widened_window(CID, max_request_seconds=3600) == Window(T0 - 3605 * S, T0 + 3605 * S)


def test_a_foreign_id_has_no_window_of_its_own() -> None:
    assert id_window("lb-7f3a9c.2") is None and widened_window("lb-7f3a9c.2") is None


def test_explicit_windows() -> None:
    assert explicit_window(now_ns=NOW) is None  # nothing asked: the ID's time decides
    assert explicit_window(since_seconds=900, now_ns=NOW) == Window(NOW - 900 * S, NOW)
    assert explicit_window(to_ns=T0, now_ns=NOW) == Window(T0 - 3600 * S, T0)  # default look-back: 1 h
    assert explicit_window(from_ns=T0, now_ns=NOW) == Window(T0, NOW)
    with pytest.raises(ValueError, match="exclude each other"):
        explicit_window(since_seconds=60, from_ns=T0)
    with pytest.raises(ValueError, match="empty window"):
        explicit_window(from_ns=T0, to_ns=T0)


def test_windows_are_never_empty_and_print_as_rfc3339() -> None:
    with pytest.raises(ValueError, match="is not before"):
        Window(T0, T0 - 1)
    assert str(Window(T0, T0 + S)) == "2025-06-15T15:06:40.000000Z .. 2025-06-15T15:06:41.000000Z"
    before = time.time_ns()
    last = Window.last(60)
    assert last.end_ns - last.start_ns == 60 * S and last.end_ns >= before


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("500ms", 0.5)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0", "-5m", "1h 30m", "5y"])
def test_bad_durations_are_value_errors_not_argparse_errors(text: str) -> None:
    with pytest.raises(ValueError):  # the page and the notifier have no argparse
        parse_duration(text)


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-15T15:06:40Z",
        "2025-06-15T17:06:40+02:00",
        "2025-06-15T15:06:40",
        "1750000000",
        "1750000000000",
        "1750000000000000",
        "1750000000000000000",
    ],
)
def test_parse_time_reads_rfc3339_and_unix_times_of_any_unit(text: str) -> None:
    assert parse_time(text) == T0


@pytest.mark.parametrize("text", ["last tuesday", "-1", "nan", "inf", "1e30", "0001-01-01T00:00:00Z"])
def test_bad_times_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


# -- LogQL -------------------------------------------------------------------------------------------
def test_queries() -> None:
    assert trail_query(CID) == f'{{service_name=~".+", shard=~"{CID[-1]}|"}} | correlation_id="{CID}"'
    assert error_lines_query("payments") == '{service_name="payments"} | level="error"'
    assert last_error_query().startswith('{service_name=~".+"} |= "correlation.access"')


@pytest.mark.parametrize("hostile", ['x"} | line_format "{{.x}}', "", "a\nb", "x" * 65])
def test_no_query_is_built_from_a_malformed_id_or_service(hostile: str) -> None:
    with pytest.raises(ValueError, match="malformed correlation ID"):
        trail_query(hostile)
    with pytest.raises(ValueError, match="not a service name"):
        error_lines_query(hostile)
    with pytest.raises(ValueError, match="not a service name"):
        last_error_query(hostile)


def test_a_task_failure_query_filters_on_the_task_key() -> None:
    assert last_error_query("notifications", own_only=True, task="notifications.send_confirmation") == (
        '{service_name="notifications"} |= "correlation.access"'
        ' | json logger="logger", status="status", origin="origin", task="task"'
        ' | logger="correlation.access" | status >= 500 | origin!="downstream"'
        ' | task="notifications.send_confirmation" | __error__=""'
    )


@pytest.mark.parametrize(
    "hostile",
    ['x" | __error__!="', 'a\\" or task=~".*', "line\nbreak \x1b[31m\t", "ü€😀 `raw`", '"', "\\"],
)
def test_a_hostile_task_name_stays_one_string_in_the_query(hostile: str) -> None:
    """A task name is the alert's (or the user's) text: written as an escaped LogQL string, read
    back (the fake Loki unquotes as Loki does) it is the same text, and the query has the same
    stages as for a plain name, so nothing was injected."""
    query = last_error_query("notifications", task=hostile)
    plain = parse_query(last_error_query("notifications", task="t"))
    parsed = parse_query(query)
    assert [type(stage) for stage in parsed.stages] == [type(stage) for stage in plain.stages]
    task_filters = [f for f in parsed.stages if isinstance(f, LabelFilter) and f.name == schema.TASK]
    assert [(f.op, f.value) for f in task_filters] == [("=", hostile)]
    (json_stage,) = [stage for stage in parsed.stages if isinstance(stage, JsonStage)]
    assert (schema.TASK, schema.TASK) in json_stage.fields
    assert "\n" not in query and "\x1b" not in query, "control characters are escaped, never raw"


@pytest.mark.parametrize(("bad", "reason"), [("", "1-256 characters"), ("x" * 257, "1-256"), ("\ud800", "valid text")])
def test_no_query_is_built_for_a_task_name_that_cannot_be_searched(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        last_error_query(task=bad)


def test_last_error_of_one_task_skips_the_newer_failure_of_another(loki: FakeLoki) -> None:
    """One worker, two tasks: the task's own newest failed run, not the service's newest failure."""
    runs = []
    for seconds_ago, task, rid in ((300, "mail.confirm", "e000000000000005"), (60, "mail.receipt", "e000000000000006")):
        t_run = time.time_ns() - seconds_ago * S
        cid = new_correlation_id(now_ms=t_run // MS)
        fields = {schema.KIND: schema.KIND_TASK, schema.TASK: task, schema.STATUS: 500, schema.ORIGIN: "self"}
        runs.append((cid, log_line(cid, rid, None, "worker", t_run, "failed", "ERROR", ACCESS_LOGGER, **fields)))
    push_all(loki, [line for _, line in runs])
    client = client_for(loki)
    (confirm, _), (receipt, _) = runs
    assert last_error(client, "worker", Window.last(600)).correlation_id == receipt  # type: ignore[union-attr]
    found = last_error(client, "worker", Window.last(600), prefer_own=True, task="mail.confirm")
    assert found is not None and found.correlation_id == confirm and found.failure.request_id == "e000000000000005"
    assert last_error(client, "worker", Window.last(600), task="mail.invoice") is None


# -- lookup_trail --------------------------------------------------------------------------------------
def test_complete_trail_is_one_query_in_the_ids_own_seconds_built_once(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_all(loki, checkout_lines(CID, T0))
    builds: list[str] = []

    def counting_build(correlation_id: str, raw: Any) -> Any:
        builds.append(correlation_id)
        return build_trail(correlation_id, raw)

    monkeypatch.setattr(lookup_module, "build_trail", counting_build)
    found = lookup_trail(client_for(loki), CID)
    assert builds == [CID]
    first = first_window(CID)
    assert found.found and not found.widened and found.windows == (first,) == found.queried and found.window == first
    assert found.query == trail_query(CID) and len(found.entries) == 11
    assert [hop.request_id for hop in found.trail.walk()] == [GATEWAY, ORDERS, PAYMENTS, INVENTORY]
    (request,) = loki.requests
    assert (request.start, request.end) == (found.window.start_ns, found.window.end_ns)


def test_incomplete_trail_widens_once_and_says_why(loki: FakeLoki) -> None:
    lines = without_access_line(checkout_lines(CID, T0), INVENTORY)
    # The inventory hop ended two minutes later (a slow call): outside the narrow window.
    lines.append(
        access_line(
            CID, INVENTORY, ORDERS, "inventory", T0 + 20 * MS, 120_000.0, "POST", "/reservations", 201, caller="orders"
        )
    )
    push_all(loki, lines)
    found = lookup_trail(client_for(loki), CID)
    assert found.widened and found.windows == (id_window(CID), widened_window(CID))
    assert found.widened_because == (f"inventory [{INVENTORY}] has no access line (open)",)
    assert found.trail.complete and found.trail.hops[INVENTORY].duration_ms == 120_000.0
    narrow, first = id_window(CID), first_window(CID)
    assert narrow is not None and first is not None
    assert found.queried == (first, *rest_of(narrow, first), widened_window(CID))
    assert [(r.start, r.end) for r in loki.requests] == [(w.start_ns, w.end_ns) for w in found.queried]


def test_a_long_requests_later_lines_are_found_in_the_rest_of_the_narrow_window(loki: FakeLoki) -> None:
    """The gateway answered after 20 s (its access line comes last) and a callee's clock runs 3 s
    behind: the ID's own seconds hold an open root hop, so the rest of the narrow window is read,
    and the trail is complete there without widening, every line once."""
    lines = [(ts, line) for ts, line in checkout_lines(CID, T0) if line["request_id"] not in (GATEWAY, PAYMENTS)]
    lines += [
        (ts - 3 * S, {**line, "time": rfc3339(ts - 3 * S)})
        for ts, line in checkout_lines(CID, T0)
        if line["request_id"] == PAYMENTS
    ]
    lines += [(ts + 20 * S, line) for ts, line in checkout_lines(CID, T0) if line["request_id"] == GATEWAY]
    push_all(loki, sorted(lines, key=lambda pair: pair[0]))
    found = lookup_trail(client_for(loki), CID)
    narrow, first = id_window(CID), first_window(CID)
    assert narrow is not None and first is not None
    assert not found.widened and found.windows == (narrow,) and found.queried == (first, *rest_of(narrow, first))
    assert found.trail.complete and len(found.entries) == len(lines) == 11
    assert [e.ts_ns for e in found.entries] == sorted(e.ts_ns for e in found.entries)


def test_a_trail_with_a_task_run_reads_the_rest_of_the_narrow_window(loki: FakeLoki) -> None:
    """A task run is asynchronous: its retry (a run of its own, 10 s later) leaves no mark in the
    complete trail of the request's own seconds, so a trail holding a task run reads on."""

    def task_run(rid: str, start_ns: int, state: str) -> tuple[int, dict[str, Any]]:
        ts, line = access_line(CID, rid, ORDERS, "worker", start_ns, 4.0, "TASK", "mail.confirm", 200)
        return ts, {**line, schema.KIND: schema.KIND_TASK, schema.TASK: "mail.confirm", schema.STATE: state}

    lines = [*checkout_lines(CID, T0), task_run("f000000000000001", T0 + 30 * MS, "retry")]
    lines.append(task_run("f000000000000002", T0 + 10 * S, "success"))
    push_all(loki, sorted(lines, key=lambda pair: pair[0]))
    found = lookup_trail(client_for(loki), CID)
    assert not found.widened and found.windows == (id_window(CID),) and len(found.queried) == 3
    assert {"f000000000000001", "f000000000000002"} <= set(found.trail.hops)


def test_the_first_window_is_the_ids_own_seconds_inside_the_narrow_one() -> None:
    assert first_window(CID) == Window(T0 - 1 * S, T0 + 2 * S)
    assert first_window(CID, max_request_seconds=0.5) == Window(T0 - 1 * S, T0 + 2 * S)  # still inside: 5.5 s after
    assert first_window("lb-7f3a9c.2") is None
    assert rest_of(Window(0, 10), Window(2, 5)) == (Window(0, 2), Window(5, 10))
    assert rest_of(Window(0, 10), Window(0, 10)) == ()


def test_nothing_found_searches_both_windows(loki: FakeLoki) -> None:
    found = lookup_trail(client_for(loki), CID)
    assert not found.found and found.widened and found.widened_because == ("no lines",)
    assert found.trail.hops == {} and len(loki.requests) == 4  # the narrow window in 3 parts, the wide one


def test_an_explicit_window_is_searched_as_given_and_never_widened(loki: FakeLoki) -> None:
    push_all(loki, without_access_line(checkout_lines(CID, T0), INVENTORY))
    window = Window(T0 - 60 * S, T0 + 60 * S)
    found = lookup_trail(client_for(loki), CID, window)
    assert found.windows == (window,) and not found.trail.complete
    assert [(r.start, r.end) for r in loki.requests] == [(window.start_ns, window.end_ns)]


def test_a_foreign_id_is_searched_over_the_last_hour(loki: FakeLoki) -> None:
    found = lookup_trail(client_for(loki), "lb-7f3a9c.2", now_ns=NOW)
    assert found.windows == (Window(NOW - 3600 * S, NOW),) and len(loki.requests) == 1


def test_a_malformed_id_is_refused_before_any_query(loki: FakeLoki) -> None:
    with pytest.raises(ValueError, match="malformed correlation ID"):
        lookup_trail(client_for(loki), 'x"} or {a=~".+')
    assert loki.requests == []


def test_a_spent_budget_stops_the_lookup_before_asking(loki: FakeLoki) -> None:
    with pytest.raises(LokiQueryError, match="time budget"):
        lookup_trail(client_for(loki), CID, budget_seconds=0)
    assert loki.requests == []


@pytest.fixture
def silent_loki() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_the_budget_bounds_a_lookup_that_loki_does_not_answer(silent_loki: str) -> None:
    # The page must answer within its budget even when Loki's own timeout is long.
    client = LokiQueryClient(LokiSettings(url=silent_loki, timeout_seconds=30.0))
    started = time.monotonic()
    with pytest.raises(LokiQueryError):
        lookup_trail(client, CID, budget_seconds=0.3)
    assert time.monotonic() - started < 5


# -- last error ------------------------------------------------------------------------------------------
def recent_checkout(seconds_ago: float, payments_status: int) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    t0 = time.time_ns() - int(seconds_ago * S)
    cid = new_correlation_id(now_ms=t0 // MS)
    return cid, checkout_lines(cid, t0, payments_status=payments_status)


def test_last_error_finds_the_newest_failure_and_its_trail(loki: FakeLoki) -> None:
    older, lines_a = recent_checkout(600, 500)
    newer, lines_b = recent_checkout(300, 503)
    _, lines_c = recent_checkout(60, 200)  # newer still, but it did not fail
    for lines in (lines_a, lines_b, lines_c):
        push_all(loki, lines)
    found = last_error(client_for(loki))
    assert found is not None and found.correlation_id == newer != older
    search, follow = loki.requests
    assert (search.query, search.direction, search.limit) == (last_error_query(), "backward", LAST_ERROR_SCAN)
    assert search.end - search.start == 3600 * S == found.failure.window.end_ns - found.failure.window.start_ns
    # The newest failed access line is the gateway's (it ends last); the trail is looked up by its ID's time.
    assert found.failure.service == "gateway" and found.failure.query == last_error_query()
    assert (follow.start, follow.end) == (found.lookup.window.start_ns, found.lookup.window.end_ns)
    assert found.lookup.window == first_window(newer) and len(found.trail.hops) == 4


def test_last_failure_of_one_service_in_a_window(loki: FakeLoki) -> None:
    full, lines = recent_checkout(900, 500)
    push_all(loki, lines)
    t_gw = time.time_ns() - 100 * S  # newer, but it never reached payments
    push_all(
        loki,
        [
            access_line(
                new_correlation_id(now_ms=t_gw // MS), "e000000000000005", None, "gateway", t_gw, 3.0, "GET", "/x", 500
            )
        ],
    )
    failure = find_last_failure(client_for(loki), "payments", Window.last(1800))
    assert failure is not None and failure.correlation_id == full and failure.service == "payments"
    assert find_last_failure(client_for(loki), "payments", Window.last(60)) is None
    assert loki.requests[0].query == last_error_query("payments")


def test_a_foreign_failed_id_is_followed_over_the_window_it_was_found_in(loki: FakeLoki) -> None:
    foreign = "lb-7f3a9c.2"
    t = time.time_ns() - 120 * S
    push_all(
        loki,
        [
            log_line(foreign, "f000000000000001", None, "gateway", t, "boom", level="ERROR"),
            access_line(foreign, "f000000000000001", None, "gateway", t, 5.0, "GET", "/", 500),
        ],
    )
    search = Window.last(600)
    found = last_error(client_for(loki), window=search)
    assert found is not None and found.correlation_id == foreign and found.lookup.windows == (search,)
    assert found.trail.hops["f000000000000001"].failed


def test_no_failure_is_none(loki: FakeLoki) -> None:
    _, lines = recent_checkout(60, 200)
    push_all(loki, lines)
    assert last_error(client_for(loki)) is None and len(loki.requests) == 1


# -- root cause ---------------------------------------------------------------------------------------------
def test_root_cause_is_the_deepest_failed_hop_with_its_exception(loki: FakeLoki) -> None:
    push_all(loki, checkout_lines(CID, T0))
    cause = root_cause(lookup_trail(client_for(loki), CID).trail)
    assert cause is not None and cause.hop.request_id == PAYMENTS and cause.hop.service == "payments"
    assert (cause.exception_type, cause.message) == ("TimeoutError", "processor")
    assert cause.summary == "TimeoutError: processor" and cause.line is not None
    assert cause.line.get("message") == "card processor timed out"


def trail_of(lines: list[tuple[int, dict[str, Any]]]) -> Any:
    import json

    return build_trail(CID, [(ts, json.dumps(line), None, {}) for ts, line in lines])


def test_the_notifier_walk_from_a_services_last_failure_to_the_deepest_failing_hop(loki: FakeLoki) -> None:
    # "orders failed; why?": its newest failed request, then down its failing children.
    _, lines = recent_checkout(120, 500)
    push_all(loki, lines)
    found = last_error(client_for(loki), "orders", Window.last(600))
    assert found is not None and found.failure.service == "orders" and found.failure.request_id == ORDERS
    cause = found.root_cause()
    assert cause is not None and cause.hop.request_id == PAYMENTS and cause.summary == "TimeoutError: processor"


def test_root_cause_from_a_failed_hop_that_is_the_deepest(loki: FakeLoki) -> None:
    _, lines = recent_checkout(120, 500)
    push_all(loki, lines)
    found = last_error(client_for(loki), "payments")
    assert found is not None and found.failure.request_id == PAYMENTS
    assert found.root_cause() == root_cause(found.lookup.trail)


def test_no_failure_no_root_cause() -> None:
    assert root_cause(trail_of(checkout_lines(CID, T0, payments_status=200))) is None


def test_root_cause_follows_failing_children_only() -> None:
    # orders failed, and both its children answered 500: equally deep, so the one that started first
    # (payments) wins, the same on every run. Asked below inventory, inventory is the answer.
    lines = [pair for pair in checkout_lines(CID, T0) if pair[1]["request_id"] != INVENTORY]
    lines.append(access_line(CID, INVENTORY, ORDERS, "inventory", T0 + 20 * MS, 8.0, "POST", "/reservations", 500))
    trail = trail_of(lines)
    cause = root_cause(trail)
    assert cause is not None and cause.hop.request_id == PAYMENTS
    below_inventory = root_cause(trail, below=trail.hops[INVENTORY])
    assert below_inventory is not None and below_inventory.hop.request_id == INVENTORY
    assert below_inventory.line is None and below_inventory.summary == "inventory answered 500"
    assert root_cause(trail, below=trail.hops[GATEWAY]) is not None


def test_root_cause_without_exception_uses_the_first_error_line_not_the_access_line() -> None:
    lines = [(ts, {k: v for k, v in line.items() if k != "exception"}) for ts, line in checkout_lines(CID, T0)]
    cause = root_cause(trail_of(lines))
    assert cause is not None and cause.exception_type is None
    assert cause.summary == "card processor timed out"


def test_root_cause_reaches_a_failure_below_a_handled_one() -> None:
    # The edge answered 200 (it handled the error); the failure starts lower and is still found.
    lines = [pair for pair in checkout_lines(CID, T0) if pair[1]["request_id"] != GATEWAY]
    lines.append(access_line(CID, GATEWAY, None, "gateway", T0, 40.0, "POST", "/checkout", 200))
    cause = root_cause(trail_of(lines))
    assert cause is not None and cause.hop.request_id == PAYMENTS


def test_prefer_own_skips_failures_the_service_only_passed_on(loki: FakeLoki) -> None:
    t_own, t_passed = time.time_ns() - 300 * S, time.time_ns() - 60 * S
    own_id, passed_id = new_correlation_id(now_ms=t_own // MS), new_correlation_id(now_ms=t_passed // MS)
    own = access_line(own_id, "a000000000000001", None, "orders", t_own, 4.0, "POST", "/orders", 500)
    passed = access_line(passed_id, "a000000000000002", None, "orders", t_passed, 4.0, "POST", "/orders", 502)
    own[1]["origin"] = "self"
    passed[1].update(origin="downstream", failed_downstream="payments")
    push_all(loki, [own, passed])
    client = client_for(loki)
    assert last_error(client, "orders", Window.last(600)).correlation_id == passed_id  # type: ignore[union-attr]
    found = last_error(client, "orders", Window.last(600), prefer_own=True)
    assert found is not None and found.correlation_id == own_id
    assert last_error_query("orders", own_only=True) in [r.query for r in loki.queries]
    only_passed = last_error(client, "orders", Window(t_passed - S, time.time_ns()), prefer_own=True)
    assert only_passed is not None and only_passed.correlation_id == passed_id, "no own failure: any failure"


# -- the shard label: lines with it and lines written before it -----------------------------------


@pytest.mark.parametrize("sharded_hops", [range(11), range(0), range(0, 11, 2)], ids=["all", "none", "mixed"])
def test_a_trail_is_found_whether_its_lines_carry_the_shard_label_or_not(loki: FakeLoki, sharded_hops: range) -> None:
    """Lines shipped with the shard label, lines shipped before it (no label), and a trail that
    spans the change: every line is found, and a line in another shard's stream is not read."""
    lines = checkout_lines(CID, T0)
    for n, (ts, line) in enumerate(lines):
        (loki.push if n in sharded_hops else loki.push_unsharded)(ts, line)
    other = next(v for v in "0123456789abcdef" if v != CID[-1])
    decoy = {**lines[0][1], "message": "in another shard's stream"}
    labels = {"service_name": "gateway", "env": "test", "shard": other}
    loki.pushes.append(Push({}, [PushedEntry(labels, T0, json.dumps(decoy), {"correlation_id": CID})]))
    found = lookup_trail(client_for(loki), CID)
    assert len(found.entries) == 11 and "in another shard's stream" not in {e.line for e in found.entries}
    assert f'shard=~"{CID[-1]}|"' in found.query
    assert [hop.request_id for hop in found.trail.walk()] == [GATEWAY, ORDERS, PAYMENTS, INVENTORY]


def test_a_foreign_ids_trail_is_found_in_its_hashed_shard(loki: FakeLoki) -> None:
    foreign = "order-4711"
    lines = checkout_lines(foreign, T0)
    for n, (ts, line) in enumerate(lines):
        (loki.push if n % 2 == 0 else loki.push_unsharded)(ts, line)
    assert {e.labels.get("shard") for e in loki.entries} == {None, shard_of(foreign)}
    found = lookup_trail(client_for(loki), foreign, window=Window(T0 - 60 * S, T0 + 60 * S))
    assert len(found.entries) == 11 and f'shard=~"{shard_of(foreign)}|"' in found.query
