"""The server's side of shared metrics, run by the gunicorn arbiter (:mod:`correlation.gunicorn`):
make and clean the shared directory at start, archive each dead worker, remove what it made at exit.

The directory is ``PROMETHEUS_MULTIPROC_DIR`` when set (then only the library's own files in it are
cleaned: a worker file or archive is recognised by its name and its first bytes, and never
through a symlink), else a new private temporary directory, removed at exit if nothing else was
put in it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from correlation.metrics import archive, shared, store

_made: Path | None = None  # the directory this process created, to remove at exit


def start() -> Path:
    """Share metrics through a clean directory from now on (before the workers are forked)."""
    global _made
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = _made = Path(tempfile.mkdtemp(prefix="correlation-metrics-"))
    remove_own_files(directory)
    store.use_directory(directory, server=os.getpid())
    return directory


def worker_exited(pid: int) -> None:
    """Keep the dead worker's counts in the archive and delete its file."""
    if store.directory is not None:
        archive.absorb(store.directory, pid)


def stop() -> None:
    """Delete the library's files; remove the directory if this process made it and it is empty."""
    global _made
    directory = store.directory
    if directory is None:
        return
    remove_own_files(directory, keep_this_process=False)
    if _made is not None:
        try:
            _made.rmdir()
        except OSError:  # not empty: something else was put there; leave it
            pass
        _made = None


def remove_own_files(directory: Path, *, keep_this_process: bool = True) -> int:
    """Delete the files the library writes in ``directory`` (but this process's own, unless told);
    how many."""
    own = store.file.path.name if store.file is not None and keep_this_process else None
    removed = 0
    for name in os.listdir(directory):
        if name == own or not _named_ours(name):
            continue
        path = directory / name
        if _is_ours(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _named_ours(name: str) -> bool:
    return bool(shared.WORKER_FILE.fullmatch(name)) or name in (shared.ARCHIVE_FILE, archive.TEMPORARY)


def _is_ours(path: Path) -> bool:
    """A regular file (not a symlink) that starts with the library's magic bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, len(shared.MAGIC)) == shared.MAGIC
    finally:
        os.close(fd)
