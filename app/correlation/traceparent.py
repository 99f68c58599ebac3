"""W3C Trace Context ``traceparent``: parse what callers send, build what we send on.

Grammar (version 00): ``00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>``, lowercase,
neither id all zeros. We only ever emit version 00 and only from IDs that fit, so a
``traceparent`` we send always parses; an unknown higher version is read for its first fields,
as the spec asks.

Of the flags only the sampled bit (``01``) is read and sent: version 00 defines no other, and says
to send the rest as zero, so ``09`` comes in as sampled and goes out as ``01``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_new_tuple = tuple.__new__


class TraceParent(NamedTuple):
    """A parsed ``traceparent``: the trace, the caller's span in it, and the caller's sampled flag."""

    trace_id: str
    parent_id: str
    sampled: bool


def parse(header: str | None) -> TraceParent | None:
    """The fields of a ``traceparent`` header, or None if it is absent or malformed."""
    if not header or len(header) > 512:
        return None
    match = _TRACEPARENT.fullmatch(header.strip())
    if not match:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    # A bit field: masked, never compared (``09`` is sampled).
    return _new_tuple(TraceParent, (trace_id, parent_id, int(flags, 16) & 1 == 1))


def build(trace_id: str, parent_id: str, sampled: bool = True) -> str | None:
    """A version-00 ``traceparent``, or None when the IDs do not have the W3C shape.

    ``sampled`` is the flag sent on: the one the trace came with, or True for a trail that starts
    here (see :mod:`correlation.wire`).
    """
    if not _TRACE_ID.fullmatch(trace_id) or trace_id == _ZERO_TRACE:
        return None
    if not _SPAN_ID.fullmatch(parent_id) or parent_id == _ZERO_SPAN:
        return None
    return f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"
