"""bench/asgi_inprocess.py, the ASGI attribution's driver: every variant answers ``/ping`` and is
measured, its switches turn the parts off and on again, and bytecodes are counted by function (no
timing asserted here: figures belong to ``python -m bench attribution-asgi``)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest

from bench.asgi_inprocess import BYTECODE_APPS, VARIANTS
from tests.support import REPO

pytestmark = pytest.mark.process

ROOT = REPO
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "app")]), "LOKI_URL": "",
       "SERVICE_NAME": "bench"}  # fmt: skip


#: The peer is in the `bench` extra, which `make test` does not install: measured when present.
PEER = "asgi-correlation-id"
HAVE_PEER = importlib.util.find_spec("asgi_correlation_id") is not None
MEASURED = [name for name in VARIANTS if HAVE_PEER or name != PEER]


def _child(*args: str, **env: str) -> dict:
    child = subprocess.run([sys.executable, "-m", "bench.asgi_inprocess", *args], env={**ENV, **env}, cwd=ROOT,
                           capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout)


def test_every_variant_answers_and_is_measured() -> None:
    measured = _child(
        "thread",
        BENCH_INPROCESS_ROUNDS="2",
        BENCH_INPROCESS_REQUESTS="200",
        BENCH_INPROCESS_VARIANTS=",".join(MEASURED),
    )
    assert set(measured["results"]) == set(MEASURED)
    assert all(len(values) == 2 and min(values) > 0 for values in measured["results"].values())


def test_the_library_is_counted_by_function_and_the_framework_alike() -> None:
    apps = ",".join(name for name in BYTECODE_APPS if HAVE_PEER or name != PEER)
    results = _child("bytecodes", BENCH_BYTECODE_REQUESTS="20", BENCH_BYTECODE_APPS=apps)["results"]
    ours, bare, floor = results["ours"], results["bare FastAPI"], results["floor (bench/asgi_floor.py)"]
    assert ours["functions"]["library integrations/asgi.py:__call__"] > 0
    assert floor["functions"]["floor bench/asgi_floor.py:floor_edge"] > 0
    assert "library" not in bare["per_request"] and bare["per_request"]["framework"] > 0
    assert ours["per_request"]["framework"] == bare["per_request"]["framework"], "the same FastAPI work per request"


@pytest.mark.unit
def test_the_switches_turn_parts_off_and_back_on() -> None:
    from bench.asgi_inprocess import Switches
    from correlation import Settings, metrics, setup_logging
    from correlation.integrations import asgi
    from correlation.log.stdout import StdoutHandler

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    (handler,) = setup_logging(Settings(service="bench", log_stdout=True))
    switches = Switches()
    observe, end = metrics.observe_request, asgi.end_http_hop
    try:
        switches.set(frozenset({"access", "metrics", "report", "stdout"}))
        assert switches.access.disabled and handler not in root.handlers and isinstance(handler, StdoutHandler)
        assert metrics.observe_request is not observe and asgi.end_http_hop is not end
        switches.set(frozenset())
        assert not switches.access.disabled and handler in root.handlers
        assert metrics.observe_request is observe and asgi.end_http_hop is end
    finally:
        switches.set(frozenset())
        root.handlers[:] = before
        root.setLevel(level)
        handler.close()
