"""Outgoing ``httpx`` calls carry the current hop, as ``requests`` calls do
(:mod:`correlation.integrations.requests`): same headers, same per-peer timing, same failure notes
(:mod:`correlation.outgoing`).

Optional (``pip install 'correlation-trail[httpx]'``); :class:`correlation.Correlation` installs
it when httpx is importable. It patches the transports every ``httpx.Client`` and
``httpx.AsyncClient`` use by default (``HTTPTransport.handle_request`` and
``AsyncHTTPTransport.handle_async_request``), so clients built anywhere, before or after, are
covered; a client with a transport of its own can wrap it in :class:`CorrelationTransport`.
The hop lives in a ContextVar, so each asyncio task sends its own.
"""

from __future__ import annotations

from typing import Any

import httpx

from correlation import context, outgoing, schema, wire

_originals: dict[str, Any] = {}


def _add_headers(request: httpx.Request, hop: context.Hop | None) -> None:
    if hop is not None:
        request_headers = request.headers  # a header the caller set wins (wire.headers_to_add)
        for name, value in wire.headers_to_add(
            hop, context.service(), outgoing.current_header(), request_headers.__contains__
        ):
            request_headers[name] = value


def _ended(
    hop: context.Hop | None,
    started: float,
    request: httpx.Request,
    response: httpx.Response | None,
    error: Exception | None = None,
) -> None:
    url, method = str(request.url), request.method
    if response is None:
        outgoing.call_ended(hop, started, url, method, None, timed_out=isinstance(error, httpx.TimeoutException))
    else:
        outgoing.call_ended(
            hop, started, url, method, response.status_code, response.headers.get(schema.SERVICE_HEADER)
        )


def _handle_request(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
    hop, started = outgoing.call_started()
    _add_headers(request, hop)
    try:
        response: httpx.Response = _originals["sync"](transport, request)
    except Exception as exc:
        _ended(hop, started, request, None, exc)
        raise
    _ended(hop, started, request, response)
    return response


async def _handle_async_request(transport: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
    hop, started = outgoing.call_started()
    _add_headers(request, hop)
    try:
        response: httpx.Response = await _originals["async"](transport, request)
    except Exception as exc:
        _ended(hop, started, request, None, exc)
        raise
    _ended(hop, started, request, response)
    return response


class CorrelationTransport(httpx.BaseTransport):
    """Wrap a transport of your own: ``httpx.Client(transport=CorrelationTransport(mine))``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        hop, started = outgoing.call_started()
        _add_headers(request, hop)
        try:
            response = self.inner.handle_request(request)
        except Exception as exc:
            _ended(hop, started, request, None, exc)
            raise
        _ended(hop, started, request, response)
        return response

    def close(self) -> None:
        self.inner.close()


def instrument_httpx() -> None:
    """Patch httpx's default transports. Idempotent."""
    if not _originals:
        _originals["sync"] = httpx.HTTPTransport.handle_request
        _originals["async"] = httpx.AsyncHTTPTransport.handle_async_request
        setattr(httpx.HTTPTransport, "handle_request", _handle_request)
        setattr(httpx.AsyncHTTPTransport, "handle_async_request", _handle_async_request)


def uninstrument_httpx() -> None:
    """Undo :func:`instrument_httpx`."""
    if _originals:
        setattr(httpx.HTTPTransport, "handle_request", _originals.pop("sync"))
        setattr(httpx.AsyncHTTPTransport, "handle_async_request", _originals.pop("async"))
