"""Loki's JSON push format, checked the way Loki checks it: what the fake Loki accepts.

``POST /loki/api/v1/push`` with ``Content-Type: application/json`` (optionally gzip or deflate
encoded): stream labels, timestamps as strings of Unix nanoseconds, lines, flat string structured
metadata, Loki's label and line-size limits (docs/loki-facts.md). Anything else is a ``ValueError``
naming the first way it breaks the format, which the fake answers with 400 and records.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MAX_LABELS_PER_STREAM = 15
MAX_LINE_BYTES = 256 * 1024
MAX_FUTURE_NS = 10 * 60 * 1_000_000_000


@dataclass(frozen=True)
class PushedEntry:
    """One log entry as Loki stores it: its stream's labels, time, line and structured metadata."""

    labels: dict[str, str]
    timestamp_ns: int
    line: str
    metadata: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        """The line parsed (our lines are JSON objects)."""
        parsed: dict[str, Any] = json.loads(self.line)
        return parsed


@dataclass
class Push:
    """One accepted push request."""

    headers: dict[str, str]  # names lowercased
    entries: list[PushedEntry]


def decode_push(headers: Mapping[str, str], raw: bytes, *, lenient: bool = False) -> list[PushedEntry]:
    """The entries of a push request (``headers`` with lowercased names), or ValueError."""
    content_type = headers.get("content-type", "")
    if content_type.split(";")[0].strip() != "application/json":
        raise ValueError(f"Content-Type {content_type!r}: Loki would read this as snappy protobuf")
    encoding = headers.get("content-encoding", "")
    try:
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding:
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")
        body = json.loads(raw)
    except (OSError, zlib.error, json.JSONDecodeError) as exc:
        raise ValueError(f"undecodable body: {exc}") from None
    return validate_push(body, allow_extra_keys=lenient)


def validate_push(body: Any, now_ns: int | None = None, *, allow_extra_keys: bool = False) -> list[PushedEntry]:
    """The entries of a push body, or ValueError naming the first way it breaks Loki's format.

    ``allow_extra_keys``: accept unknown keys next to ``streams`` and next to ``stream``/``values``
    (Loki's JSON decoder ignores them; some third-party clients send them). Off by default: our
    own shipper must send exactly Loki's documented shape.
    """
    now_ns = now_ns or time.time_ns()
    if not isinstance(body, dict) or not (set(body) == {"streams"} or (allow_extra_keys and "streams" in body)):
        keys = sorted(body) if isinstance(body, dict) else type(body)
        raise ValueError(f"top level must be exactly {{'streams': [...]}}, got keys {keys}")
    streams = body["streams"]
    if not isinstance(streams, list) or not streams:
        raise ValueError("streams must be a non-empty list (Loki answers 422 otherwise)")
    entries = []
    for stream in streams:
        if not isinstance(stream, dict) or not (
            set(stream) == {"stream", "values"} or (allow_extra_keys and {"stream", "values"} <= set(stream))
        ):
            raise ValueError(f"a stream must have exactly 'stream' and 'values', got {stream!r:.200}")
        labels = _checked_labels(stream["stream"])
        values = stream["values"]
        if not isinstance(values, list) or not values:
            raise ValueError("values must be a non-empty list")
        entries += [_checked_entry(labels, value, now_ns) for value in values]
    return entries


def _checked_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict) or not labels:
        raise ValueError("stream labels must be a non-empty object")
    if len(labels) > MAX_LABELS_PER_STREAM:
        raise ValueError(f"{len(labels)} labels: Loki allows {MAX_LABELS_PER_STREAM}")
    for name, value in labels.items():
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"label {name} must be a non-empty string")
    return dict(labels)


def _checked_entry(labels: dict[str, str], value: Any, now_ns: int) -> PushedEntry:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise ValueError(f"an entry must be [ts, line] or [ts, line, metadata], got {value!r:.200}")
    ts, line = value[0], value[1]
    if not isinstance(ts, str) or not ts.isdigit():
        raise ValueError(f"timestamp must be a string of Unix nanoseconds, got {ts!r}")
    if int(ts) > now_ns + MAX_FUTURE_NS:
        raise ValueError(f"timestamp {ts} is too far in the future")
    if not isinstance(line, str):
        raise ValueError("line must be a string")
    if len(line.encode()) > MAX_LINE_BYTES:
        raise ValueError(f"line of {len(line.encode())} bytes exceeds {MAX_LINE_BYTES}")
    metadata = value[2] if len(value) == 3 else {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and LABEL_NAME.fullmatch(k) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"structured metadata must be a flat object of strings, got {metadata!r:.200}")
    return PushedEntry(labels, int(ts), line, dict(metadata))
