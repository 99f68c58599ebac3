"""The ``trail`` command end to end against the loopback Loki stand-in."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from fakes import FakeLoki, closed_port_url
from fakes.trail_lines import (
    GATEWAY,
    INVENTORY,
    ORDERS,
    PAYMENTS,
    access_line,
    checkout_lines,
    log_line,
    push_all,
)
from trail.cli import main as cli
from trail.cli.main import main
from trail.cli.render import RED
from trail.last_error import LAST_ERROR_SCAN
from trail.logql import last_error_query, trail_query
from trail.window import FIRST_AFTER_SECONDS, FIRST_BEFORE_SECONDS, MARGIN_SECONDS, WIDE_SECONDS

pytestmark = pytest.mark.unit

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000_000 * MS  # the time inside CID
CID = new_correlation_id(now_ms=T0 // MS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tree_rows(out: str) -> list[str]:
    return out.split("\n\n")[1].splitlines()[1:]


# -- found --------------------------------------------------------------------------------------------
def test_found_prints_the_tree_and_lines_exit_0(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    push_all(loki, checkout_lines(CID, T0))
    code, out, err = run(capsys, CID)
    assert code == 0 and err == ""
    rows = tree_rows(out)
    assert [(len(r) - len(r.lstrip()), r.split()[0]) for r in rows] == [
        (0, "gateway"),
        (2, "orders"),
        (4, "payments"),
        (4, "inventory"),
    ]
    assert rows[1].split()[1:4] == ["POST", "/orders", "502"] and "+3.0 ms" in rows[1]
    assert (
        out.index(f"== gateway POST /checkout [{GATEWAY}]")
        < out.index("checkout started")
        < out.index(f"== orders POST /orders [{ORDERS}]")
        < out.index(f"== payments POST /payments [{PAYMENTS}]")
        < out.index("card processor timed out")
        < out.index(f"== inventory POST /reservations [{INVENTORY}]")
    )
    assert [r.query for r in loki.requests] == [trail_query(CID)]
    assert "\x1b[" not in out  # captured output is not a terminal


def test_complete_trail_in_the_ids_own_seconds_is_one_query(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    push_all(loki, checkout_lines(CID, T0))
    run(capsys, CID)
    (request,) = loki.requests
    assert (request.start, request.end) == (T0 - int(FIRST_BEFORE_SECONDS * S), T0 + int(FIRST_AFTER_SECONDS * S))
    assert request.direction == "forward"


def test_max_request_seconds_stretches_the_window_after_the_id(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    push_all(loki, [pair for pair in checkout_lines(CID, T0) if pair[1]["request_id"] != GATEWAY])  # incomplete
    run(capsys, CID, "--max-request-seconds", "60")
    first, _older, newer, _wide = loki.requests
    assert first.end == T0 + int(FIRST_AFTER_SECONDS * S) == newer.start
    assert newer.end == T0 + int((60 + MARGIN_SECONDS) * S)


def test_a_large_trail_is_paged_completely(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    lines = checkout_lines(CID, T0)
    # 240 more payments lines, in runs of 4 sharing one timestamp, so pages end inside a run.
    for n in range(240):
        lines.append(log_line(CID, PAYMENTS, ORDERS, "payments", T0 + 7 * MS + (n // 4) * 1000, f"retry step {n:03d}"))
    push_all(loki, sorted(lines, key=lambda pair: pair[0]))
    code, out, _ = run(capsys, CID, "--page-size", "100")
    assert code == 0
    assert all(out.count(f"retry step {n:03d}\n") == 1 for n in range(240))
    assert f"{len(lines)} lines" in out.splitlines()[0]
    assert [r.limit for r in loki.requests] == [100, 100, 100]


# -- not found / errors ----------------------------------------------------------------------------------
def test_nothing_found_exits_1_with_windows_and_query(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, CID)
    assert code == 1 and out == ""
    assert f"no log lines for correlation ID {CID}" in err
    assert f"query: {trail_query(CID)}" in err
    assert "window: 2025-06-15T15:06:35.000000Z .. 2025-06-15T15:07:15.000000Z" in err  # narrow
    assert "window: 2025-06-15T14:51:40.000000Z .. 2025-06-15T15:21:40.000000Z" in err  # widened once
    assert len(loki.requests) == 4  # the narrow window in its parts: the ID's own seconds, before, after


def test_loki_unreachable_exits_2_with_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url()
    monkeypatch.setenv("LOKI_URL", url)
    monkeypatch.setenv("LOKI_TIMEOUT_SECONDS", "2")
    code, out, err = run(capsys, CID)
    assert code == 2 and out == ""
    assert f"{url}/loki/api/v1/query_range" in err and "cannot reach Loki" in err


@pytest.mark.parametrize(
    "status, body, message",
    [
        (
            400,
            "parse error at line 1, col 32: syntax error: unexpected IDENTIFIER\n",
            "parse error at line 1, col 32: syntax error: unexpected IDENTIFIER",
        ),
        (
            500,
            "rpc error: code = Unavailable desc = no ingesters\n",
            "rpc error: code = Unavailable desc = no ingesters",
        ),
    ],
)
def test_loki_error_exits_2_with_its_message(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str], status: int, body: str, message: str
) -> None:
    loki.fail_with = (status, body, "text/plain; charset=utf-8")
    code, out, err = run(capsys, CID)
    assert code == 2 and out == ""
    assert f"{loki.url}/loki/api/v1/query_range answered {status}: {message}" in err


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "has space",
        "x" * 65,
        'abc"} | line_format "{{.x}}',
        "$(id)",
        "\x1b[31mred",
        "caf\u00e9",
        "../../etc",
        "a\nb",
    ],
)
def test_malformed_ids_are_refused_before_any_query(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str], bad_id: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([bad_id])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "refusing malformed correlation ID" in err and "[A-Za-z0-9._-]" in err
    assert "\x1b" not in err and loki.requests == []


def test_missing_loki_url_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LOKI_URL", raising=False)
    code, _, err = run(capsys, CID)
    assert code == 2 and "LOKI_URL is not set" in err


def test_bad_loki_settings_exit_2(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOKI_USERNAME", "only-user")
    code, _, err = run(capsys, CID)
    assert code == 2 and "LOKI_PASSWORD" in err and loki.requests == []


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "give a correlation ID or --last-error"),
        ([CID, "--last-error"], "give a correlation ID or --last-error"),
        ([CID, "--since", "1h", "--from", "2025-01-01T00:00:00Z"], "exclude each other"),
        ([CID, "--service", "orders"], "--service goes with --last-error"),
        (["--last-error", "--service", 'x"}|'], "--service"),
        ([CID, "--from", "2025-01-02T00:00:00Z", "--to", "2025-01-01T00:00:00Z"], "empty window"),
        ([CID, "--since", "soon"], "not a duration"),
        ([CID, "--from", "last tuesday"], "neither RFC 3339 nor a Unix time"),
    ],
)
def test_bad_arguments_are_usage_errors(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and says in capsys.readouterr().err and loki.requests == []


# -- windows -------------------------------------------------------------------------------------------------
def test_incomplete_trail_widens_the_window_once(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        pair
        for pair in checkout_lines(CID, T0)
        if not (pair[1]["request_id"] == INVENTORY and pair[1]["logger"] == "correlation.access")
    ]
    # The inventory hop ended two minutes later (a slow call): outside the narrow window.
    lines.append(
        access_line(
            CID, INVENTORY, ORDERS, "inventory", T0 + 20 * MS, 120_000.0, "POST", "/reservations", 201, caller="orders"
        )
    )
    push_all(loki, lines)
    code, out, err = run(capsys, CID)
    assert code == 0
    first, older, newer, wide = loki.requests
    assert (first.start, first.end) == (T0 - 1 * S, T0 + 2 * S)
    assert (older.start, older.end, newer.start, newer.end) == (T0 - 5 * S, T0 - 1 * S, T0 + 2 * S, T0 + 35 * S)
    assert (wide.start, wide.end) == (T0 - int(WIDE_SECONDS * S), T0 + int(WIDE_SECONDS * S))
    assert f"inventory [{INVENTORY}] has no access line (open)" in err and "widened the window once" in err
    assert "open" not in tree_rows(out)[3] and "120000.0 ms" in tree_rows(out)[3]


def test_still_incomplete_after_widening_is_shown_with_notes(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    push_all(loki, [pair for pair in checkout_lines(CID, T0) if pair[1]["request_id"] != GATEWAY])
    code, out, err = run(capsys, CID)
    assert code == 0 and len(loki.requests) == 4 and "widened" in err
    assert "orphan: parent" in tree_rows(out)[0]


def test_foreign_id_uses_the_last_hour(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = "lb-7f3a9c.2"
    before = time.time_ns()
    code, _, err = run(capsys, foreign)
    after = time.time_ns()
    assert code == 1
    (request,) = loki.requests  # no widening for IDs without a time
    assert before <= request.end <= after and request.end - request.start == 3600 * S
    assert request.query == trail_query(foreign)


def test_explicit_since_is_used_as_given(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time_ns()
    run(capsys, CID, "--since", "1h30m")
    (request,) = loki.requests  # an explicit window is never widened
    assert request.end >= before and request.end - request.start == 5400 * S


@pytest.mark.parametrize(
    "window",
    [
        ["--from", "2025-06-15T15:00:00Z", "--to", "2025-06-15T15:10:00.5Z"],
        ["--from", "2025-06-15T17:00:00+02:00", "--to", "2025-06-15T15:10:00.500000"],  # no offset: UTC
        ["--from", "1749999600", "--to", "1750000200.5"],
        ["--from", "1749999600000", "--to", "1750000200500"],  # ms, as in Grafana URLs
        ["--from", "1749999600000000000", "--to", "1750000200500000000"],  # ns, as Loki takes them
    ],
)
def test_explicit_from_to(loki: FakeLoki, capsys: pytest.CaptureFixture[str], window: list[str]) -> None:
    run(capsys, CID, *window)
    (request,) = loki.requests
    assert (request.start, request.end) == (1_749_999_600 * S, 1_750_000_200 * S + 500 * MS)


# -- output modes ------------------------------------------------------------------------------------------------
def test_json_output(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    push_all(loki, checkout_lines(CID, T0))
    code, out, _ = run(capsys, CID, "--json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    assert document["correlation_id"] == CID and document["query"] == trail_query(CID)
    assert document["window"] == {
        "start": "2025-06-15T15:06:39.000000Z",
        "end": "2025-06-15T15:06:42.000000Z",
        "start_ns": T0 - 1 * S,
        "end_ns": T0 + 2 * S,
    }
    assert document["widened"] is False and document["complete"] is True
    assert [(h["service"], h["depth"], h["status"]) for h in document["hops"]] == [
        ("gateway", 0, 502),
        ("orders", 1, 502),
        ("payments", 2, 500),
        ("inventory", 2, 201),
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_errors_are_coloured_on_a_terminal(loki: FakeLoki, monkeypatch: pytest.MonkeyPatch) -> None:
    push_all(loki, checkout_lines(CID, T0))
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    assert main([CID]) == 0
    assert RED + "  " in terminal.getvalue()  # an ERROR line
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _Terminal()
    monkeypatch.setattr("sys.stdout", plain)
    main([CID])
    assert "\x1b[" not in plain.getvalue()


# -- --last-error ----------------------------------------------------------------------------------------------
def recent_checkout(seconds_ago: float, payments_status: int) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    t0 = time.time_ns() - int(seconds_ago * S)
    cid = new_correlation_id(now_ms=t0 // MS)
    return cid, checkout_lines(cid, t0, payments_status=payments_status)


def test_last_error_follows_the_newest_failed_request(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    older_failure, lines_a = recent_checkout(600, 500)
    newer_failure, lines_b = recent_checkout(300, 503)
    success, lines_c = recent_checkout(60, 200)  # newer still, but it did not fail
    for lines in (lines_a, lines_b, lines_c):
        push_all(loki, lines)
    code, out, err = run(capsys, "--last-error")
    assert code == 0
    assert f"most recent failed request: {newer_failure}" in err
    search, follow = loki.requests
    assert (search.query, search.direction, search.limit) == (last_error_query(), "backward", LAST_ERROR_SCAN)
    assert search.end - search.start == 3600 * S
    assert follow.query == trail_query(newer_failure)
    assert out.startswith(f"Trail {newer_failure}: 4 hops")


def test_last_error_for_one_service(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    # An older failure through the whole chain, and a newer one that never reached payments.
    cid_full, lines_full = recent_checkout(900, 500)
    push_all(loki, lines_full)
    t_gw = time.time_ns() - 100 * S
    gateway_only = new_correlation_id(now_ms=t_gw // MS)
    push_all(loki, [access_line(gateway_only, "e000000000000005", None, "gateway", t_gw, 3.0, "GET", "/x", 500)])
    code, _, err = run(capsys, "--last-error", "--service", "payments")
    assert code == 0 and f"most recent failed request: {cid_full}" in err
    assert (
        loki.requests[0].query
        == last_error_query("payments")
        == (
            '{service_name="payments"} |= "correlation.access" | json logger="logger", status="status"'
            ' | logger="correlation.access" | status >= 500 | __error__=""'
        )
    )


def test_last_error_none_found_exits_1(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = recent_checkout(60, 200)
    push_all(loki, lines)
    code, out, err = run(capsys, "--last-error", "--since", "15m")
    assert code == 1 and out == ""
    assert "no failed request (status >= 500) in window" in err and f"query: {last_error_query()}" in err


def test_last_error_skips_lines_with_hostile_ids(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    good, lines = recent_checkout(300, 500)
    push_all(loki, lines)
    hostile = access_line('x"} | y', "f000000000000006", None, "gateway", time.time_ns() - 10 * S, 1.0, "GET", "/", 500)
    loki.push(hostile[0], hostile[1], correlation_id="placeholder")
    code, _, err = run(capsys, "--last-error")
    assert code == 0 and f"most recent failed request: {good}" in err


def task_failure(task: str, seconds_ago: float, request_id: str) -> tuple[str, tuple[int, dict[str, Any]]]:
    """A failed run of ``task`` on the notifications worker: its correlation ID and access line."""
    t_run = time.time_ns() - int(seconds_ago * S)
    cid = new_correlation_id(now_ms=t_run // MS)
    fields = {schema.KIND: schema.KIND_TASK, schema.TASK: task, schema.STATE: "failure", schema.STATUS: 500}
    line = log_line(
        cid, request_id, None, "notifications", t_run, f"task {task} failure", "ERROR", schema.ACCESS_LOGGER, **fields
    )
    return cid, line


def test_last_error_for_one_task(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker runs several tasks: --task follows the newest failed run of that one."""
    confirmation, older = task_failure("notifications.send_confirmation", 300, "e000000000000005")
    _, newer = task_failure("notifications.send_receipt", 60, "e000000000000006")
    push_all(loki, [older, newer])
    code, out, err = run(
        capsys, "--last-error", "--service", "notifications", "--task", "notifications.send_confirmation"
    )
    assert code == 0 and f"most recent failed request: {confirmation}" in err
    assert loki.requests[0].query == last_error_query("notifications", task="notifications.send_confirmation")
    assert out.startswith(f"Trail {confirmation}: 1 hops")
    code, _, err = run(capsys, "--last-error", "--task", "notifications.send_invoice")
    assert code == 1 and f"query: {last_error_query(task='notifications.send_invoice')}" in err


