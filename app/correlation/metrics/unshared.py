"""A server with several worker processes whose metrics are not summed right is told so: once on
stderr, and (when they are not shared at all) by ``correlation_metrics_unshared{service} 1``, at
each worker's first request and again at a scrape.

Without the shared directory each worker counts alone and a scrape answers whichever worker took
it: Prometheus reads every switch to a smaller count as a counter reset, and rates and alerts are
wrong without a sign. Whether other processes serve the same application:

- WSGI servers say so (``wsgi.multiprocess``; gunicorn sets it when it runs more than one worker);
- ASGI servers do not, so the process looks for sibling processes (children of its parent) that
  hold a listening socket it holds: what ``uvicorn --workers N`` and gunicorn's workers do (their
  parent bound the socket and every worker accepts on it). The parent itself is not counted: it
  only hands the socket on (uvicorn's supervisor, gunicorn's arbiter, ``uvicorn --reload``).
  Linux only (``/proc``); elsewhere nothing is found.

A shared directory that no server process manages (``PROMETHEUS_MULTIPROC_DIR`` under ``uvicorn
--workers``, or under gunicorn without the hooks) sums the counts right, but nothing archives a
worker that exits: its gauges (requests in flight, memory) stay in every scrape, and the files of
an earlier run are read as live. That is warned about too.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from correlation.metrics import library, store

#: How often a scrape looks again for sibling workers while none were found (uvicorn may start a
#: worker late: its supervisor adds one on SIGTTIN).
RECHECK_SECONDS = 10.0
#: Siblings looked at, at most (a process whose parent is the host's init has hundreds).
MAX_SIBLINGS = 256

_warned = threading.Event()
_lock = threading.Lock()
_next_check = 0.0
_PROC = Path("/proc")


def under_gunicorn() -> bool:
    """This process was started by gunicorn (its arbiter, or a worker forked from it)."""
    return "gunicorn.arbiter" in sys.modules


def check_server(environ: dict[str, Any], service: str) -> None:
    """Warn (once a process) when ``environ`` comes from a multi-process server and metrics are
    not shared."""
    if environ.get("wsgi.multiprocess"):
        _judge(service, workers=0)


def check_process(service: str) -> None:
    """Warn (once a process) when sibling processes accept on this process's sockets (an ASGI
    server's workers) and metrics are not summed right. Looks again at most every
    :data:`RECHECK_SECONDS`."""
    global _next_check
    if _warned.is_set() or _managed():
        return
    with _lock:
        now = time.monotonic()
        if now < _next_check:
            return
        _next_check = now + RECHECK_SECONDS
    workers = accepting_processes()
    if workers > 1:
        _judge(service, workers)


def _judge(service: str, workers: int) -> None:
    """Several processes serve ``service`` (``workers``: how many, 0 unknown): warn when their
    metrics are not summed right."""
    if _managed():
        return
    if store.directory is None:
        library.UNSHARED.labels(service).set(1)
    if _warned.is_set():
        return
    _warned.set()
    several = f"{workers} worker processes" if workers else "several worker processes"
    if store.directory is None:
        problem = (
            f"this server runs {several}, and their metrics are not shared: each scrape of /metrics answers "
            "one worker's counts, which Prometheus reads as counter resets."
        )
    else:
        problem = (
            f"this server runs {several} sharing PROMETHEUS_MULTIPROC_DIR, but no server process manages it: "
            "a worker that exits leaves its gauges (requests in flight, memory) in every scrape, and files "
            "of an earlier run are read as live."
        )
    sys.stderr.write(
        f"correlation: {service}: {problem} Run it under gunicorn with the hooks of correlation.gunicorn "
        "(ASGI: -k uvicorn_worker.UvicornWorker; not uvicorn --workers); see docs/library.md, "
        "'Several workers'.\n"
    )
    sys.stderr.flush()


def _managed() -> bool:
    """Shared, and a server process archives the workers that exit: the sums are right."""
    return store.directory is not None and store.server_pid is not None


def accepting_processes() -> int:
    """This process and its siblings that hold one of its listening sockets: how many (1: alone)."""
    listening = _listening_sockets()
    if not listening:
        return 1
    me, found = os.getpid(), 1
    for sibling in _siblings()[:MAX_SIBLINGS]:
        if sibling != me and _holds_any(sibling, listening):
            found += 1
    return found


def _listening_sockets() -> set[str]:
    """``socket:[inode]`` of every listening socket this process holds (TCP, or Unix for ``--uds``)."""
    mine = set()
    try:
        descriptors = os.listdir(_PROC / "self" / "fd")
    except OSError:
        return set()
    for name in descriptors:
        try:
            status = os.stat(int(name))
        except OSError:  # closed meanwhile
            continue
        if stat.S_ISSOCK(status.st_mode):
            mine.add(str(status.st_ino))
    if not mine:
        return set()
    # The kernel's socket tables say which are listening (asking the socket itself would need a
    # socket object on the server's descriptor, which may change its blocking mode).
    listening = set()
    for table, inode_column, is_listening in _TABLES:
        try:
            lines = (_PROC / "self" / "net" / table).read_text().splitlines()[1:]
        except OSError:  # no IPv6, say
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > inode_column and fields[inode_column] in mine and is_listening(fields):
                listening.add(f"socket:[{fields[inode_column]}]")
    return listening


_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x10000  # __SO_ACCEPTCON
#: (table in /proc/self/net, inode column, whether a row is a listening socket)
_TABLES = (
    ("tcp", 9, lambda fields: fields[3] == _TCP_LISTEN),
    ("tcp6", 9, lambda fields: fields[3] == _TCP_LISTEN),
    ("unix", 6, lambda fields: int(fields[3], 16) & _UNIX_ACCEPTING != 0),
)


def _siblings() -> list[int]:
    """The other children of this process's parent."""
    parent = os.getppid()
    children: list[int] = []
    try:
        for task in (_PROC / str(parent) / "task").iterdir():
            children += [int(pid) for pid in (task / "children").read_text().split()]
        return children
    except OSError:  # no children files (a kernel without them): read every process's parent
        pass
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children


def _holds_any(pid: int, sockets: set[str]) -> bool:
    try:
        descriptors = os.listdir(_PROC / str(pid) / "fd")
    except OSError:  # gone, or another user's
        return False
    for name in descriptors:
        try:
            if os.readlink(_PROC / str(pid) / "fd" / name) in sockets:
                return True
        except OSError:
            continue
    return False
