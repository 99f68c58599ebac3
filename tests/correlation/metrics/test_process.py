"""correlation.metrics.process: the server process's figures join the workers' (once), and the CPU
total is the same whatever the order of its terms. (Real workers: test_gunicorn_workers.py.)"""

from __future__ import annotations

import os
import sys

import pytest

from correlation.metrics import process, store
from correlation.metrics.merge import Merged
from correlation.metrics.shared import Series

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process figures come from /proc"),
]


def _cpu(seconds: float) -> Series:
    return Series(*process.CPU.family_key[:4], (), (), "", (1.0, seconds, None))


def _total(merged: Merged) -> float:
    return merged.families[process.CPU.family_key][()][1]


def test_the_cpu_total_does_not_depend_on_the_order_of_its_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's file moving to the archive changes the order of the sum: its last bit must not
    go down (Prometheus would read a counter reset)."""
    monkeypatch.setattr(store, "server_pid", None)
    totals = []
    for order in ((0.1, 0.2, 0.3), (0.1, 0.3, 0.2)):  # 0.6000000000000001 and 0.6 in floats
        merged = Merged()
        for seconds in order:
            merged.add(_cpu(seconds))
        process.add_server_figures(merged)
        totals.append(_total(merged))
    assert totals == [0.6, 0.6]


def test_the_server_process_figures_are_added_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "server_pid", os.getpid())
    merged = Merged()
    process.add_server_figures(merged)
    names = {family[0] for family in merged.families}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds"} <= names
    assert _total(merged) > 0
    assert merged.families[process.RESIDENT.family_key][()] > 0
    with_its_file = Merged(pids={os.getpid()})  # it writes a file of its own: its figures are there
    process.add_server_figures(with_its_file)
    assert with_its_file.families == {}
