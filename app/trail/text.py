"""Text shown to people, shared by every tool: untrusted text escaped (:func:`clean`), times and
durations written one way.

Log lines are untrusted input: control and invisible characters are escaped (:func:`clean`) so a
hostile line cannot move the cursor, recolour the terminal, start a new line or reorder what is
shown, in a terminal, a page or a chat message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: What :func:`clean` escapes: every character of Unicode's categories Cc (controls: ANSI escapes,
#: newlines), Cf (format: bidi embeddings, overrides and isolates U+202A-U+202E, U+2066-U+2069,
#: marks U+200E/U+200F/U+061C, zero-width U+200B-U+200D, U+2060, U+FEFF, soft hyphen, tags
#: U+E0000-U+E007F), Zl/Zp (U+2028, U+2029: a new line in chat and many terminals) and Cs (lone
#: surrogates, which cannot even be encoded). They either do something to the text around them or
#: are invisible, so a line could fake a row, hide text or reorder what is read. Listed as ranges;
#: the tests check them against ``unicodedata``.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]"
)


def clean(text: str) -> str:
    """Escape control and invisible characters of untrusted text (``\\x1b``, ``\\n``,
    ``\\u202e``, ...): what is left shows as it reads, on one line, left to right."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def format_time(ts_ns: int, *, date: bool = True) -> str:
    """RFC 3339 UTC with microseconds (``date=False``: time of day only); a time no calendar
    holds (past year 9999) as its nanoseconds, never an exception."""
    try:
        moment = datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return f"{ts_ns} ns"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S" if date else "%H:%M:%S")
    return f"{text}.{ts_ns // 1000 % 1_000_000:06d}" + ("Z" if date else "")


def format_ms(value: float) -> str:
    """Milliseconds as the tree and the notes show them: one decimal."""
    return f"{value:.1f} ms"


def line_cap_note(max_lines: int) -> str:
    """What the CLI and the page say when a trail had more lines than they read (``max_lines``)."""
    return (
        f"only the first {max_lines} lines were read: the window holds more "
        "(the cap is --max-lines / TRAIL_MAX_LINES); narrow the window to see the rest"
    )
