"""Correlation IDs for Flask services: one ID per request, carried to every service it calls,
written into every log line, shipped to Loki, and attached to Prometheus metrics as exemplars.

Typical use::

    from correlation import Correlation, Settings, setup_logging

    settings = Settings.from_env(service="orders")
    setup_logging(settings)  # JSON lines to stdout, and to Loki when LOKI_URL is set
    Correlation(app, settings)  # edge, access log, metrics at /metrics, requests propagation
"""

from correlation.context import Hop, bind, bound, correlation_id, current, reset, service, set_service, submit, wrap
from correlation.ids import is_valid_id, new_correlation_id, new_request_id, time_of
from correlation.integrations.flask import Correlation
from correlation.integrations.requests import instrument_requests
from correlation.log.formatter import CorrelationFilter, JsonFormatter
from correlation.log.stdout import StdoutHandler
from correlation.loki.handler import LokiHandler
from correlation.outgoing import outgoing_headers
from correlation.settings import ConfigError, LokiSettings, Settings
from correlation.setup import setup_logging

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
