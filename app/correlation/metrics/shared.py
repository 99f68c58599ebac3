"""The per-worker metrics file: each worker process writes its own series into one memory-mapped
file of the shared directory, and any process reads every file at scrape time.

One writer per file (the worker that made it), so a value is written, not added: the writer keeps
the number in memory and stores it, an aligned 8-byte store, after each change. Nothing is
buffered: a worker killed with SIGKILL has already written every observation it finished.

Layout (little-endian, every offset a multiple of 8)::

    header  magic (8 bytes) | bytes used (u32) | reserved (u32)
    entry   entry length (u32) | key length (u32) | key (UTF-8 JSON) | padding | data

The key describes the series completely (name, kind, help, label names and values, bucket
bounds), so a reader needs no registry. The header's "bytes used" is written after an entry is
complete: a reader never sees half an entry.

An exemplar (or the newest failure) is a *slot*: crc32 (u32) | length (u32) | value (f64) |
time (f64) | text. The writer stores it in one copy; a reader copies it and checks the crc, and
copies again when a write overlapped its read (a slot a killed worker left half written is skipped
after a few tries). A crc needs no memory-ordering guarantee from the CPU, unlike a sequence
counter.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

MAGIC = b"CORRMTR1"
_HEADER = struct.Struct("<8sII")
_ENTRY = struct.Struct("<II")
_DOUBLE = struct.Struct("<d")
_SLOT_HEAD = struct.Struct("<IIdd")  # crc, length, value, time
INITIAL_SIZE = 64 * 1024

#: A worker's file: ``correlation-<pid>-<token>.metrics`` (the token tells a reused pid's file apart).
WORKER_FILE = re.compile(r"correlation-(\d+)-([0-9a-f]{8})\.metrics")
#: The dead workers' sums, written by the gunicorn arbiter (:mod:`correlation.metrics.archive`).
ARCHIVE_FILE = "correlation-archive.metrics"

# Kinds of series, and the size of their data.
COUNTER = "counter"  # created, value, exemplar slot
HISTOGRAM = "histogram"  # created, sum, one count per bucket, one exemplar slot per bucket
GAUGE = "gauge"  # value; summed over live workers (a dead worker's is dropped)
GAUGE_MAX = "gauge_max"  # value; the largest over live workers
GAUGE_MIN = "gauge_min"  # value, never 0 once sampled; the smallest over live workers (0: not sampled yet)
#: Kinds that describe a running process: a dead worker's are dropped, never archived.
LIVE_GAUGES = frozenset({GAUGE, GAUGE_MAX, GAUGE_MIN})
NEWEST = "newest"  # one slot: the label values as JSON, the value; the newest across workers wins
ABSORBED = "absorbed"  # archive only: the name of a worker file whose sums it holds; no data

#: An exemplar's text: a correlation ID (at most 64 characters of [A-Za-z0-9._-]).
EXEMPLAR_TEXT = 64
EXEMPLAR_SLOT = _SLOT_HEAD.size + EXEMPLAR_TEXT
#: The newest series' label values, as JSON.
NEWEST_TEXT = 1000
NEWEST_SLOT = _SLOT_HEAD.size + NEWEST_TEXT
_SLOT_READ_TRIES = 50


def data_size(kind: str, buckets: int = 0) -> int:
    """Bytes of data after the key for a series of ``kind``."""
    if kind == COUNTER:
        return 16 + EXEMPLAR_SLOT
    if kind == HISTOGRAM:
        return 16 + 8 * buckets + EXEMPLAR_SLOT * buckets
    if kind in LIVE_GAUGES:
        return 8
    if kind == NEWEST:
        return NEWEST_SLOT
    if kind == ABSORBED:
        return 8  # when it was absorbed
    raise ValueError(f"unknown kind {kind!r}")


def series_key(
    name: str,
    kind: str,
    documentation: str,
    labelnames: tuple[str, ...],
    values: tuple[str, ...],
    bounds: tuple[float, ...] = (),
    exemplar_label: str = "",
) -> bytes:
    """The self-describing key of one series (bounds as strings: ``+Inf`` is not JSON)."""
    text_bounds = [repr(b) for b in bounds]
    return json.dumps([name, kind, documentation, labelnames, values, text_bounds, exemplar_label]).encode()


class Region(NamedTuple):
    """Where one series' data lives: the mapping it was allocated in and the offset of its data."""

    mm: mmap.mmap
    offset: int


def write_double(region: Region, at: int, value: float) -> None:
    _DOUBLE.pack_into(region.mm, region.offset + at, value)


def write_slot(mm: mmap.mmap, offset: int, text: bytes, value: float, when: float) -> None:
    """Store a slot in one copy; the crc covers length, value, time and text."""
    body = _SLOT_HEAD.pack(0, len(text), value, when)[4:] + text
    mm[offset : offset + 4 + len(body)] = struct.pack("<I", zlib.crc32(body)) + body


def read_slot(mm: mmap.mmap, offset: int, capacity: int) -> tuple[bytes, float, float] | None:
    """(text, value, time) of a slot, or None when it is empty or no consistent copy was had."""
    for _ in range(_SLOT_READ_TRIES):
        raw = mm[offset : offset + _SLOT_HEAD.size + capacity]
        crc, length, value, when = _SLOT_HEAD.unpack_from(raw)
        if length == 0 and crc == 0:
            return None
        if length <= capacity and zlib.crc32(raw[4 : _SLOT_HEAD.size + length]) == crc:
            return raw[_SLOT_HEAD.size : _SLOT_HEAD.size + length], value, when
    return None


