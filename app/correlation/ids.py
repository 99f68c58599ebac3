"""Correlation and request IDs: generate, validate, read the time back.

A correlation ID we generate is a UUIDv7 (RFC 9562) written as 32 lowercase hex digits:

    tttttttttttt 7rrr Vrrrrrrrrrrrrrrr
    |            |    `- variant bits 10, then 62 random bits
    |            `- version 7, then 12 random bits
    `- 48-bit Unix time in milliseconds

Why this layout and not an invented one:
- the time comes first, so the trail CLI and Grafana links can query Loki over a window of
  minutes around the request instead of hours (Loki scans every line in the window);
- 74 random bits make collisions negligible even at 100k IDs per second;
- 32 hex digits are a valid W3C trace-id, so the same ID can ride in ``traceparent`` and line up
  with any OpenTelemetry-instrumented neighbour;
- it is short, URL-safe, a plain LogQL string literal, and fits Prometheus' 128-character
  exemplar limit with room to spare.

A hop's request ID is 16 hex digits (64 random bits): the shape of a W3C span-id.
"""

from __future__ import annotations

import os
import random
import re
import time
import zlib
from datetime import UTC, datetime

#: Inbound IDs must match this: at most 64 characters of letters, digits, ``.``, ``_``, ``-``.
MAX_ID_LENGTH = 64
_VALID_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID_LENGTH}}}")
_OUR_CORRELATION_ID = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")

# IDs whose embedded time falls outside this range are treated as foreign: a time before the
# layout existed here, or further ahead than clock skew between hosts explains, is not a time.
_EARLIEST_PLAUSIBLE_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z
_MAX_CLOCK_SKEW_MS = 10 * 60 * 1000


# IDs name requests, they guard nothing: a generator seeded from the OS is enough. Our own instance (user code may seed
# the global one for its tests) reseeded in every forked child, or gunicorn workers forked from
# one master would draw the same IDs.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_correlation_id(now_ms: int | None = None) -> str:
    """Return a fresh correlation ID: a UUIDv7 as 32 lowercase hex digits."""
    return new_ids(now_ms)[0]


def new_request_id() -> str:
    """Return a fresh hop request ID: 16 lowercase hex digits, never all zeros (a W3C span-id)."""
    return (_random.getrandbits(64) or 1).to_bytes(8).hex()


def new_ids(now_ms: int | None = None) -> tuple[str, str]:
    """A fresh correlation ID and request ID (a new trail's first hop), from one draw of random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = _random.getrandbits(144)  # 80 bits for the correlation ID (74 of them kept), 64 for the request ID
    # The UUID as one 128-bit int (time, then the 80 random bits with the version's and the
    # variant's bits put over 6 of them), written as hex through its bytes: every fresh request
    # runs this, and a format spec per field (f"{ms:012x}...") costs twice as much.
    correlation_id = ((ms & _MS_MASK) << 80 | rand >> 64 & _RANDOM_BITS | _VERSION_AND_VARIANT).to_bytes(16).hex()
    return correlation_id, (rand & _U64_MASK or 1).to_bytes(8).hex()


_MS_MASK = (1 << 48) - 1
#: The low 80 bits of a UUIDv7: version (bits 76-79: 7), rand_a (12 bits), variant (bits 62-63:
#: 0b10), rand_b (62 bits).
_VERSION_AND_VARIANT = 0x7 << 76 | 0b10 << 62
_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0b11 << 62)
_U64_MASK = (1 << 64) - 1


def is_valid_id(value: str) -> bool:
    """True if an inbound ID is acceptable: 1-64 characters from ``[A-Za-z0-9._-]``."""
    return _VALID_ID.fullmatch(value) is not None


def rejection_reason(value: str) -> str | None:
    """Why an inbound ID is refused (a metric label), or None if it is acceptable."""
    if not value:
        return "empty"
    if len(value) > MAX_ID_LENGTH:
        return "too_long"
    if not is_valid_id(value):
        return "bad_characters"
    return None


def time_of(correlation_id: str) -> datetime | None:
    """The creation time of a correlation ID, or None when it cannot be known.

    Only IDs in our UUIDv7 layout whose time is plausible (after 2020, not more than ten minutes
    ahead of this host's clock) have a time; foreign and hostile strings answer None, never a
    guess.
    """
    ms = time_ms_of(correlation_id)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def time_ms_of(correlation_id: str) -> int | None:
    """Like :func:`time_of`, in Unix milliseconds."""
    if not isinstance(correlation_id, str) or not _OUR_CORRELATION_ID.fullmatch(correlation_id):
        return None
    ms = int(correlation_id[:12], 16)
    if ms < _EARLIEST_PLAUSIBLE_MS or ms > time.time() * 1000 + _MAX_CLOCK_SKEW_MS:
        return None
    return ms


#: The values of a line's shard (:func:`shard_of`): one hex digit, 16 in all.
SHARD_VALUES = "0123456789abcdef"
_HEX_ID = re.compile(r"[0-9a-f]{32}")


def shard_of(correlation_id: str) -> str:
    """The shard of a correlation ID: one of 16 values (:data:`SHARD_VALUES`), the stream label
    that lets a lookup read 1/16 of the streams (docs/loki-facts.md).

    An ID of 32 lowercase hex digits (ours, a UUIDv7, or a W3C trace-id) ends in a random digit:
    that digit. Any other ID: its CRC-32, modulo 16, so a foreign ID has one shard too, the same
    for the shipper and every reader. Sixteen values are not the ID: the label stays bounded.
    """
    if len(correlation_id) == 32 and _HEX_ID.fullmatch(correlation_id):
        return correlation_id[31]
    return SHARD_VALUES[zlib.crc32(correlation_id.encode()) & 15]


def printable(value: str, limit: int = 80) -> str:
    """A safe rendering of an untrusted value for a log message: escaped and truncated."""
    shown = value[:limit].encode("unicode_escape", "backslashreplace").decode("ascii")
    return shown + (f"...(+{len(value) - limit} chars)" if len(value) > limit else "")
