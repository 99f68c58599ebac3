"""A Loki handler wired as setup_logging wires it, with test-friendly timings, and a private logger."""

from __future__ import annotations

import logging
import time
from typing import Iterator

import pytest

from correlation.config import LokiSettings
from correlation.logs import CorrelationFilter, JsonFormatter
from correlation.loki import LokiHandler
from loki_sink import LokiSink

LABELS = {"service_name": "svc", "env": "test"}


def make_handler(sink: LokiSink | str, **overrides: object) -> LokiHandler:
    """A LokiHandler pushing to ``sink`` (or a URL) with short batch wait and backoff."""
    values = {
        "url": sink if isinstance(sink, str) else sink.url,
        "batch_max_wait_seconds": 0.05,
        "flush_timeout_seconds": 5.0,
        "backoff_min_seconds": 0.05,
        **overrides,
    }
    handler = LokiHandler(LokiSettings(**values), LABELS)  # type: ignore[arg-type]
    handler.addFilter(CorrelationFilter("svc"))
    handler.setFormatter(JsonFormatter())
    return handler


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
