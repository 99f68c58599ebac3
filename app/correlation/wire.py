"""The wire: what a hop reads from the message that started it, and what it writes on the
messages it sends. Pure functions, no state: the Flask edge, the ``requests`` patch and the
Celery integration are thin adapters around :func:`read` and :func:`headers`.

Inbound, in order of preference:

- the correlation ID from the configured header (``X-Correlation-ID``), else ``X-Request-ID``,
  else the trace-id of a W3C ``traceparent``;
- the parent hop from ``X-Parent-Request-ID``, else the ``traceparent`` parent-id;
- the caller's service name from ``X-Caller-Service`` (shown in the access line, never trusted
  for anything else).

A value that is not 1-64 characters of ``[A-Za-z0-9._-]`` (or a malformed ``traceparent``) is a
:class:`Rejection`: the hop still starts, with a fresh ID, and the adapter logs (escaped) and
counts it. Outbound: the correlation ID, this hop's request ID as the callee's parent, this
service's name, and a ``traceparent`` when the ID has the trace-id shape (ours do), so an
OpenTelemetry-instrumented neighbour joins the same trail.

W3C Trace Context beyond the IDs: when the hop continues the trace of the ``traceparent`` it was
sent (the correlation ID is that trace-id, whichever header it came from), it keeps that
``traceparent``'s sampled flag and the ``tracestate`` beside it (:mod:`correlation.tracestate`),
and sends both on with every call and task it makes, so a neighbour's parent-based sampler decides
as the trace's first service did. A trail that starts here (or whose ID came without a matching
``traceparent``) is sent as sampled (``01``): every hop of it is logged. From an untrusted sender
nothing is kept, flags and ``tracestate`` included. docs/w3c-trace-context.md has the details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from correlation import ids, schema, traceparent, tracestate
from correlation.context import Hop

#: Reads one header by its name (case-insensitively), None when absent.
HeaderGetter = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """An inbound value refused: which header, why (a metric label), the raw value."""

    header: str
    reason: str
    value: str


class Inbound(NamedTuple):
    """What a message said about its place in the trail: the new hop, the caller, what was refused."""

    hop: Hop
    caller: str | None
    rejections: tuple[Rejection, ...]
    #: From an untrusted sender: the valid ID it sent, kept for search but not followed.
    client_correlation_id: str | None = None


def read(get: HeaderGetter, header: str = schema.CORRELATION_HEADER, *, trusted: bool = True) -> Inbound:
    """Start the hop a message asks for; every refused value is reported, never raised.

    From an untrusted sender (see :mod:`correlation.trust`) nothing is followed: the hop starts a
    fresh trail, and a valid ID it sent is only kept as ``client_correlation_id``.
    """
    correlation_id, rejections = _sent_id(get, header)
    if not trusted:
        return Inbound(Hop.start(), None, tuple(rejections), correlation_id)
    parent = get(schema.PARENT_HEADER)
    if parent is not None and not ids.is_valid_id(parent):
        rejections.append(Rejection(schema.PARENT_HEADER, ids.rejection_reason(parent) or "bad_characters", parent))
        parent = None
    sampled, state = True, None  # a trail that starts here: see the module's docstring
    raw_tp = get(schema.TRACEPARENT_HEADER)
    if raw_tp is not None:
        tp = traceparent.parse(raw_tp)
        if tp is None:
            rejections.append(Rejection(schema.TRACEPARENT_HEADER, "bad_traceparent", raw_tp))
        else:
            # traceparent's IDs only fill a gap, and only when nothing was refused: a refused ID
            # with a valid traceparent beside it must not be smuggled in under the trace-id.
            if not rejections and (correlation_id is None or correlation_id == tp.trace_id):
                correlation_id = tp.trace_id
                parent = parent or tp.parent_id
            # Its flags and tracestate are that trace's: kept only when the hop continues it.
            if correlation_id == tp.trace_id:
                sampled = tp.sampled
                state = _tracestate(get, rejections)
    caller = get(schema.CALLER_HEADER)
    if caller is not None and not ids.is_valid_id(caller):
        caller = None  # shown only, never trusted: a bad one is simply not shown
    return Inbound(Hop.start(correlation_id, parent, sampled, state), caller, tuple(rejections))


def _tracestate(get: HeaderGetter, rejections: list[Rejection]) -> str | None:
    """The ``tracestate`` to pass on; a list dropped or cut is reported (:mod:`correlation.tracestate`)."""
    raw = get(schema.TRACESTATE_HEADER)
    if raw is None:
        return None
    state = tracestate.read(raw)
    if state.reason is not None:
        rejections.append(Rejection(schema.TRACESTATE_HEADER, state.reason, raw))
    return state.value


def _sent_id(get: HeaderGetter, header: str) -> tuple[str | None, list[Rejection]]:
    """The correlation ID the sender gave (the first ID header present), or why it was refused."""
    for name in _id_headers(header):
        value = get(name)
        if value is None:
            continue
        reason = ids.rejection_reason(value)
        return (None, [Rejection(name, reason, value)]) if reason else (value, [])
    return None, []


def from_environ(
    environ: Mapping[str, Any], header: str = schema.CORRELATION_HEADER, *, trusted: bool = True
) -> Inbound:
    """:func:`read` over a WSGI environ (``X-Correlation-ID`` is ``HTTP_X_CORRELATION_ID`` there)."""
    if environ.keys().isdisjoint(environ_keys_read(header)):
        # Nothing on the wire (a client's first call, a health check): what read() says then.
        return Inbound(Hop.start(), None, ())
    return read(lambda name: environ.get(environ_key(name)), header, trusted=trusted)


def from_headers(
    headers: Mapping[str, str], header: str = schema.CORRELATION_HEADER, *, trusted: bool = True
) -> Inbound:
    """:func:`read` over a plain mapping of header names, matched case-insensitively."""
    lowered = {str(k).lower(): v for k, v in headers.items()}

    def get(name: str) -> str | None:
        value = lowered.get(name.lower())
        return value if value is None or isinstance(value, str) else str(value)

    return read(get, header, trusted=trusted)


def headers(hop: Hop, service: str, header: str = schema.CORRELATION_HEADER) -> dict[str, str]:
    """The headers that hand ``hop`` on to the next service (or task)."""
    out = {header: hop.correlation_id, schema.PARENT_HEADER: hop.request_id, schema.CALLER_HEADER: service}
    tp = traceparent.build(hop.correlation_id, hop.request_id, hop.sampled)
    if tp:
        out[schema.TRACEPARENT_HEADER] = tp
        if hop.tracestate:  # only beside a traceparent of its trace-id: it belongs to that trace
            out[schema.TRACESTATE_HEADER] = hop.tracestate
    return out


def headers_to_add(hop: Hop, service: str, header: str, already_set: Callable[[str], bool]) -> list[tuple[str, str]]:
    """:func:`headers` for a message the caller has started: a header it set itself wins, and a
    ``traceparent`` of its own keeps our ``tracestate`` off (another trace's, perhaps)."""
    out = headers(hop, service, header)
    if already_set(schema.TRACEPARENT_HEADER):
        out.pop(schema.TRACESTATE_HEADER, None)
    return [(name, value) for name, value in out.items() if not already_set(name)]


@lru_cache(maxsize=64)
def environ_key(header: str) -> str:
    """The WSGI environ key of an HTTP header."""
    return "HTTP_" + header.upper().replace("-", "_")


@lru_cache(maxsize=16)
def environ_keys_read(header: str) -> tuple[str, ...]:
    """The environ keys of every header :func:`read` looks at (``tracestate`` aside: it is read
    only beside a ``traceparent``)."""
    names = (*_id_headers(header), schema.PARENT_HEADER, schema.TRACEPARENT_HEADER, schema.CALLER_HEADER)
    return tuple(environ_key(name) for name in names)


@lru_cache(maxsize=16)
def names_read(header: str) -> tuple[str, ...]:
    """Every header :func:`read` may look at, lower-cased (as ASGI servers hand them over)."""
    names = (*_id_headers(header), schema.PARENT_HEADER, schema.TRACEPARENT_HEADER, schema.TRACESTATE_HEADER)
    return tuple(dict.fromkeys(name.lower() for name in (*names, schema.CALLER_HEADER)))


@lru_cache(maxsize=16)
def _id_headers(header: str) -> tuple[str, ...]:
    """Where the correlation ID may come from, best first (no duplicate when they are the same)."""
    return tuple(dict.fromkeys((header, schema.REQUEST_ID_HEADER)))
