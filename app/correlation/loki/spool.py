"""An on-disk spool for batches Loki could not take: bounded, replayed oldest first, survives restarts.

Layout under the spool directory (``LOKI_SPOOL_DIR``), which should be the spool's own::

    lokispool-p<pid>-<hex8>/           one per process, held with an exclusive flock on .lock
        .lock  .lokispool               the lock, and the marker that says the spool made it
        000000000001-<lines>.json.gz    segments (see correlation.loki.segment)
    lokispool-quarantine/               segments that could not be read back, moved aside

A process that starts adopts the segments of owners that are gone (their lock is free), so
several workers or replicas can share one volume and a restarted process replays what its
predecessor left. It adopts only what it can recognise as a spool's: a directory with its name
and marker (or, written by earlier versions, ``p<pid>-<8 chars>`` holding only a ``.lock`` and
segments), and in it only regular files with segment names. It never follows a symlink and
never deletes a file it did not name. Anything else in the directory is left alone and listed
in :attr:`Spool.left_alone`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from correlation.loki.buffer import PushEntry
from correlation.loki.push import push_body
from correlation.loki.segment import PARTIAL_NAME, SEGMENT_NAME, Segment, partial_name, segment_name

QUARANTINE = "lokispool-quarantine"
LOCK = ".lock"
MARKER = ".lokispool"
MARKER_TEXT = b"correlation.loki spool: log lines waiting for Loki. Adopted by the next process.\n"
_OWNER = re.compile(r"lokispool-p\d+-[0-9a-f]{8}")
_STAGING = re.compile(r"\.lokispool-new-[0-9a-f]{8}")  # a directory being made, not yet named
_LEGACY_OWNER = re.compile(r"p\d+-[a-z0-9_]{8}")  # earlier versions: tempfile.mkdtemp(prefix=f"p{pid}-")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Spool:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.root = Path(directory)
        self.max_bytes = max_bytes
        #: Entries of the spool directory it did not recognise and left as they were, with why.
        self.left_alone: list[str] = []
        self._segments: list[Segment] = []
        self._bytes = 0
        self._seq = 0
        self._root_fd = self._dir_fd = self._lock_fd = -1
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.dir = self.root / self._make_own_directory()
            self.adopt_orphans()
        except BaseException:
            self.release_inherited()
            raise

    def _make_own_directory(self) -> str:
        """Make, lock, mark and only then name this process's directory: a scan by another
        process never sees it half made (it skips the staging name)."""
        for _ in range(100):
            suffix = secrets.token_hex(4)
            staging = f".lokispool-new-{suffix}"
            try:
                os.mkdir(staging, 0o700, dir_fd=self._root_fd)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"{self.root}: no free name for a spool directory")
        try:
            self._dir_fd = os.open(staging, _DIR, dir_fd=self._root_fd)
            self._lock_fd = os.open(LOCK, _NEW_FILE, 0o600, dir_fd=self._dir_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            marker = os.open(MARKER, _NEW_FILE, 0o600, dir_fd=self._dir_fd)
            try:
                os.write(marker, MARKER_TEXT)
            finally:
                os.close(marker)
            name = f"lokispool-p{os.getpid()}-{suffix}"
            os.rename(staging, name, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
            return name
        except BaseException:
            for own in (MARKER, LOCK):
                with contextlib.suppress(OSError):
                    os.unlink(own, dir_fd=self._dir_fd)
            with contextlib.suppress(OSError):
                os.rmdir(staging, dir_fd=self._root_fd)
            raise

    # -- adoption -----------------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Move in the segments of spool directories whose owner is gone. Returns how many."""
        adopted = 0
        with os.scandir(self._root_fd) as entries:
            names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
        for name, is_dir in names:
            if name in (self.dir.name, QUARANTINE) or _STAGING.fullmatch(name):
                continue
            legacy = bool(_LEGACY_OWNER.fullmatch(name))
            count: int | None = None
            if is_dir and (legacy or _OWNER.fullmatch(name)):
                try:
                    count = self._adopt(name, legacy)
                except OSError as exc:
                    self.left_alone.append(f"{name} (could not adopt it: {exc})")
                    continue
            if count is None:
                self.left_alone.append(name)
            else:
                adopted += count
        return adopted

    def _adopt(self, name: str, legacy: bool) -> int | None:
        """Adopt the segments in ``name`` if it is a spool's directory whose owner is gone: how
        many, 0 if its owner lives (or another process is adopting it), None if it is not a
        spool's directory."""
        try:
            dir_fd = os.open(name, _DIR, dir_fd=self._root_fd)
        except FileNotFoundError:
            return 0  # removed meanwhile by another adopter
        except OSError:
            return None  # replaced by a symlink, or not ours to open
        try:
            listing = _Listing.of(dir_fd)
            if listing.empty:
                return 0  # the last step of another adopter's clean-up
            if not listing.recognised(legacy):
                return None
            try:
                lock_fd = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                return 0  # another adopter is removing it
            try:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return 0  # a live owner
                # Held: the owner is gone and no other adopter is here. Look again, and act on that.
                listing = _Listing.of(dir_fd)
                if not listing.recognised(legacy):
                    return None
                return self._take_segments(name, dir_fd, listing)
            finally:
                os.close(lock_fd)
        finally:
            os.close(dir_fd)

    def _take_segments(self, name: str, dir_fd: int, listing: _Listing) -> int:
        adopted = 0
        for file, size in sorted(listing.files.items()):
            match = SEGMENT_NAME.fullmatch(file)
            if match:
                lines = int(match.group(2))
                target = self._next_name(lines)
                os.rename(file, target, src_dir_fd=dir_fd, dst_dir_fd=self._dir_fd)
                self._add(Segment(self.dir / target, lines, size))  # counts against max_bytes
                adopted += 1
            elif PARTIAL_NAME.fullmatch(file):
                os.unlink(file, dir_fd=dir_fd)  # a write cut short (a full disk, a crash): never whole
        if not _remove_if_only_bookkeeping(self._root_fd, name, dir_fd):
            self.left_alone.append(f"{name} (its segments adopted; it holds files the spool did not write)")
        return adopted

    # -- the segments -------------------------------------------------------------------------

    def _next_name(self, lines: int) -> str:
        self._seq += 1
        return segment_name(self._seq, lines)

    def _add(self, segment: Segment) -> None:
        self._segments.append(segment)
        self._bytes += segment.size

    def write(self, entries: list[PushEntry], labels: Mapping[str, str]) -> bool:
        """Store a batch; False if it does not fit in ``max_bytes``. OSError on disk trouble (and
        then no partial file is left behind)."""
        body = push_body(entries, labels)
        if self._bytes + len(body) > self.max_bytes:
            return False
        name = self._next_name(len(entries))
        partial = partial_name(name)
        try:
            fd = os.open(partial, _NEW_FILE, 0o600, dir_fd=self._dir_fd)
            try:
                written = 0
                while written < len(body):
                    written += os.write(fd, body[written:])
                os.fsync(fd)  # the bytes are on disk before the name says the segment is whole
            finally:
                os.close(fd)
            os.rename(partial, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=self._dir_fd)
            raise
        with contextlib.suppress(OSError):
            os.fsync(self._dir_fd)  # and the name itself survives a crash
        self._add(Segment(self.dir / name, len(entries), len(body)))
        return True

    def oldest(self) -> Segment | None:
        return self._segments[0] if self._segments else None

    def remove(self, segment: Segment) -> None:
        """Delete a segment that was delivered (or settled otherwise)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path.name, dir_fd=self._dir_fd)
        self._forget(segment)

    def quarantine(self, segment: Segment) -> Path | None:
        """Move a segment that cannot be read aside, into :data:`QUARANTINE` next to the owners'
        directories: never replayed, never deleted by a spool. Where it went; None if it could not
        be moved (it then stays where it is, and this process tries it no more)."""
        self._forget(segment)
        target = f"{self.dir.name}.{segment.path.name}"
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(QUARANTINE, 0o700, dir_fd=self._root_fd)
            quarantine_fd = os.open(QUARANTINE, _DIR, dir_fd=self._root_fd)
            try:
                os.rename(segment.path.name, target, src_dir_fd=self._dir_fd, dst_dir_fd=quarantine_fd)
            finally:
                os.close(quarantine_fd)
        except OSError:
            return None
        return self.root / QUARANTINE / target

    def _forget(self, segment: Segment) -> None:
        if segment in self._segments:
            self._segments.remove(segment)
            self._bytes -= segment.size

    @property
    def pending(self) -> tuple[int, int]:
        """(lines, bytes on disk) waiting in the spool."""
        return sum(s.lines for s in self._segments), self._bytes

    def release_inherited(self) -> None:
        """In a forked child: let go of the parent's descriptors without touching its files."""
        for fd in (self._lock_fd, self._dir_fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._dir_fd = self._root_fd = -1

    def close(self) -> None:
        """Release the directory; segments stay for the next process to adopt. A directory left
        with nothing but its own bookkeeping is removed."""
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                _remove_if_only_bookkeeping(self._root_fd, self.dir.name, self._dir_fd)
        self.release_inherited()


class _Listing(NamedTuple):
    """A directory's regular files (name: size), and the names of everything else in it (links,
    directories, devices): never followed, never touched."""

    files: dict[str, int]
    others: list[str]

    @classmethod
    def of(cls, dir_fd: int) -> _Listing:
        listing = cls({}, [])
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    listing.files[entry.name] = entry.stat(follow_symlinks=False).st_size
                else:
                    listing.others.append(entry.name)
        return listing

    @property
    def empty(self) -> bool:
        return not self.files and not self.others

    def recognised(self, legacy: bool) -> bool:
        """A spool's own directory: its marker; or, written before the marker, exactly a ``.lock``
        and segments (and partial writes)."""
        if not legacy:
            return MARKER in self.files
        return LOCK in self.files and not self.others and all(map(_spool_file, self.files))

    @property
    def only_bookkeeping(self) -> bool:
        """Nothing in it but a spool's lock, marker and partial writes."""
        return not self.others and all(map(_bookkeeping, self.files))


def _bookkeeping(name: str) -> bool:
    return name in (LOCK, MARKER) or bool(PARTIAL_NAME.fullmatch(name))


def _spool_file(name: str) -> bool:
    return _bookkeeping(name) or bool(SEGMENT_NAME.fullmatch(name))


def _remove_if_only_bookkeeping(root_fd: int, name: str, dir_fd: int) -> bool:
    """Remove the directory ``name`` if it holds nothing but a spool's bookkeeping; False (and
    nothing removed) if it holds segments or anything else."""
    listing = _Listing.of(dir_fd)
    if not listing.only_bookkeeping:
        return False
    # The marker last: until the directory is gone, a scan still knows it for a spool's.
    for file in [f for f in listing.files if f not in (LOCK, MARKER)] + [LOCK, MARKER]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file, dir_fd=dir_fd)
    os.rmdir(name, dir_fd=root_fd)
    return True
