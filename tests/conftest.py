"""Shared fixtures (the fake Loki, the demo chain under gunicorn, a private logger) and the test tiers.

Every test has exactly one tier, a marker registered in pytest.ini:

- ``unit``: in one process, milliseconds each: pure code, Flask's test client, in-thread loopback
  fakes (``tests.fakes``). ``pytest tests -m unit`` runs in seconds.
- ``process``: starts processes (gunicorn, mypy, pip) or waits on real time (retries, outages,
  shutdown bounds, load pacing): seconds each.
- ``stack``: runs Debian's Prometheus, Alertmanager, promtool, amtool or docker-compose.
- ``real_loki``: needs a real Loki (``LOKI_URL`` or ``LOKI_BIN``); skipped without one.

A file's tier is in :data:`TIER_OF_FILE`; a test using a fixture of :data:`TIER_OF_FIXTURE` takes
that tier when it is heavier; a test that differs otherwise says its own with
``@pytest.mark.<tier>``. A test file missing from the table fails collection (exit status 4), and
so does a test with two tiers: nothing runs untiered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.fakes import FakeLoki

if TYPE_CHECKING:
    from demo.run_local import Chain

TIERS = ("unit", "process", "stack", "real_loki")

TIER_OF_FILE = {
    "test_alert_links_stack.py": "stack",
    "test_alert_rules.py": "stack",
    "test_asgi.py": "process",
    "test_bench_attribution.py": "process",
    "test_bench_floor.py": "unit",
    "test_chain.py": "process",
    "test_config.py": "unit",
    "test_context.py": "unit",
    "test_contract.py": "unit",
    "test_doc_links.py": "unit",
    "test_demo.py": "unit",
    "test_django.py": "unit",  # the import test says process
    "test_django_gunicorn.py": "process",
    "test_error_bodies.py": "unit",
    "test_fakes.py": "unit",
    "test_error_type.py": "process",
    "test_flask.py": "unit",
    "test_grafana_dashboards.py": "unit",
    "test_gunicorn.py": "process",
    "test_gunicorn_workers.py": "process",
    "test_histogram.py": "unit",
    "test_hot_path.py": "unit",
    "test_httpx.py": "unit",
    "test_ha.py": "stack",  # the trail test is marked process, the Loki cluster ones real_loki
    "test_ids.py": "unit",
    "test_loadgen.py": "process",
    "test_logs.py": "unit",
    "test_loki_buffer.py": "unit",
    "test_loki_handler.py": "process",
    "test_loki_push.py": "unit",
    "test_loki_sender.py": "unit",
    "test_loki_spool.py": "process",
    "test_loguru_lines.py": "unit",
    "test_metrics_shared.py": "unit",
    "test_notify.py": "unit",
    "test_notify_http.py": "unit",
    "test_packaging.py": "process",
    "test_propagation.py": "unit",
    "test_real_loki.py": "real_loki",
    "test_root_cause_alerts.py": "stack",
    "test_shipping_faults.py": "process",
    "test_stack_config.py": "stack",
    "test_stack_integration.py": "stack",
    "test_structlog_lines.py": "unit",  # the import test says process
    "test_task_alerts.py": "stack",
    "test_traceparent.py": "unit",
    "test_tracestate.py": "unit",
    "test_trail_cli.py": "unit",
    "test_trail_hops.py": "unit",
    "test_trail_hostile.py": "unit",
    "test_trail_lookup.py": "unit",
    "test_trail_properties.py": "unit",
    "test_trail_query.py": "unit",
    "test_failures_real_loki.py": "real_loki",
    "test_trail_real_loki.py": "real_loki",
    "test_trail_web.py": "unit",
    "test_trail_web_browser.py": "process",
    "test_trail_web_alert_links.py": "unit",
    "test_trail_web_links.py": "unit",
    "test_trust.py": "unit",
    "test_typing.py": "process",
    "test_w3c_neighbour.py": "process",  # the in-process tests say unit
    "test_wire.py": "unit",
}

#: Fixtures that start something heavier than their test file's tier.
TIER_OF_FIXTURE = {"chain": "process"}


def _tier_of(item: pytest.Item) -> str:
    """The one tier of ``item``, or UsageError saying how to give it one."""
    own = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    if len(own) > 1:
        raise pytest.UsageError(f"{item.nodeid}: several tiers {sorted(own)}; a test has exactly one")
    if own:
        return own.pop()
    tier = TIER_OF_FILE.get(item.path.name)
    if tier is None:
        raise pytest.UsageError(
            f"{item.path.name} has no test tier: add it to TIER_OF_FILE in tests/conftest.py "
            f"(one of {', '.join(TIERS)}), or mark each of its tests"
        )
    implied = [TIER_OF_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in TIER_OF_FIXTURE]
    return max([tier, *implied], key=TIERS.index)  # the heaviest of its file's and its fixtures'


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the tier must be on the item by then
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(tier)


# -- the fake Loki ----------------------------------------------------------------------------------


@pytest.fixture
def loki_sink() -> Iterator[FakeLoki]:
    """A fake Loki for the shipper; the test fails if anything pushed breaks Loki's format."""
    with FakeLoki() as fake:
        yield fake
    assert not fake.violations, f"pushes that break Loki's format: {fake.violations}"


@pytest.fixture
def loki(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLoki]:
    """A fake Loki for ``trail``: ``LOKI_URL`` points at it and no other ``LOKI_*`` setting is set."""
    for name in ("LOKI_TENANT", "LOKI_USERNAME", "LOKI_PASSWORD", "LOKI_BEARER_TOKEN", "LOKI_TLS_VERIFY", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    with FakeLoki() as fake:
        monkeypatch.setenv("LOKI_URL", fake.url)
        yield fake
    assert not fake.violations, f"pushes that break Loki's format: {fake.violations}"


# -- the shipper ---------------------------------------------------------------------------------


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own (no propagation to root); its handlers are closed at the end."""
    log = logging.getLogger(f"test.shipper.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


# -- the demo chain ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_sink() -> Iterator[FakeLoki]:
    """The fake Loki the module's demo chain ships to."""
    with FakeLoki() as fake:
        yield fake
    assert not fake.violations, f"pushes that break Loki's format: {fake.violations}"


@pytest.fixture(scope="module")
def chain(chain_sink: FakeLoki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """gateway -> orders -> (payments, inventory) under gunicorn on loopback, shipping to the sink."""
    from demo.run_local import start_chain
    from demo.services import SERVICES
    from tests.fakes import free_port

    log = (tmp_path_factory.mktemp("chain") / "services.log").open("wb")
    env = {"LOKI_URL": chain_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"}
    running = start_chain({name: free_port() for name in SERVICES}, env, stdout=log)
    yield running
    codes = running.stop()
    log.close()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"
