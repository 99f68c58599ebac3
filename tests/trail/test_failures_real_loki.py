"""How much broke (:mod:`trail.failures`), asked of a real Loki (runs only when LOKI_URL is set):
the metric queries the notifier and the trail page send, Loki's own answers, the counts equal to
the failures pushed, by type."""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

import pytest
import requests

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes import wait_until
from fakes.trail_lines import access_line, task_run_line
from trail.failures import count_failures, first_and_last_failure
from trail.loki_query import LokiQueryClient
from trail.window import NS, Window

pytestmark = [
    pytest.mark.real_loki,
    pytest.mark.skipif(not os.environ.get("LOKI_URL"), reason="needs a real Loki: set LOKI_URL"),
]

MS = 1_000_000
INJECTED, OTHER = "demo.faults.InjectedFault", "builtins.ValueError"


def push(settings: LokiSettings, service: str, lines: list[tuple[int, dict[str, Any]]]) -> None:
    """The lines as our shipper sends them: ``error_type`` in structured metadata of error lines."""
    values = []
    for ts_ns, line in lines:
        metadata = {key: line[key] for key in (schema.CORRELATION_ID, schema.REQUEST_ID)}
        metadata[schema.LEVEL] = line[schema.LEVEL].lower()
        if schema.ERROR_TYPE in line:
            metadata[schema.ERROR_TYPE] = line[schema.ERROR_TYPE]
        values.append([str(ts_ns), json.dumps(line), metadata])
    body = {
        "streams": [{"stream": {schema.SERVICE_LABEL: service, schema.ENV_LABEL: "failures-test"}, "values": values}]
    }
    response = requests.post(
        settings.push_url,
        json=body,
        headers=settings.auth_headers(),
        auth=settings.basic_auth,
        verify=settings.tls_verify,
        timeout=10,
    )
    assert response.status_code // 100 == 2, response.text


