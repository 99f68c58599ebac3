"""Task runs in ``trail``: an asynchronous hop of the tree, which starts when its parent publishes
and usually ends after the HTTP response; ``trail --last-error`` finds a request whose only failure
was its task. Staged lines in the fake Loki, shaped as correlation.celery writes them."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from fakes import FakeLoki
from fakes.trail_lines import (
    GATEWAY,
    INVENTORY,
    MS,
    ORDERS,
    PAYMENTS,
    access_line,
    checkout_lines,
    log_line,
    push_all,
    rfc3339,
)
from trail.cli.main import main
from trail.cli.render import render_text
from trail.hops import Trail, build_trail

pytestmark = pytest.mark.unit

TASK = "notifications.send_confirmation"
RUN1, RUN2, RUN3, LOOKUP = "e000000000000005", "e000000000000006", "e000000000000007", "f000000000000008"
Line = tuple[int, dict[str, Any]]


def task_run(
    cid: str,
    rid: str,
    parent: str,
    published_ns: int,
    wait_ms: float,
    run_ms: float,
    state: str = "success",
    attempt: int = 1,
) -> list[Line]:
    """A run's own line and its access line, as correlation.celery writes them."""
    start_ns = published_ns + int(wait_ms * MS)
    status = {"success": 200, "retry": 202}.get(state, 500)
    fields = {
        schema.KIND: schema.KIND_TASK,
        schema.TASK: TASK,
        schema.TASK_ID: "t-1",
        schema.STATE: state,
        schema.ATTEMPT: attempt,
        schema.QUEUE: "notifications",
        schema.PUBLISHED_AT: rfc3339(published_ns),
        schema.QUEUE_WAIT_MS: wait_ms,
        schema.STATUS: status,
        schema.DURATION_MS: run_ms,
        schema.CALLER: "orders" if attempt == 1 else "notifications",
    }
    level = "ERROR" if status >= 500 else "WARNING" if state == "retry" else "INFO"
    return [
        log_line(cid, rid, parent, "notifications", start_ns + 1 * MS, f"sending confirmation (attempt {attempt})"),
        log_line(
            cid,
            rid,
            parent,
            "notifications",
            start_ns + int(run_ms * MS),
            f"task {TASK} {state}",
            level=level,
            logger=schema.ACCESS_LOGGER,
            **fields,
        ),
    ]


def checkout_with_task(cid: str, t0: int, *, state: str = "success") -> list[Line]:
    """A successful checkout (the gateway answers at +40 ms) whose task, published by orders at
    +28 ms, waits 80 ms in the queue and runs 12 ms: it ends at +120 ms, long after the response."""
    lines = checkout_lines(cid, t0, payments_status=201)
    lines += task_run(cid, RUN1, ORDERS, t0 + 28 * MS, 80.0, 12.0, state)
    lines.append(
        access_line(
            cid,
            LOOKUP,
            RUN1,
            "inventory",
            t0 + 110 * MS,
            2.0,
            "GET",
            "/reservations/<reservation_id>",
            200,
            caller="notifications",
        )
    )
    return sorted(lines, key=lambda pair: pair[0])


def trail_of(cid: str, lines: list[Line]) -> Trail:
    return build_trail(cid, [(ts, json.dumps(line), None, {}) for ts, line in lines])


