"""JSON on the logging path: orjson (a C extension) for plain values, the standard library for
the rest, with the same content either way.

Every log line is encoded once, and its Loki entry once more, so the encoder is orjson. It
differs from ``json.dumps(default=str)`` on some values: it writes NaN as ``null``, dates in ISO
form, enums by value and float subclasses through ``default``; it refuses lone surrogates and
integers past 64 bits. So it only gets what it writes exactly as the standard library does
(``str``, ``int``, ``bool``, ``None`` and finite ``float`` values in a flat dict; ASCII where the
output must be ASCII) and everything else takes the standard library's path. Both write compact
JSON (no spaces after ``,`` and ``:``), so a line's text does not depend on the path it took.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from math import isfinite
from typing import Any

import orjson

_PLAIN = frozenset({str, int, bool, type(None)})
_stdlib_line = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode
_stdlib_ascii = json.JSONEncoder(separators=(",", ":")).encode  # ensure_ascii: lone surrogates escaped


def _plain(values: Any) -> bool:
    for value in values:
        kind = type(value)
        if kind not in _PLAIN and (kind is not float or not isfinite(value)):
            return False
    return True


def line(entry: dict[str, Any]) -> str:
    """``entry`` as one line of compact JSON: non-ASCII kept as is, values JSON cannot hold as
    ``str(value)`` (the standard library's ``default=str``), lone surrogates kept."""
    return plain_line(entry) if _plain(entry.values()) else _stdlib_line(entry)


def plain_line(entry: dict[str, Any]) -> str:
    """:func:`line` for an entry whose values the caller knows to be ``str``, ``int``, ``bool``,
    ``None`` or finite floats (the access line's): no check of each value's type. A value orjson
    refuses (a lone surrogate, an int past 64 bits, bytes, a float subclass) still takes the
    standard library's path; one it would write differently (an enum, a date, NaN) must not be
    passed here."""
    try:
        return orjson.dumps(entry).decode()
    except TypeError:
        return _stdlib_line(entry)


def ascii_entry(timestamp: str, text: str, metadata: Mapping[str, str] | None) -> bytes:
    """``[timestamp, text, metadata]`` (metadata left out when empty) as ASCII JSON bytes: a Loki
    push entry. Any ``str`` is safe here, lone surrogates included (escaped)."""
    value: list[Any] = [timestamp, text]
    if metadata:
        value.append(metadata if type(metadata) is dict else dict(metadata))
    try:
        fragment = orjson.dumps(value)
    except TypeError:  # a lone surrogate, an int past 64 bits, a value that is not JSON
        pass
    else:
        if fragment.isascii():  # ASCII in, ASCII out: checked once, on the result
            # A copy of its own size: the bytes orjson returns keep its whole output buffer behind
            # them (4 KiB at least since orjson 3.12, never trimmed), and an entry waits in a buffer
            # whose bound must be the memory it holds. join copies; `+ b""` would not.
            return b"".join((fragment, b""))
    return _stdlib_ascii(value).encode("ascii")
