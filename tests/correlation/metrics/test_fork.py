"""A process that shares its metrics (``PROMETHEUS_MULTIPROC_DIR``, a gunicorn arbiter) and forks
while its sampler thread is inside a family: the child must not inherit a lock held by a thread it
does not have (it takes every family's lock to write its own file, and would hang at start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork"),
]

SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    from correlation.metrics import store
    from correlation.metrics.gauge import Gauge

    gauge = Gauge("fork_test_gauge", "a family whose sampling is slow", (), registry=None)
    gauge.labels().set(1)
    inside = threading.Event()

    def slow_sample():  # a sampling pass that holds the family's lock a while
        with gauge._lock:
            inside.set()
            time.sleep(0.5)

    gauge.sample = slow_sample
    threading.Thread(target=store.sample_now, daemon=True).start()
    inside.wait(5)
    pid = os.fork()
    if pid == 0:  # the child activates: every family's lock, to give it a region in its file
        os._exit(0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(0 if os.waitstatus_to_exitcode(status) == 0 else 1)
        time.sleep(0.02)
    os.kill(pid, 9)
    print("the child hung at start", flush=True)
    sys.exit(1)
""")


def test_a_fork_during_a_sampling_pass_leaves_the_child_no_held_lock(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO / "app"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "shared")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
