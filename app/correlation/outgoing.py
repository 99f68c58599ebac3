"""Outgoing calls, whatever the HTTP client: the headers that hand the hop on, the peer's name,
and how each call went.

The client integrations (:mod:`correlation.integrations.requests`, :mod:`correlation.integrations.httpx`)
call :func:`call_started` and :func:`call_ended` around every call made while a hop is bound. Each call:

- is timed per peer: the service name the peer answers in ``X-Service-Name``, else its
  ``host:port`` (never a URL: a metric label must stay bounded);
- when it fails (5xx, no answer, timeout), is noted on the hop, so that the hop's own 5xx is
  reported as a downstream failure rather than its own (``origin`` in the access line and the
  error metric).
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

from correlation import context, ids, metrics, schema, wire

#: Distinct peer names kept as metric label values; past that, a peer is counted as ``other``:
#: ``X-Service-Name`` is the peer's to choose, and a label must stay bounded.
MAX_PEERS = 64

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
    """The correlation header outgoing calls carry (:func:`use_header`)."""
    return _header


def use_header(header: str) -> None:
    """Make outgoing calls carry the correlation ID in ``header`` (the service's ``CORRELATION_HEADER``)."""
    global _header
    _header = header
