"""Outgoing ``requests`` calls carry the current hop, and report how they went.

:func:`instrument_requests` patches ``requests.Session.send`` (every ``requests`` call goes
through it). While a hop is bound, each call:

- carries the hop's headers (:func:`correlation.wire.headers`), a header the caller set winning;
- is timed per peer: the service name the peer answers in ``X-Service-Name``, else its
  ``host:port`` (never a URL: a metric label must stay bounded);
- when it fails (5xx, no answer, timeout), is noted on the hop, so that the hop's own 5xx is
  reported as a downstream failure rather than its own (``origin`` in the access line and the
  error metric).
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests

from correlation import context, ids, metrics, schema, wire

#: Distinct peer names kept as metric label values; past that, a peer is counted as ``other``:
#: ``X-Service-Name`` is the peer's to choose, and a label must stay bounded.
MAX_PEERS = 64

_original_send: Any = None
_header = schema.CORRELATION_HEADER
_peers: set[str] = set()
_peers_lock = threading.Lock()


def outgoing_headers(hop: context.Hop | None = None, *, header: str | None = None) -> dict[str, str]:
    """The headers that hand ``hop`` (default: the current one) to a downstream service.

    Use it with HTTP clients other than ``requests``; empty when no hop is bound.
    """
    hop = hop or context.current()
    return wire.headers(hop, context.service(), header or _header) if hop is not None else {}


def peer_name(answered: str | None, url: str) -> str:
    """The metric label for a peer: its ``X-Service-Name`` when valid, else host:port; bounded."""
    name = answered if answered and ids.is_valid_id(answered) else (urlsplit(url).netloc or "unknown")
    if name in _peers:
        return name
    with _peers_lock:
        if len(_peers) >= MAX_PEERS:
            return "other"
        _peers.add(name)
    return name


def _send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    hop = context.current()
    if hop is not None:
        for name, value in wire.headers(hop, context.service(), _header).items():
            request.headers.setdefault(name, value)
    url = request.url or ""
    method = request.method or "GET"
    started = time.perf_counter()
    try:
        response = _original_send(session, request, **kwargs)
    except Exception as exc:
        peer = peer_name(None, url)
        outcome = "timeout" if isinstance(exc, requests.Timeout) else "error"
        metrics.observe_outgoing(context.service(), peer, method, outcome, time.perf_counter() - started)
        if hop is not None:
            hop.failed_calls.append(peer)
        raise
    peer = peer_name(response.headers.get(schema.SERVICE_HEADER), url)
    metrics.observe_outgoing(context.service(), peer, method, str(response.status_code), time.perf_counter() - started)
    if hop is not None and response.status_code >= 500:
        hop.failed_calls.append(peer)
    return response


def instrument_requests(header: str = schema.CORRELATION_HEADER) -> None:
    """Patch ``requests.Session.send``. Idempotent; ``header`` is the correlation header sent."""
    global _original_send, _header
    _header = header
    if _original_send is None:
        _original_send = requests.Session.send
        setattr(requests.Session, "send", _send)


def uninstrument_requests() -> None:
    """Undo :func:`instrument_requests`."""
    global _original_send
    if _original_send is not None:
        setattr(requests.Session, "send", _original_send)
        _original_send = None
