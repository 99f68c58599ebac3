"""W3C Trace Context ``tracestate``: the tracing systems' own entries, passed on as they came.

The list belongs to the ``traceparent`` beside it (its trace-id): :mod:`correlation.wire` reads it
only when that ``traceparent`` parsed and the hop continues its trace, and sends it only beside a
``traceparent`` of the same trace-id. We add no entry of our own (we are no tracing system), so
what we send is what we got, with two exceptions, each reported as a rejection reason:

- ``bad_tracestate``: a member that is not ``key=value`` in the spec's grammar, a key given twice,
  more than 32 members: the whole list is dropped (the trace goes on without it);
- ``tracestate_truncated``: longer than :data:`MAX_LENGTH` (512, the least the spec asks every
  vendor to pass on, and all that a caller can make each hop repeat on every call): whole members
  are dropped, those over 128 characters first, then from the right, as the spec orders.

Spaces and tabs around members and empty members are allowed; an empty list is no list.
docs/w3c-trace-context.md has the spec's rules and where they are written.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: The most characters passed on (commas included); longer lists are cut by whole members.
MAX_LENGTH = 512
#: The most members a list may have.
MAX_MEMBERS = 32
#: Members longer than this are the first dropped when cutting.
LONG_MEMBER = 128
BAD = "bad_tracestate"
TRUNCATED = "tracestate_truncated"

# key: a simple key (a vendor) or tenant@vendor; value: printable ASCII but ',' and '=', not ending
# in a space (https://www.w3.org/TR/trace-context-1/#tracestate-header-field-values).
_KEY = r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=(?:{_VALUE})")
# No list of 32 members in the grammar is longer (with generous whitespace): longer is refused
# before any member is looked at.
_MAX_RAW_LENGTH = 32 * 1024


class TraceState(NamedTuple):
    """What to pass on (None: nothing), and why anything was dropped (None: nothing was)."""

    value: str | None
    reason: str | None


_NONE = TraceState(None, None)


def read(header: str | None) -> TraceState:
    """The list to pass on from an inbound ``tracestate`` (several fields already joined by ``,``)."""
    if not header:
        return _NONE
    if len(header) > _MAX_RAW_LENGTH:
        return TraceState(None, BAD)
    members = [m for m in (part.strip(" \t") for part in header.split(",")) if m]
    if not members:
        return _NONE
    if len(members) > MAX_MEMBERS:
        return TraceState(None, BAD)
    keys = set()
    for member in members:
        match = _MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return TraceState(None, BAD)
        keys.add(match.group(1))
    value = header.strip(" \t")
    if len(value) <= MAX_LENGTH:
        return TraceState(value, None)
    return TraceState(_cut(members) or None, TRUNCATED)


def _cut(members: list[str]) -> str:
    """Whole members kept, in order, within :data:`MAX_LENGTH`: long ones go first, then the rightmost."""
    kept = [m for m in members if len(m) <= LONG_MEMBER]
    while kept and len(",".join(kept)) > MAX_LENGTH:
        kept.pop()
    return ",".join(kept)
