"""Which time window to search for a request: the policy every lookup shares.

Why the window matters: Loki indexes neither structured metadata nor line text, so finding an ID
scans every line in the window and the cost grows with it (docs/loki-facts.md). The IDs we generate
carry their own millisecond time (UUIDv7, ``correlation.ids``): a lookup first searches a narrow
window around that time (:func:`id_window`), and widens once (:func:`widened_window`) only when the
trail found there looks incomplete. Foreign IDs carry no time: they are searched over the last hour
unless the caller gives a window (:func:`explicit_window`, e.g. ``--since`` or a page's
``?from=&to=``, read with :func:`parse_duration` and :func:`parse_time`).

Bad input raises ValueError, never argparse's errors: the page and the notifier have no command line.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from correlation.ids import time_ms_of
from trail.render import format_time

NS = 1_000_000_000
#: The window searched when nothing better is known: the last hour.
DEFAULT_SINCE_SECONDS = 3600.0
#: The longest a request may take: bounds the narrow window after an ID's own time.
DEFAULT_MAX_REQUEST_SECONDS = 30.0
#: Slack around an ID's own time for clock skew between hosts and shipping delay of timestamps.
MARGIN_SECONDS = 5.0
#: The one wider look when the narrow window gave an incomplete trail: +- this around the ID time.
WIDE_SECONDS = 15 * 60.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Window:
    """A query window ``[start_ns, end_ns)`` as Loki reads it; never empty."""

    start_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        if self.start_ns >= self.end_ns:
            raise ValueError(f"empty window: {format_time(self.start_ns)} is not before {format_time(self.end_ns)}")

    @classmethod
    def last(cls, seconds: float = DEFAULT_SINCE_SECONDS, now_ns: int | None = None) -> Window:
        """The last ``seconds`` up to ``now_ns`` (default: now)."""
        end = time.time_ns() if now_ns is None else now_ns
        return cls(end - int(seconds * NS), end)

    def __str__(self) -> str:
        return f"{format_time(self.start_ns)} .. {format_time(self.end_ns)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "start": format_time(self.start_ns),
            "end": format_time(self.end_ns),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
        }


def explicit_window(
    *,
    since_seconds: float | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    now_ns: int | None = None,
) -> Window | None:
    """The window a user asked for (``--since``/``--from``/``--to``, or a page's ``?from=&to=``);
    None when nothing was asked, so the ID's own time decides. ``to`` defaults to now, ``from`` to
    ``since`` (default one hour) before ``to``."""
    if since_seconds is not None and from_ns is not None:
        raise ValueError("a look-back (since) and a start (from) exclude each other")
    if since_seconds is None and from_ns is None and to_ns is None:
        return None
    end = to_ns if to_ns is not None else (time.time_ns() if now_ns is None else now_ns)
    start = (
        from_ns
        if from_ns is not None
        else end - int((DEFAULT_SINCE_SECONDS if since_seconds is None else since_seconds) * NS)
    )
    return Window(start, end)


def id_window(correlation_id: str, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> Window | None:
    """The narrow first window for one of our IDs: from MARGIN_SECONDS before its own time to the
    longest request plus the margin after it. None for an ID that carries no time."""
    id_ms = time_ms_of(correlation_id)
    if id_ms is None:
        return None
    id_ns = id_ms * 1_000_000
    return Window(id_ns - int(MARGIN_SECONDS * NS), id_ns + int((max_request_seconds + MARGIN_SECONDS) * NS))


def widened_window(correlation_id: str, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> Window | None:
    """The one wider look: +- WIDE_SECONDS (or the longest request, if longer) around the ID's time."""
    id_ms = time_ms_of(correlation_id)
    if id_ms is None:
        return None
    reach = int(max(WIDE_SECONDS, max_request_seconds + MARGIN_SECONDS) * NS)
    return Window(id_ms * 1_000_000 - reach, id_ms * 1_000_000 + reach)


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``500ms``; ValueError otherwise."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def parse_time(text: str) -> int:
    """Unix ns of RFC 3339 (no offset means UTC) or a Unix number: seconds, or ms/us/ns told apart
    by size (a Grafana URL carries ms). ValueError otherwise."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither RFC 3339 nor a Unix time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return _unix_ns(text, int(moment.timestamp()) * NS + moment.microsecond * 1000)
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a time")
    for limit, scale in ((1e11, NS), (1e14, 1_000_000), (1e17, 1000)):
        if number < limit:
            return _unix_ns(text, int(number * scale))
    return _unix_ns(text, int(number))


def _unix_ns(text: str, ns: int) -> int:
    """``ns`` when Loki can take it (a non-negative int64)."""
    if ns < 0:
        raise ValueError(f"{text!r} is before 1970")
    if ns >= 2**63:
        raise ValueError(f"{text!r} is too far in the future")
    return ns
