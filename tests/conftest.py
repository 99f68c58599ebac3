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
    "stack/test_alert_links.py": "stack",
    "stack/test_alert_rules.py": "stack",
    "bench/test_attribution.py": "process",
    "bench/test_floor.py": "unit",
    "demo/test_chain.py": "process",
    "correlation/test_settings.py": "unit",
    "correlation/test_context.py": "unit",
    "correlation/test_contract.py": "unit",
    "demo/test_demo.py": "unit",
    "correlation/integrations/test_errors.py": "unit",
    "test_fakes.py": "unit",
    "correlation/test_error_type.py": "process",
    "correlation/integrations/test_flask.py": "unit",
    "stack/test_grafana_dashboards.py": "unit",
    "correlation/integrations/test_gunicorn.py": "process",
    "correlation/integrations/test_gunicorn_workers.py": "process",
    "correlation/metrics/test_histogram.py": "unit",
    "correlation/test_hot_path.py": "unit",
    "correlation/integrations/test_httpx.py": "unit",
    "stack/test_ha.py": "stack",  # the trail test is marked process, the Loki cluster ones real_loki
    "correlation/test_ids.py": "unit",
    "demo/test_loadgen.py": "process",
    "correlation/log/test_logs.py": "unit",
    "correlation/loki/test_buffer.py": "unit",
    "correlation/loki/test_handler.py": "process",
    "correlation/loki/test_push.py": "unit",
    "correlation/loki/test_sender.py": "unit",
    "correlation/loki/test_spool.py": "process",
    "correlation/integrations/test_loguru.py": "unit",
    "correlation/metrics/test_shared.py": "unit",
    "trail/notify/test_notifier.py": "unit",
    "trail/notify/test_server.py": "unit",
    "test_packaging.py": "process",
    "correlation/integrations/test_requests.py": "unit",
    "correlation/loki/test_real_loki.py": "real_loki",
    "test_root_cause_alerts.py": "stack",
    "correlation/loki/test_shipping_faults.py": "process",
    "stack/test_config.py": "stack",
    "stack/test_alerting_path.py": "stack",
    "correlation/integrations/test_structlog.py": "unit",  # the import test says process
    "stack/test_task_alerts.py": "stack",
    "correlation/test_traceparent.py": "unit",
    "correlation/test_tracestate.py": "unit",
    "trail/cli/test_main.py": "unit",
    "trail/test_hops.py": "unit",
    "trail/test_hostile.py": "unit",
    "trail/test_lookup.py": "unit",
    "trail/test_properties.py": "unit",
    "trail/test_loki_query.py": "unit",
    "trail/cli/test_real_loki.py": "real_loki",
    "trail/web/test_page.py": "unit",
    "trail/web/test_browser.py": "process",
    "trail/web/test_alert_links.py": "unit",
    "trail/web/test_links.py": "unit",
    "correlation/test_trust.py": "unit",
    "test_typing.py": "process",
    "correlation/test_w3c_neighbour.py": "process",  # the in-process tests say unit
    "correlation/test_wire.py": "unit",
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
    path = item.path.relative_to(item.config.rootpath).as_posix()
    tier = TIER_OF_FILE.get(path)
    if tier is None:
        raise pytest.UsageError(
            f"{path} has no test tier: add it to TIER_OF_FILE in tests/conftest.py "
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
