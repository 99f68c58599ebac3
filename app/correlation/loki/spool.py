"""An on-disk spool for batches Loki could not take: bounded, replayed oldest first, survives restarts.

Layout: ``<directory>/<owner>/<seq>-<lines>.json.gz``, each segment a ready push body (gzip JSON,
labels included, so a segment replays under the labels it was written with). Each process owns
one subdirectory, held with an exclusive ``flock``; a process that starts adopts the segments of
owners that are gone (their lock is free), so several workers or replicas can share one volume
and a restarted process replays what its predecessor left.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from correlation.loki.buffer import PushEntry
from correlation.loki.push import push_body

_SEGMENT = re.compile(r"(\d{12})-(\d+)\.json\.gz")
_LOCK = ".lock"


@dataclass(frozen=True)
class Segment:
    path: Path
    lines: int

    def read(self) -> tuple[dict[str, str], list[PushEntry]]:
        """The labels and entries of the segment; ValueError if it is unreadable."""
        try:
            body = json.loads(gzip.decompress(self.path.read_bytes()))
            (stream,) = body["streams"]
            entries = [PushEntry.encode(int(v[0]), v[1], v[2] if len(v) > 2 else None) for v in stream["values"]]
            return dict(stream["stream"]), entries
        except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"unreadable spool segment {self.path}: {exc}") from None


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.root = Path(directory)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"p{os.getpid()}-", dir=self.root))
        self._lock_fd = os.open(self.dir / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._segments: list[Segment] = []
        self._bytes = 0
        self._seq = 0
        self.adopt_orphans()

    def adopt_orphans(self) -> int:
        """Move in the segments of owners that no longer hold their lock. Returns how many."""
        adopted = 0
        for other in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.dir):
            try:
                fd = os.open(other / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live owner
            try:
                for path in sorted(other.iterdir()):
                    match = _SEGMENT.fullmatch(path.name)
                    if match:
                        target = self.dir / self._next_name(int(match.group(2)))
                        path.rename(target)
                        self._add(Segment(target, int(match.group(2))))
                        adopted += 1
                for path in other.iterdir():
                    path.unlink()
                other.rmdir()
            except OSError:
                pass  # another adopter raced us, or a stray file: leave the rest
            finally:
                os.close(fd)
        return adopted

    def _next_name(self, lines: int) -> str:
        self._seq += 1
        return f"{self._seq:012d}-{lines}.json.gz"

    def _add(self, segment: Segment) -> None:
        self._segments.append(segment)
        self._bytes += segment.path.stat().st_size

    def write(self, entries: list[PushEntry], labels: Mapping[str, str]) -> bool:
        """Store a batch; False if it does not fit in ``max_bytes``. OSError on disk trouble."""
        body = push_body(entries, labels)
        if self._bytes + len(body) > self.max_bytes:
            return False
        name = self._next_name(len(entries))
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(body)
        tmp.rename(self.dir / name)  # a crash never leaves a half segment under a real name
        self._add(Segment(self.dir / name, len(entries)))
        return True

    def oldest(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    def remove(self, segment: Segment) -> None:
        size = segment.path.stat().st_size if segment.path.exists() else 0
        segment.path.unlink(missing_ok=True)
        self._segments.remove(segment)
        self._bytes -= size

    @property
    def pending(self) -> tuple[int, int]:
        """(lines, bytes on disk) waiting in the spool."""
        return sum(s.lines for s in self._segments), self._bytes

    def release_inherited(self) -> None:
        """In a forked child: let go of the parent's lock descriptor without touching its files."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        """Release the directory; segments stay for the next process to adopt."""
        if self._lock_fd >= 0:
            if not self._segments:
                for path in self.dir.iterdir():
                    path.unlink(missing_ok=True)
                self.dir.rmdir()
            os.close(self._lock_fd)
            self._lock_fd = -1
