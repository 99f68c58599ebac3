"""Shared fixtures (the fake Loki, the demo chain under gunicorn, a private logger) and the test tiers.

Every test has exactly one tier, a marker registered in pytest.ini:

- ``unit``: in one process, milliseconds each: pure code, Flask's test client, in-thread loopback
  fakes (``app/fakes/``). ``pytest tests -m unit`` runs in seconds.
- ``process``: starts processes (gunicorn, mypy, pip) or waits on real time (retries, outages,
  shutdown bounds, load pacing): seconds each.
- ``stack``: runs Debian's Prometheus, Alertmanager, promtool, amtool or docker-compose.
- ``real_loki``: needs a real Loki (``LOKI_URL`` or ``LOKI_BIN``); skipped without one.

Each test file declares its tier, ``pytestmark = pytest.mark.<tier>``, next to its imports. A test
that differs says its own with ``@pytest.mark.<tier>`` (the closest declaration wins); a test using
a fixture of :data:`TIER_OF_FIXTURE` takes that tier when it is heavier than its file's. A test
file without a tier fails collection (exit status 4), and so does a test with two tiers in one
place: nothing runs untiered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from fakes import FakeLoki
from tests.support.fake_loki import fake_loki_fixture

if TYPE_CHECKING:
    from demo.run_local import Chain

TIERS = ("unit", "process", "stack", "real_loki")

#: Fixtures that start something heavier than their test file's tier.
TIER_OF_FIXTURE = {"chain": "process"}


def _tier_of(item: pytest.Item) -> str:
    """The one tier of ``item``, or UsageError saying how to give it one."""
    for node in reversed(item.listchain()):  # the test, its class, its module: the closest declares
        own = {mark.name for mark in node.own_markers if mark.name in TIERS}
        if len(own) > 1:
            raise pytest.UsageError(f"{node.nodeid}: several tiers {sorted(own)}; a test has exactly one")
        if own:
            tier = own.pop()
            if not isinstance(node, pytest.Module):
                return tier  # said for this test (or its class) alone
            implied = [TIER_OF_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in TIER_OF_FIXTURE]
            return max([tier, *implied], key=TIERS.index)  # the heaviest of its file's and its fixtures'
    raise pytest.UsageError(
        f"{item.path.relative_to(item.config.rootpath)} has no test tier: declare one next to its imports, "
        f"pytestmark = pytest.mark.<tier> (one of {', '.join(TIERS)}), or mark each of its tests"
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the tier must be on the item by then
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers = [(item, _tier_of(item)) for item in items]
    for item, tier in tiers:
        # The tier moves from the file onto each test: a file's tier must not also select, with
        # `-m`, the test that says otherwise.
        for node in item.listchain()[:-1]:
            node.own_markers[:] = [mark for mark in node.own_markers if mark.name not in TIERS]
        if not any(mark.name == tier for mark in item.own_markers):
            item.add_marker(tier)


# -- the fake Loki ----------------------------------------------------------------------------------


#: A fake Loki for the shipper; the test fails if anything pushed breaks Loki's format.
loki_sink = fake_loki_fixture()
#: A fake Loki for ``trail``: ``LOKI_URL`` points at it and no other ``LOKI_*`` setting is set.
loki = fake_loki_fixture(as_loki_url=True)


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


#: The fake Loki the module's demo chain ships to.
chain_sink = fake_loki_fixture(scope="module")


@pytest.fixture(scope="module")
def chain(chain_sink: FakeLoki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """gateway -> orders -> (payments, inventory) under gunicorn on loopback, shipping to the sink."""
    from demo.run_local import start_chain
    from demo.services import SERVICES
    from fakes import free_port

    log = (tmp_path_factory.mktemp("chain") / "services.log").open("wb")
    env = {"LOKI_URL": chain_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"}
    running = start_chain({name: free_port() for name in SERVICES}, env, stdout=log)
    yield running
    codes = running.stop()
    log.close()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"
