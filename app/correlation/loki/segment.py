"""A spool segment: one push body on disk (gzip JSON, labels included), and reading it back.

The body is what :func:`correlation.loki.push.push_body` makes: one stream per shard, the same
labels but for ``shard``. A segment of an earlier version holds one stream without ``shard``; it
reads back the same way, and its entries are replayed as they were written (no shard).

A segment is named ``<seq>-<lines>.json.gz``: twelve digits of sequence, then how many lines it
holds, so a spool can count what it holds without reading it. It is written under a partial name,
``.<name>.tmp``, and renamed when whole.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from correlation.ids import SHARD_VALUES
from correlation.loki.buffer import PushEntry
from correlation.schema import SHARD_LABEL

SEGMENT_NAME = re.compile(r"(\d{12})-(\d+)\.json\.gz")
PARTIAL_NAME = re.compile(r"\.\d{12}-\d+\.json\.gz\.tmp")


def segment_name(seq: int, lines: int) -> str:
    return f"{seq:012d}-{lines}.json.gz"


def partial_name(name: str) -> str:
    """Where the segment ``name`` is written before it is whole."""
    return f".{name}.tmp"


class UnreadableSegment(ValueError):
    """A segment that cannot be read back: the disk refuses it, or its bytes are not a push body
    (torn, corrupt, or not written by a spool)."""


@dataclass(frozen=True)
class Segment:
    path: Path
    lines: int
    size: int

    def read(self) -> tuple[dict[str, str], list[PushEntry]]:
        """The labels and entries of the segment; :class:`UnreadableSegment` if it cannot be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as file:
                data = file.read()
            return parse_push_body(json.loads(gzip.decompress(data)))
        except Exception as exc:  # noqa: BLE001 - zlib.error, EOFError, RecursionError (deep JSON), ...: all unreadable
            raise UnreadableSegment(f"unreadable spool segment {self.path}: {exc.__class__.__name__}: {exc}") from None


def parse_push_body(body: object) -> tuple[dict[str, str], list[PushEntry]]:
    """The labels (``shard`` aside) and entries of a push body whose streams differ only by their
    ``shard`` (each entry keeps its stream's); ValueError if it has another shape."""
    streams = body.get("streams") if isinstance(body, dict) else None
    if not (isinstance(streams, list) and streams and all(isinstance(s, dict) for s in streams)):
        raise ValueError('not {"streams": [stream, ...]}')
    common: dict[str, str] | None = None
    entries = []
    for stream in streams:
        labels, values = stream.get("stream"), stream.get("values")
        if not _strings(labels) or not isinstance(values, list) or not values:
            raise ValueError("a stream has no labels or no values")
        labels = dict(labels)
        shard = labels.pop(SHARD_LABEL, "")
        if shard and (len(shard) != 1 or shard not in SHARD_VALUES):
            raise ValueError(f"shard {shard[:20]!r} is not one of {SHARD_VALUES!r}")
        if common is None:
            common = labels
        elif labels != common:
            raise ValueError("the streams' labels differ by more than their shard")
        for n, value in enumerate(values):
            if not (
                isinstance(value, list)
                and len(value) in (2, 3)
                and isinstance(value[0], str)
                and value[0].isascii()
                and value[0].isdigit()
                and isinstance(value[1], str)
                and (len(value) == 2 or _strings(value[2]))
            ):
                raise ValueError(f'value {n} is not ["<unix ns>", "<line>", {{metadata}}]')
            entries.append(PushEntry.encode(int(value[0]), value[1], value[2] if len(value) == 3 else None, shard))
    assert common is not None
    return common, entries


def _strings(value: object) -> TypeGuard[dict[str, str]]:
    """A JSON object of string values (labels, structured metadata)."""
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