def test_a_task_name_that_hides_its_text_is_printed_escaped_and_still_found(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    """A right-to-left override or an invisible character in a task name would make the printed
    query read as another: written as Go escapes, which Loki reads back to the same name."""
    hidden = "notifications.send\u202eeciovni\u200b\U000e0001"
    failed, line = task_failure(hidden, 60, "e000000000000007")
    push_all(loki, [line])
    code, _, err = run(capsys, "--last-error", "--task", hidden)
    assert code == 0 and f"most recent failed request: {failed}" in err
    code, _, err = run(capsys, "--last-error", "--task", hidden + "x")
    assert code == 1 and 'task="notifications.send\\u202eeciovni\\u200b\\U000e0001x"' in err, err
    assert all(c.isprintable() or c == "\n" for c in err), "no hidden character printed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "notifications.send_confirmation", CID], "--task goes with --last-error"),
        (["--last-error", "--task", ""], "--task: task name '': expected 1-256 characters"),
    ],
)
def test_bad_task_arguments_are_refused_before_any_query(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not loki.requests


# -- auth ------------------------------------------------------------------------------------------------------------
def test_tenant_and_bearer_from_env_on_every_request(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOKI_TENANT", "team-a")
    monkeypatch.setenv("LOKI_BEARER_TOKEN", "s3cret")
    run(capsys, CID)  # nothing found: four requests (the narrow window in three parts, widened)
    assert len(loki.requests) == 4
    for request in loki.requests:
        assert request.headers["x-scope-orgid"] == "team-a"
        assert request.headers["authorization"] == "Bearer s3cret"


def test_basic_auth_from_env(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOKI_USERNAME", "reader")
    monkeypatch.setenv("LOKI_PASSWORD", "pw")
    run(capsys, CID)
    assert loki.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"reader:pw").decode()


def test_console_script_is_main() -> None:
    assert cli.main is main


#: What a lookup in a terminal never needs: the page's and the notifier's frameworks, the metrics
#: client, the fast JSON encoder of the shipper, and a whole HTTP library for one GET.
HEAVY_FOR_A_LOOKUP = ("flask", "werkzeug", "jinja2", "prometheus_client", "orjson", "gunicorn", "requests")


@pytest.mark.process
def test_the_cli_imports_only_what_a_lookup_needs() -> None:
    """``trail <id>`` pays every import before its one query: the console script's import path
    (and the lookup, the renderers, the JSON document) must leave the heavy modules out."""
    probe = (
        "import sys, trail.__main__, trail.cli.main, trail.lookup, trail.document, trail.last_error\n"
        f"print(sorted(m for m in {HEAVY_FOR_A_LOOKUP!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- lines written by the real demo chain ---------------------------------------------------------------------
def test_trail_of_a_real_checkout_through_the_demo_chain(
    chain: Any, chain_sink: Any, loki: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hop tree is rebuilt from what our services really log and ship, not from samples."""
    import requests

    response = requests.post(
        f"{chain.urls['gateway']}/checkout", json={"items": [{"sku": "a", "quantity": 2}]}, timeout=10
    )
    cid = response.headers["X-Correlation-ID"]

    def all_hops_done(entries: list[Any]) -> bool:
        return (
            len(
                {
                    e.labels["service_name"]
                    for e in entries
                    if e.metadata.get("correlation_id") == cid
                    and json.loads(e.line).get("logger") == "correlation.access"
                }
            )
            == 4
        )

    for entry in chain_sink.wait_for(all_hops_done, timeout=15):
        loki.push(entry.timestamp_ns, entry.line, service=entry.labels["service_name"], **entry.metadata)
    code, out, _ = run(capsys, cid, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["complete"] and not document["widened"] and document["unknown_lines"] == []
    hops = document["hops"]
    assert [(h["depth"], h["service"], h["route"]) for h in hops[:2]] == [
        (0, "gateway", "/checkout"),
        (1, "orders", "/orders"),
    ]
    assert {(h["depth"], h["service"], h["route"]) for h in hops[2:]} == {
        (2, "payments", "/payments"),
        (2, "inventory", "/reservations"),
    }
    assert hops[0]["status"] == response.status_code and all(isinstance(h["status"], int) for h in hops)
    assert hops[1]["children"] == [h["request_id"] for h in hops[2:]]
    gateway, orders = document["hops"][:2]
    assert gateway["duration_ms"] >= orders["duration_ms"] and orders["start_offset_ms"] >= 0
