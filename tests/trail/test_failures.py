"""trail.failures on the fake Loki, which puts a range query's points on the step grid as Loki does:
the window a count reports is the window Loki counted, to the line."""

from __future__ import annotations

import time

import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes import FakeLoki
from fakes.trail_lines import access_line
from trail.failures import count_failures, count_window
from trail.loki_query import LokiQueryClient
from trail.window import NS, Window

pytestmark = pytest.mark.unit

MS = 1_000_000
INJECTED = "demo.faults.InjectedFault"


def stage_a_failure_a_second(loki: FakeLoki, base_ns: int, seconds: int) -> list[int]:
    """From ``base_ns``, a payments request every second, half a second into it; every other one
    failed. The failures' times."""
    failed = []
    for i in range(seconds):
        start = base_ns + i * NS + 500 * MS - 3 * MS
        status = 500 if i % 2 else 201
        ts, line = access_line(
            new_correlation_id(start // MS), f"{i:016x}", None, "payments", start, 3.0, "POST", "/p", status
        )
        if status == 500:
            line[schema.ERROR_TYPE] = INJECTED
            failed.append(ts)
        loki.push(ts, line)
    return failed


def test_the_counted_window_is_on_the_step_grid_and_holds_exactly_what_was_counted() -> None:
    """Asked for 23.5 s .. 47.5 s past a whole 100 s, with a 10 s step: Loki would count from 20 s to
    50 s whatever the query says; the count reports that window and what lies in it, no more."""
    base = (time.time_ns() // (100 * NS) - 3) * 100 * NS  # a whole 100 s, five minutes ago or so
    with FakeLoki() as loki:
        failed = stage_a_failure_a_second(loki, base, 60)
        asked = Window(base + 23_500 * MS, base + 47_500 * MS)
        counts = count_failures(LokiQueryClient(LokiSettings(url=loki.url)), "payments", asked)
    assert counts.step_seconds == 10
    inside = [ts for ts in failed if counts.window.start_ns < ts <= counts.window.end_ns]
    assert [(kind.error_type, kind.count) for kind in counts.by_type] == [(INJECTED, len(inside))]
    assert (counts.window.start_ns, counts.window.end_ns) == (base + 20 * NS, base + 50 * NS)
    assert (counts.failed, counts.requests) == (15, 30)


@pytest.mark.parametrize(
    ("start_s", "end_s", "expected"),
    [(0, 900, (0, 900, 10)), (3, 7, (0, 10, 10)), (10, 11, (10, 20, 10)), (1, 3601, (0, 3620, 20))],
)
def test_count_window_covers_the_window_on_whole_steps(
    start_s: int, end_s: int, expected: tuple[int, int, int]
) -> None:
    base = 1_800_000_000 * NS  # a multiple of every step here
    window, step = count_window(Window(base + start_s * NS, base + end_s * NS))
    assert ((window.start_ns - base) // NS, (window.end_ns - base) // NS, step) == expected
