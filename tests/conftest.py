"""Shared fixtures: a Loki push sink, free loopback ports, and the real demo chain under gunicorn."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Iterator

import pytest

from loki_sink import LokiSink

if TYPE_CHECKING:
    from demo.run_local import Chain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loki_sink() -> Iterator[LokiSink]:
    with LokiSink() as sink:
        yield sink
    assert not sink.violations, f"pushes that break Loki's format: {sink.violations}"


@pytest.fixture(scope="module")
def chain_sink() -> Iterator[LokiSink]:
    with LokiSink() as sink:
        yield sink
    assert not sink.violations, f"pushes that break Loki's format: {sink.violations}"


@pytest.fixture(scope="module")
def chain(chain_sink: LokiSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """gateway -> orders -> (payments, inventory) under gunicorn on loopback, shipping to the sink."""
    from demo.run_local import start_chain
    from demo.services import SERVICES

    log = (tmp_path_factory.mktemp("chain") / "services.log").open("wb")
    env = {"LOKI_URL": chain_sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"}
    running = start_chain({name: free_port() for name in SERVICES}, env, stdout=log)
    yield running
    codes = running.stop()
    log.close()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"
