"""Correlation IDs for Flask services: one ID per request, carried to every service it calls,
written into every log line, shipped to Loki, and attached to Prometheus metrics as exemplars.

Typical use::

    from correlation import Correlation, Settings, setup_logging

    settings = Settings.from_env(service="orders")
    setup_logging(settings)  # JSON lines to stdout, and to Loki when LOKI_URL is set
    Correlation(app, settings)  # edge, access log, metrics at /metrics, requests propagation
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from correlation.context import (
        Hop,
        bind,
        bound,
        correlation_id,
        current,
        reset,
        service,
        set_service,
        submit,
        wrap,
    )
    from correlation.ids import is_valid_id, new_correlation_id, new_request_id, time_of
    from correlation.integrations.flask import Correlation
    from correlation.integrations.requests import instrument_requests
    from correlation.log.formatter import CorrelationFilter, JsonFormatter
    from correlation.log.stdout import StdoutHandler
    from correlation.loki.handler import LokiHandler
    from correlation.outgoing import outgoing_headers
    from correlation.settings import ConfigError, LokiSettings, Settings
    from correlation.setup import setup_logging

#: Where each public name lives. Imported on first use (PEP 562), so a tool that needs only
#: ``correlation.settings`` or ``correlation.ids`` (the trail CLI) does not load Flask,
#: prometheus_client and requests: importing all of them took ~300 ms of every ``trail`` run.
_EXPORTS = {
    "ConfigError": "correlation.settings",
    "Correlation": "correlation.integrations.flask",
    "CorrelationFilter": "correlation.log.formatter",
    "Hop": "correlation.context",
    "JsonFormatter": "correlation.log.formatter",
    "LokiHandler": "correlation.loki.handler",
    "LokiSettings": "correlation.settings",
    "Settings": "correlation.settings",
    "StdoutHandler": "correlation.log.stdout",
    "bind": "correlation.context",
    "bound": "correlation.context",
    "correlation_id": "correlation.context",
    "current": "correlation.context",
    "instrument_requests": "correlation.integrations.requests",
    "is_valid_id": "correlation.ids",
    "new_correlation_id": "correlation.ids",
    "new_request_id": "correlation.ids",
    "outgoing_headers": "correlation.outgoing",
    "reset": "correlation.context",
    "service": "correlation.context",
    "set_service": "correlation.context",
    "setup_logging": "correlation.setup",
    "submit": "correlation.context",
    "time_of": "correlation.ids",
    "wrap": "correlation.context",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for, then kept."""
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'correlation' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "ConfigError",
    "Correlation",
    "CorrelationFilter",
    "Hop",
    "JsonFormatter",
    "LokiHandler",
    "LokiSettings",
    "Settings",
    "StdoutHandler",
    "bind",
    "bound",
    "correlation_id",
    "current",
    "instrument_requests",
    "is_valid_id",
    "new_correlation_id",
    "new_request_id",
    "outgoing_headers",
    "reset",
    "service",
    "set_service",
    "setup_logging",
    "submit",
    "time_of",
    "wrap",
]
