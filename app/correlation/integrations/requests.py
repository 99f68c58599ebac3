"""Outgoing ``requests`` calls carry the current hop, and report how they went.

:func:`instrument_requests` patches ``requests.Session.send`` (every ``requests`` call goes
through it). While a hop is bound, each call carries the hop's headers
(:func:`correlation.wire.headers_to_add`), a header the caller set winning (a ``traceparent`` of
its own also keeps the hop's ``tracestate`` off), and is timed and noted as
:mod:`correlation.outgoing` says.
"""

from __future__ import annotations

from typing import Any

import requests

from correlation import context, outgoing, schema, wire

_original_send: Any = None


def _send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    hop, started = outgoing.call_started()
    if hop is not None:
        request_headers = request.headers
        header = outgoing.current_header()
        for name, value in wire.headers_to_add(hop, context.service(), header, request_headers.__contains__):
            request_headers[name] = value
    url, method = request.url or "", request.method or "GET"
    try:
        response = _original_send(session, request, **kwargs)
    except Exception as exc:
        outgoing.call_ended(hop, started, url, method, None, timed_out=isinstance(exc, requests.Timeout))
        raise
    outgoing.call_ended(hop, started, url, method, response.status_code, response.headers.get(schema.SERVICE_HEADER))
    return response


def instrument_requests(header: str = schema.CORRELATION_HEADER) -> None:
    """Patch ``requests.Session.send``. Idempotent; ``header`` is the correlation header sent."""
    global _original_send
    outgoing.use_header(header)
    if _original_send is None:
        _original_send = requests.Session.send
        setattr(requests.Session, "send", _send)


def uninstrument_requests() -> None:
    """Undo :func:`instrument_requests`."""
    global _original_send
    if _original_send is not None:
        setattr(requests.Session, "send", _original_send)
        _original_send = None
