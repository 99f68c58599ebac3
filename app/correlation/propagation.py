"""Carry the current hop to the services this one calls.

The wire format, read back by the edge (:mod:`correlation.flask`) of the next service:

- ``X-Correlation-ID`` (name configurable): the request's correlation ID;
- ``X-Parent-Request-ID``: this hop's request ID, the callee's parent;
- ``X-Caller-Service``: this service's name, for the callee's access line;
- ``traceparent``: W3C Trace Context with trace-id = correlation ID and parent-id = this hop's
  request ID, sent only when the correlation ID has the trace-id shape (our generated IDs do),
  so OpenTelemetry-instrumented neighbours join the same trail.

:func:`instrument_requests` makes every ``requests`` call carry these headers while a hop is
bound, without the caller passing them, and times each call per downstream host.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import requests

from correlation import context, metrics, traceparent
from correlation.config import DEFAULT_HEADER

PARENT_HEADER = "X-Parent-Request-ID"
CALLER_HEADER = "X-Caller-Service"
TRACEPARENT_HEADER = "traceparent"

_original_send: Any = None
_service = "app"
_header = DEFAULT_HEADER


def outgoing_headers(hop: context.Hop | None = None, *, service: str | None = None, header: str | None = None) -> dict[str, str]:
    """The headers that hand ``hop`` (default: the current one) to a downstream service.

    Use it with HTTP clients other than ``requests``; empty when no hop is bound.
    """
    hop = hop or context.current()
    if hop is None:
        return {}
    headers = {
        header or _header: hop.correlation_id,
        PARENT_HEADER: hop.request_id,
        CALLER_HEADER: service or _service,
    }
    tp = traceparent.build(hop.correlation_id, hop.request_id)
    if tp:
        headers[TRACEPARENT_HEADER] = tp
    return headers


def _send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    for name, value in outgoing_headers().items():
        request.headers.setdefault(name, value)  # a header the caller set wins
    downstream = urlsplit(request.url or "").netloc or "unknown"
    method = request.method or "GET"
    started = time.perf_counter()
    try:
        response = _original_send(session, request, **kwargs)
    except Exception:
        metrics.observe_outgoing(_service, downstream, method, "error", time.perf_counter() - started)
        raise
    metrics.observe_outgoing(_service, downstream, method, str(response.status_code), time.perf_counter() - started)
    return response


def instrument_requests(service: str, header: str = DEFAULT_HEADER) -> None:
    """Patch ``requests.Session.send`` (all ``requests`` calls go through it). Idempotent."""
    global _original_send, _service, _header
    _service, _header = service, header
    if _original_send is None:
        _original_send = requests.Session.send
        setattr(requests.Session, "send", _send)


def uninstrument_requests() -> None:
    """Undo :func:`instrument_requests`."""
    global _original_send
    if _original_send is not None:
        setattr(requests.Session, "send", _original_send)
        _original_send = None