def test_counts_by_type_first_last_and_share_are_lokis_own() -> None:
    settings = LokiSettings.from_env()
    client = LokiQueryClient(settings)
    service = f"failures-test-{secrets.token_hex(4)}"  # a stream of its own: nothing else counts
    plan = [INJECTED, None, OTHER, INJECTED, None, "", INJECTED, None, OTHER, None, None, INJECTED]
    t0 = time.time_ns() - 180 * NS
    lines, failed = [], []
    for i, kind in enumerate(plan):
        start = t0 + i * 7 * NS
        cid = new_correlation_id(start // MS)
        ts, line = access_line(
            cid, f"{i:016x}", None, service, start, 3.0, "POST", "/pay", 201 if kind is None else 500
        )
        if kind:
            line[schema.ERROR_TYPE] = kind
        line[schema.SERVICE] = service
        lines.append((ts, line))
        if kind is not None:
            failed.append((cid, ts, kind or None))
    push(settings, service, lines)
    window = Window(t0 - 60 * NS, time.time_ns())

    counts = wait_until(
        lambda: (c := count_failures(client, service, window)).failed == len(failed) and c.requests == len(plan) and c,
        20,
        "Loki to count every pushed line",
    )
    expected = [(INJECTED, 4), (OTHER, 2), (None, 1)]
    assert [(kind.error_type, kind.count) for kind in counts.by_type] == expected
    assert counts.share == pytest.approx(7 / 12)
    for seen in counts.by_type:
        times = [ts for _, ts, k in failed if k == seen.error_type]
        assert seen.first_seen_ns - counts.step_seconds * NS < min(times) <= seen.first_seen_ns
        assert seen.last_seen_ns - counts.step_seconds * NS < max(times) <= seen.last_seen_ns
    # The page's count: one type only, no total asked.
    only = count_failures(client, service, window, error_type=OTHER, with_requests=False)
    assert [(kind.error_type, kind.count) for kind in only.by_type] == [(OTHER, 2)] and only.requests is None
    # The resolved notification's first and last failure.
    first, last = first_and_last_failure(client, service, counts.window)
    assert first is not None and last is not None
    assert (first.correlation_id, first.ts_ns) == failed[0][:2] and (last.correlation_id, last.ts_ns) == failed[-1][:2]


def test_a_tasks_count_is_of_its_own_runs_not_the_workers() -> None:
    """Two tasks of one worker failing at different rates: Loki counts the failed and the finished
    runs of the one asked for (the task name an escaped string in the query), retries left out."""
    settings = LokiSettings.from_env()
    client = LokiQueryClient(settings)
    service = f"failures-task-{secrets.token_hex(4)}"
    task, other = 'notifications.send_"confirmation"', "notifications.send_receipt"
    plans = {
        task: [INJECTED, "success", "retry", OTHER, "success", "retry", "success", INJECTED],
        other: [INJECTED] * 6,
    }
    t0 = time.time_ns() - 120 * NS
    lines, failed = [], []
    for offset, (name, plan) in enumerate(plans.items()):
        for i, planned in enumerate(plan):
            ts = t0 + (i * 7 + offset * 3) * NS
            cid = new_correlation_id(ts // MS)
            state = planned if planned in ("success", "retry") else "failure"
            kind = planned if state == "failure" else None
            ts, line = task_run_line(cid, f"{i:08x}{offset:08x}", service, ts, name, state, kind)
            lines.append((ts, line))
            if name == task and kind is not None:
                failed.append((cid, ts))
    push(settings, service, lines)
    window = Window(t0 - 60 * NS, time.time_ns())

    counts = wait_until(
        lambda: (c := count_failures(client, service, window, task=task)).failed == 3 and c.requests == 6 and c,
        20,
        "Loki to count the task's failed and finished runs",
    )
    assert [(kind.error_type, kind.count) for kind in counts.by_type] == [(INJECTED, 2), (OTHER, 1)]
    assert counts.task == task and counts.share == pytest.approx(0.5)
    everything = count_failures(client, service, window)
    assert (everything.failed, everything.requests) == (9, 14), "the worker's: every task, every attempt"
    first, last = first_and_last_failure(client, service, counts.window, task=task)
    assert first is not None and last is not None
    assert (first.correlation_id, first.ts_ns) == failed[0] and (last.correlation_id, last.ts_ns) == failed[-1]


def test_the_counted_window_is_the_one_loki_counts() -> None:
    """Loki puts a range query's points on the step grid whatever start and end say: the window a
    count reports is on that grid, and holds exactly the failures and requests counted."""
    settings = LokiSettings.from_env()
    client = LokiQueryClient(settings)
    service = f"failures-grid-{secrets.token_hex(4)}"
    base = (time.time_ns() // (100 * NS) - 3) * 100 * NS  # a whole 100 s, a few minutes ago
    lines, failed = [], []
    for i in range(60):  # a request every second, half a second into it; every other one failed
        start = base + i * NS + 497 * MS
        cid = new_correlation_id(start // MS)
        ts, line = access_line(cid, f"{i:016x}", None, service, start, 3.0, "POST", "/pay", 500 if i % 2 else 201)
        line[schema.SERVICE] = service
        if i % 2:
            line[schema.ERROR_TYPE] = INJECTED
            failed.append(ts)
        lines.append((ts, line))
    push(settings, service, lines)
    asked = Window(base + 23_500 * MS, base + 47_500 * MS)

    counts = wait_until(
        lambda: (c := count_failures(client, service, asked)).requests == 30 and c,
        20,
        "Loki to count the window's requests",
    )
    inside = [ts for ts in failed if counts.window.start_ns < ts <= counts.window.end_ns]
    assert [(kind.error_type, kind.count) for kind in counts.by_type] == [(INJECTED, len(inside))] == [(INJECTED, 15)]
    assert (counts.window.start_ns, counts.window.end_ns, counts.step_seconds) == (base + 20 * NS, base + 50 * NS, 10)
