"""Moved to :mod:`correlation.integrations.httpx`: this old path is kept for one release (see CHANGELOG.md)."""

from correlation.integrations.httpx import CorrelationTransport, instrument_httpx, uninstrument_httpx

__all__ = ["CorrelationTransport", "instrument_httpx", "uninstrument_httpx"]
