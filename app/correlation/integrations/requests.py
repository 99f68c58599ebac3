"""Outgoing ``requests`` calls carry the current hop, and report how they went.

:func:`instrument_requests` patches ``requests.Session.send`` (every ``requests`` call goes
through it). While a hop is bound, each call:

- carries the hop's headers (:func:`correlation.wire.headers_to_add`), a header the caller set
  winning (a ``traceparent`` of its own also keeps the hop's ``tracestate`` off);
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
#: host:port -> the service name it last answered with (at most MAX_PEERS addresses).
_names_by_address: dict[str, str] = {}
_peers_lock = threading.Lock()


def outgoing_headers(hop: context.Hop | None = None, *, header: str | None = None) -> dict[str, str]:
    """The headers that hand ``hop`` (default: the current one) to a downstream service.

    Use it with HTTP clients other than ``requests``; empty when no hop is bound.
    """
    hop = hop or context.current()
    return wire.headers(hop, context.service(), header or _header) if hop is not None else {}


def peer_name(answered: str | None, url: str) -> str:
    """The metric label for a peer: its ``X-Service-Name`` when valid, else the name that
    host:port last answered with (a peer that stopped answering is still named as the service it
    is, so its callers' alerts can be matched with its own), else host:port; bounded."""
    address = urlsplit(url).netloc or "unknown"
    if answered and ids.is_valid_id(answered):
        name = answered
        if _names_by_address.get(address) != name and len(_names_by_address) < MAX_PEERS:
            _names_by_address[address] = name
    else:
        name = _names_by_address.get(address, address)
    if name in _peers:
        return name
    with _peers_lock:
        if len(_peers) >= MAX_PEERS:
            return "other"
        _peers.add(name)
    return name


def call_started() -> tuple[context.Hop | None, float]:
    """Before an outgoing call: the hop it is made for, and the start time."""
    return context.current(), time.perf_counter()


def call_ended(
    hop: context.Hop | None,
    started: float,
    url: str,
    method: str,
    status: int | None,
    answered_as: str | None = None,
    *,
    timed_out: bool = False,
) -> None:
    """After an outgoing call (``status`` None: no answer): time it per peer, note a failure."""
    peer = peer_name(answered_as, url)
    outcome = str(status) if status is not None else ("timeout" if timed_out else "error")
    metrics.observe_outgoing(context.service(), peer, method, outcome, time.perf_counter() - started)
    if hop is not None and (status is None or status >= 500):
        hop.failed_calls.append(peer)


def current_header() -> str:
    """The correlation header outgoing calls carry (set by :func:`instrument_requests`)."""
    return _header


def _send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    hop, started = call_started()
    if hop is not None:
        request_headers = request.headers
        for name, value in wire.headers_to_add(hop, context.service(), _header, request_headers.__contains__):
            request_headers[name] = value
    url, method = request.url or "", request.method or "GET"
    try:
        response = _original_send(session, request, **kwargs)
    except Exception as exc:
        call_ended(hop, started, url, method, None, timed_out=isinstance(exc, requests.Timeout))
        raise
    call_ended(hop, started, url, method, response.status_code, response.headers.get(schema.SERVICE_HEADER))
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