T0 = 1_750_000_000_000 * MS
CID = new_correlation_id(now_ms=T0 // MS)


def test_the_task_is_an_async_hop_under_its_publisher_starting_at_the_publish() -> None:
    trail = trail_of(CID, checkout_with_task(CID, T0))
    assert trail.complete, trail.problems()
    walk = [(hop.depth, hop.request_id) for hop in trail.walk()]
    assert walk == [(0, GATEWAY), (1, ORDERS), (2, PAYMENTS), (2, INVENTORY), (2, RUN1), (3, LOOKUP)]
    run = trail.hops[RUN1]
    assert run.is_task and not trail.hops[ORDERS].is_task
    assert (run.task, run.state, run.status, run.queue_wait_ms, run.duration_ms) == (TASK, "success", 200, 80.0, 12.0)
    assert run.start_ns == T0 + 28 * MS, "a task starts when it is published"
    responded = trail.hops[GATEWAY].end_ns
    assert run.end_ns is not None and responded is not None and run.end_ns > responded, "it ended after the response"
    assert run.route == TASK, "the task's name is its route (as in its metrics)"


def test_the_tree_is_the_same_whatever_order_the_lines_arrive_in() -> None:
    lines = checkout_with_task(CID, T0)
    shapes = {
        tuple((h.depth, h.request_id) for h in trail_of(CID, order).walk())
        for order in (lines, list(reversed(lines)), lines[::2] + lines[1::2])
    }
    assert len(shapes) == 1


def test_the_text_tree_marks_the_task_as_async_with_its_queue_wait() -> None:
    text = render_text(trail_of(CID, checkout_with_task(CID, T0)))
    row = next(r for r in text.splitlines() if RUN1 in r and not r.startswith("=="))
    assert row.startswith("    notifications") and f"task {TASK}" in row and "success" in row
    assert "+28.0 ms" in row and "12.0 ms" in row and "async: queued 80.0 ms" in row
    assert f"== notifications task {TASK} [{RUN1}]" in text


def test_retries_chain_each_attempt_under_the_previous_one() -> None:
    lines = checkout_lines(CID, T0, payments_status=201)
    lines += task_run(CID, RUN1, ORDERS, T0 + 28 * MS, 5.0, 10.0, "retry", 1)
    lines += task_run(CID, RUN2, RUN1, T0 + 43 * MS, 200.0, 10.0, "retry", 2)
    lines += task_run(CID, RUN3, RUN2, T0 + 253 * MS, 200.0, 10.0, "failure", 3)
    trail = trail_of(CID, lines)
    assert [(h.depth, h.request_id, h.state) for h in trail.walk() if h.is_task] == [
        (2, RUN1, "retry"),
        (3, RUN2, "retry"),
        (4, RUN3, "failure"),
    ]
    assert [h.request_id for h in trail.walk() if h.failed] == [RUN3], "a retry is no failure; the last attempt is"


def test_a_task_still_running_is_an_open_hop_then_complete(loki: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    lines = checkout_with_task(CID, T0)
    running = [(ts, x) for ts, x in lines if not (x[schema.REQUEST_ID] in (RUN1, LOOKUP) and x.get(schema.STATUS))]
    push_all(loki, running)  # the checkout answered; the task has logged its first line only
    assert main([CID, "--json"]) == 0
    out, err = capsys.readouterr()
    hops = {hop["request_id"]: hop for hop in json.loads(out)["hops"]}
    assert hops[RUN1]["open"] and hops[RUN1]["depth"] == 2 and hops[RUN1]["parent_request_id"] == ORDERS
    assert "widened the window once" in err, "an open hop makes trail look further"
    push_all(loki, [(ts, x) for ts, x in lines if (ts, x) not in running])  # the run ends
    assert main([CID, "--json"]) == 0
    document = json.loads(capsys.readouterr()[0])
    assert document["complete"]
    run = next(hop for hop in document["hops"] if hop["request_id"] == RUN1)
    assert (run["async"], run["task"], run["state"], run["queue_wait_ms"], run["start_offset_ms"]) == (
        True,
        TASK,
        "success",
        80.0,
        28.0,
    )


def test_last_error_finds_a_request_whose_only_failure_was_its_task(
    loki: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = (time.time_ns() // MS - 60_000) * MS  # a minute ago: inside --last-error's default hour
    failed_cid, later_ok = new_correlation_id(now_ms=t0 // MS), new_correlation_id(now_ms=t0 // MS + 1000)
    push_all(loki, checkout_with_task(failed_cid, t0, state="failure"))
    push_all(loki, checkout_lines(later_ok, t0 + 1000 * MS, payments_status=201))  # a newer request, all fine
    for argv in (["--last-error"], ["--last-error", "--service", "notifications"]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert f"most recent failed request: {failed_cid} (notifications" in err
        rows = [r for r in out.split("\n\n")[1].splitlines()[1:]]
        failed = [r for r in rows if "failure" in r]
        assert len(failed) == 1 and RUN1 in failed[0] and "async" in failed[0]
        assert not any(" 50" in r for r in rows if "task" not in r), "every HTTP hop answered fine"
