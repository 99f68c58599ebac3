"""Which time window to search for a request: the policy every lookup shares.

Why the window matters: Loki indexes neither structured metadata nor line text, so finding an ID
scans every line in the window and the cost grows with it (docs/loki-facts.md). The IDs we generate
carry their own millisecond time (UUIDv7, ``correlation.ids``): a lookup first searches the ID's
own seconds (:func:`first_window`, a few seconds: most requests end within them), then the rest of
a narrow window around that time (:func:`id_window`, the longest request) only when the trail found
looks incomplete, and widens once (:func:`widened_window`) only when it still does. Foreign IDs
carry no time: they are searched over the last hour unless the caller gives a window
(:func:`explicit_window`, e.g. ``--since`` or a page's ``?from=&to=``, read with
:func:`parse_duration` and :func:`parse_time`). A window the caller gives is at most
``TRAIL_MAX_WINDOW`` long (default 24 h): a longer one would hold a page's thread, and Loki, for
seconds per look-up (:class:`WindowTooLong`).

Bad input raises ValueError, never argparse's errors: the page and the notifier have no command line.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from correlation.ids import time_ms_of
from correlation.settings import ConfigError
from trail.text import format_time

NS = 1_000_000_000
#: The window searched when nothing better is known: the last hour.
DEFAULT_SINCE_SECONDS = 3600.0
#: The longest a request may take: bounds the narrow window after an ID's own time.
DEFAULT_MAX_REQUEST_SECONDS = 30.0
#: Slack around an ID's own time for clock skew between hosts and shipping delay of timestamps.
MARGIN_SECONDS = 5.0
#: The first look: this much before the ID's time (clock skew between the hosts of one request:
#: NTP keeps them within milliseconds) ...
FIRST_BEFORE_SECONDS = 1.0
#: ... and this much after it: most requests end within it. A longer request leaves its root hop
#: open (its access line comes last) or a child without its parent, which sends the lookup on
#: to the rest of :func:`id_window`. Each second searched costs a second of every service's lines
#: (bench ``p5scale``: ~2 s of lookup per 40 s window at 1.5M lines a minute).
FIRST_AFTER_SECONDS = 2.0
#: The one wider look when the narrow window gave an incomplete trail: +- this around the ID time.
WIDE_SECONDS = 15 * 60.0
#: The longest window a user may ask for (``--since``, ``?from=&to=``): Loki scans every line in
#: it for one ID, so 700 h would hold a page's thread for the whole lookup budget.
DEFAULT_MAX_WINDOW_SECONDS = 24 * 3600.0
#: The environment variable that sets it, for the page and the CLI (``--max-window`` wins there).
MAX_WINDOW_ENV = "TRAIL_MAX_WINDOW"
#: Loki takes Unix nanoseconds as a signed 64-bit integer: no time or duration reaches past it.
MAX_NS = 2**63
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class WindowTooLong(ValueError):
    """A window longer than the maximum asked; the message names both lengths, the caller says
    where the maximum is set (``--max-window``, ``TRAIL_MAX_WINDOW``)."""

    def __init__(self, seconds: float, max_seconds: float) -> None:
        self.seconds = seconds
        self.max_seconds = max_seconds
        asked, most = format_duration(seconds), format_duration(max_seconds)
        super().__init__(f"the window asked for ({asked}) is longer than the maximum {most}")


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
    max_seconds: float = DEFAULT_MAX_WINDOW_SECONDS,
) -> Window | None:
    """The window a user asked for (``--since``/``--from``/``--to``, or a page's ``?from=&to=``);
    None when nothing was asked, so the ID's own time decides. ``to`` defaults to now, ``from`` to
    ``since`` (default one hour) before ``to``. Longer than ``max_seconds``: :class:`WindowTooLong`."""
    if since_seconds is not None and from_ns is not None:
        raise ValueError("a look-back (since) and a start (from) exclude each other")
    if since_seconds is None and from_ns is None and to_ns is None:
        return None
    end = to_ns if to_ns is not None else (time.time_ns() if now_ns is None else now_ns)
    if from_ns is None:
        since = DEFAULT_SINCE_SECONDS if since_seconds is None else since_seconds
        if not math.isfinite(since) or since > max_seconds:  # checked before any arithmetic on it
            raise WindowTooLong(since, max_seconds)
        start = end - int(since * NS)
    else:
        start = from_ns
    if end - start > max_seconds * NS:
        raise WindowTooLong((end - start) / NS, max_seconds)
    if start < 0:
        length = format_duration((end - start) / NS)
        raise ValueError(f"the window starts before 1970: {length} before {format_time(end)}")
    return Window(start, end)


def id_window(correlation_id: str, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> Window | None:
    """The narrow first window for one of our IDs: from MARGIN_SECONDS before its own time to the
    longest request plus the margin after it. None for an ID that carries no time."""
    id_ms = time_ms_of(correlation_id)
    if id_ms is None:
        return None
    id_ns = id_ms * 1_000_000
    return Window(id_ns - int(MARGIN_SECONDS * NS), id_ns + int((max_request_seconds + MARGIN_SECONDS) * NS))


def first_window(correlation_id: str, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> Window | None:
    """The ID's own seconds, searched before anything else: FIRST_BEFORE_SECONDS before its time to
    FIRST_AFTER_SECONDS after it, inside :func:`id_window`. None for an ID that carries no time."""
    narrow = id_window(correlation_id, max_request_seconds)
    if narrow is None:
        return None
    id_ns = narrow.start_ns + int(MARGIN_SECONDS * NS)
    after = min(FIRST_AFTER_SECONDS, max_request_seconds + MARGIN_SECONDS)
    return Window(id_ns - int(FIRST_BEFORE_SECONDS * NS), min(narrow.end_ns, id_ns + int(after * NS)))


def rest_of(window: Window, searched: Window) -> tuple[Window, ...]:
    """The parts of ``window`` outside ``searched`` (which lies inside it), oldest first."""
    parts = []
    if window.start_ns < searched.start_ns:
        parts.append(Window(window.start_ns, searched.start_ns))
    if searched.end_ns < window.end_ns:
        parts.append(Window(searched.end_ns, window.end_ns))
    return tuple(parts)


def widened_window(correlation_id: str, max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS) -> Window | None:
    """The one wider look: +- WIDE_SECONDS (or the longest request, if longer) around the ID's time."""
    id_ms = time_ms_of(correlation_id)
    if id_ms is None:
        return None
    reach = int(max(WIDE_SECONDS, max_request_seconds + MARGIN_SECONDS) * NS)
    return Window(id_ms * 1_000_000 - reach, id_ms * 1_000_000 + reach)


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``500ms``; ValueError otherwise
    (also for ``inf``, ``nan`` and anything too long to count in nanoseconds)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)") from None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if math.isnan(seconds):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)")
    if not seconds > 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if seconds * NS >= MAX_NS:  # also inf: Loki counts in int64 nanoseconds (about 292 years)
        raise ValueError(f"{text!r} is too long")
    return seconds


def format_duration(seconds: float) -> str:
    """``24h``, ``1h30m``, ``90s``, ``500ms``, ``700h``: a duration as :func:`parse_duration` reads it back
    (rounded to the millisecond; ``inf`` and ``nan`` as themselves)."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds >= MAX_NS / NS:
        return f"{seconds:.3g}s"
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    whole, rest = divmod(ms, 1000)
    text = ""
    for unit, size in (("h", 3600), ("m", 60)):  # hours, not days: "24h" reads as the limit is set
        count, whole = divmod(whole, size)
        text += f"{count}{unit}" if count else ""
    if whole or rest:
        text += f"{whole}.{rest:03d}".rstrip("0").rstrip(".") + "s"
    return text


def max_window_from_env(env: Mapping[str, str]) -> float:
    """``TRAIL_MAX_WINDOW`` (a duration: ``24h``, ``90m``, ``86400``) or the default, 24 h."""
    raw = env.get(MAX_WINDOW_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_WINDOW_SECONDS
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{MAX_WINDOW_ENV}={raw!r} is not valid: {exc}") from None


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
    if ns >= MAX_NS:
        raise ValueError(f"{text!r} is too far in the future")
    return ns
