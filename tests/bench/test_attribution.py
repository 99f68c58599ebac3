"""bench/inprocess.py, the attribution's `thread` measurement, runs every variant, and its switches
turn the parts off and on again (no timing asserted here: figures belong to `make bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.inprocess import VARIANTS
from tests.support import REPO

pytestmark = pytest.mark.process

ROOT = REPO


def test_every_variant_is_measured_and_the_switches_take_effect() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "app")]), "LOKI_URL": "",
           "BENCH_INPROCESS_ROUNDS": "3", "BENCH_INPROCESS_REQUESTS": "300", "SERVICE_NAME": "bench"}  # fmt: skip
    child = subprocess.run([sys.executable, "-m", "bench.inprocess"], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120, check=False)  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    measured = json.loads(child.stdout)
    results = {name: min(values) for name, values in measured["results"].items()}
    assert set(results) == set(VARIANTS) and all(len(v) == 3 for v in measured["results"].values())
    assert all(us > 0 for us in results.values())


def test_the_switches_turn_parts_off_and_back_on() -> None:
    from bench.inprocess import _Switches
    from correlation import metrics
    from correlation.integrations import flask as edge

    switches = _Switches()
    wrapper = edge._Edge  # noqa: SLF001 - the switch patches the edge's report
    observe, report = metrics.observe_request, wrapper.report
    try:
        switches.set(frozenset({"access", "metrics", "report"}))
        assert switches.access.disabled
        assert metrics.observe_request is not observe and wrapper.report is not report
        switches.set(frozenset())
        assert not switches.access.disabled
        assert metrics.observe_request is observe and wrapper.report is report
    finally:
        switches.set(frozenset())


def test_bytecodes_are_counted_per_function_and_the_same_in_every_run() -> None:
    """bench/bytecodes.py: the library's functions are found by name, the floor's by file, and a
    count (unlike a time) repeats, but for what the clock makes due."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "app")]), "LOKI_URL": "",
           "BENCH_BYTECODE_REQUESTS": "20", "SERVICE_NAME": "bench"}  # fmt: skip
    runs = []
    for _ in range(2):
        child = subprocess.run([sys.executable, "-m", "bench.bytecodes"], env=env, cwd=ROOT, capture_output=True,
                               text=True, timeout=120, check=False)  # fmt: skip
        assert child.returncode == 0, child.stderr[-2000:]
        runs.append(json.loads(child.stdout)["results"])
    first, second = runs
    ours, floor, bare = first["instrumented"], first["floor (bench/floor.py)"], first["bare Flask"]
    assert ours["functions"]["library integrations/flask.py:__call__"] > 0
    assert floor["functions"]["floor bench/floor.py:floor_edge"] > 0
    assert "library" not in bare["per_request"] and bare["per_request"]["framework"] > 0
    assert ours["per_request"]["framework"] == bare["per_request"]["framework"], "the same Flask work per request"
    # Counted, not timed: runs differ only by what is due by the clock (a stdout flush every 0.2 s).
    assert abs(ours["per_request"]["library"] - second["instrumented"]["per_request"]["library"]) < 10
