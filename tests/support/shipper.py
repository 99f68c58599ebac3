"""The Loki handler as ``setup_logging`` wires it, with test-friendly timings."""

from __future__ import annotations

from correlation import schema
from correlation.loki.handler import LokiHandler
from correlation.settings import LokiSettings
from fakes import FakeLoki

LABELS = {schema.SERVICE_LABEL: "svc", schema.ENV_LABEL: "test"}


def make_handler(loki: FakeLoki | str, **overrides: object) -> LokiHandler:
    """A LokiHandler pushing to ``loki`` (or a URL) with a short batch wait and backoff."""
    values = {
        "url": loki if isinstance(loki, str) else loki.url,
        "batch_max_wait_seconds": 0.05,
        "flush_timeout_seconds": 5.0,
        "backoff_min_seconds": 0.05,
        **overrides,
    }
    return LokiHandler(LokiSettings(**values), LABELS)  # type: ignore[arg-type]