class MetricsFile:
    """A file being written by this process (one writer). ``allocate`` gives each new series its
    region. :meth:`for_worker` makes this process's own file in the shared directory."""

    def __init__(self, path: Path) -> None:
        self.pid = os.getpid()
        self.path = path
        self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        self._size = INITIAL_SIZE
        os.ftruncate(self._fd, self._size)
        self._mm = mmap.mmap(self._fd, self._size)
        self._used = _HEADER.size
        _HEADER.pack_into(self._mm, 0, MAGIC, self._used, 0)
        self._lock = threading.Lock()

    @classmethod
    def for_worker(cls, directory: Path) -> MetricsFile:
        return cls(directory / f"correlation-{os.getpid()}-{secrets.token_hex(4)}.metrics")

    def allocate(self, key: bytes, size: int) -> Region:
        """A zeroed region of ``size`` bytes for the series ``key``, visible to readers at once."""
        key_room = (len(key) + 7) // 8 * 8
        length = _ENTRY.size + key_room + size
        with self._lock:
            start = self._used
            if start + length > self._size:
                self._grow(start + length)
            _ENTRY.pack_into(self._mm, start, length, len(key))
            self._mm[start + _ENTRY.size : start + _ENTRY.size + len(key)] = key
            self._used = start + length
            # Last: a reader sees the entry only once it is whole (its data is zeros until written).
            struct.pack_into("<I", self._mm, 8, self._used)
            return Region(self._mm, start + _ENTRY.size + key_room)

    def _grow(self, needed: int) -> None:
        size = self._size
        while size < needed:
            size *= 2
        os.ftruncate(self._fd, size)
        # A new mapping of the whole file: regions already given out keep theirs (still valid, the
        # file only grows), so no write ever races a remap.
        self._mm = mmap.mmap(self._fd, size)
        self._size = size

    def close(self) -> None:
        """Stop writing (the file stays: its counts belong to the server until it is archived)."""
        os.close(self._fd)


class Series(NamedTuple):
    """One series as read from a file: its key fields and its data (by kind)."""

    name: str
    kind: str
    documentation: str
    labelnames: tuple[str, ...]
    values: tuple[str, ...]
    bounds: tuple[float, ...]
    exemplar_label: str
    data: Any  # see read_series


def open_map(path: Path) -> mmap.mmap | None:
    """A read-only mapping of the file at ``path`` as it is now (None: gone, empty or not ours).
    The mapping stays readable after the file is deleted."""
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < _HEADER.size:
                return None
            mm = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ)
    except (FileNotFoundError, ValueError):
        return None
    if mm[:8] != MAGIC:
        mm.close()
        return None
    return mm


def read_series(mm: mmap.mmap) -> Iterator[Series]:
    """Every complete series in a mapping made by :func:`open_map`.

    ``data`` is, by kind: counter ``(created, value, exemplar)``; histogram ``(created, sum,
    counts, exemplars)``; gauges ``value``; newest ``(label values, value)`` or None; an exemplar
    is ``(id, value, time)`` or None.
    """
    _, used, _ = _HEADER.unpack_from(mm, 0)
    offset, end = _HEADER.size, min(used, len(mm))
    while offset + _ENTRY.size <= end:
        length, key_length = _ENTRY.unpack_from(mm, offset)
        if length == 0 or offset + length > end:
            return
        key = mm[offset + _ENTRY.size : offset + _ENTRY.size + key_length]
        data_at = offset + _ENTRY.size + (key_length + 7) // 8 * 8
        name, kind, documentation, labelnames, values, bounds, exemplar_label = json.loads(key)
        parsed_bounds = tuple(float(b) for b in bounds)
        data = _read_data(mm, data_at, kind, len(parsed_bounds))
        yield Series(name, kind, documentation, tuple(labelnames), tuple(values), parsed_bounds, exemplar_label, data)
        offset += length


def _read_data(mm: mmap.mmap, at: int, kind: str, buckets: int) -> Any:
    if kind == COUNTER:
        created, value = struct.unpack_from("<dd", mm, at)
        return created, value, _exemplar(mm, at + 16)
    if kind == HISTOGRAM:
        created, total, *counts = struct.unpack_from(f"<{2 + buckets}d", mm, at)
        slots = at + 16 + 8 * buckets
        exemplars = [_exemplar(mm, slots + i * EXEMPLAR_SLOT) for i in range(buckets)]
        return created, total, counts, exemplars
    if kind in LIVE_GAUGES:
        return _DOUBLE.unpack_from(mm, at)[0]
    if kind == NEWEST:
        slot = read_slot(mm, at, NEWEST_TEXT)
        return None if slot is None else (tuple(json.loads(slot[0])), slot[1])
    if kind == ABSORBED:
        return _DOUBLE.unpack_from(mm, at)[0]
    raise ValueError(f"unknown kind {kind!r}")


def _exemplar(mm: mmap.mmap, at: int) -> tuple[str, float, float] | None:
    if mm[at : at + 8] == b"\0" * 8:  # never written: the common case, one compare
        return None
    slot = read_slot(mm, at, EXEMPLAR_TEXT)
    return None if slot is None else (slot[0].decode("ascii", "replace"), slot[1], slot[2])
