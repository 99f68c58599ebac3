"""Where this process's metrics live: in memory (one process serves its own numbers), or also in
its file of the shared directory (several worker processes, each scrape answers their sum).

The shared directory is known from ``PROMETHEUS_MULTIPROC_DIR`` at import, or from
:func:`use_directory` (the gunicorn arbiter's ``on_starting`` hook,
:mod:`correlation.gunicorn`). A process writes its own file once it is *activated*: every process
forked after the directory is known (gunicorn's workers, ``--preload`` or not), and a process that
imports the library with ``PROMETHEUS_MULTIPROC_DIR`` set. Activation gives every series already
made a region in the new file and zeroes its memory: what a forked worker copied from its parent
was the parent's to count.

Values kept by functions (the in-flight gauge, the shipper's counters) are *sampled* into the file
every :data:`SAMPLE_SECONDS` by a thread, and just before a scrape for the scraping process.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from correlation.metrics.shared import MetricsFile

#: How often a worker writes the values it samples (in-flight requests, shipper counts).
SAMPLE_SECONDS = 1.0


class Shareable(Protocol):
    """A family of series (:mod:`correlation.metrics.family`)."""

    def share(self, file: MetricsFile) -> None: ...

    def sample(self) -> None: ...


directory: Path | None = None
#: The process that made the directory and archives its dead workers (gunicorn's arbiter), when
#: one does: its workers are forked from it, so they know it too.
server_pid: int | None = None
file: MetricsFile | None = None  # this process's, once activated
families: weakref.WeakSet[Shareable] = weakref.WeakSet()
_samplers: list[Callable[[], None]] = []
_lock = threading.Lock()
#: Held by a sampling pass, and by a fork (os.register_at_fork, below): a pass takes the families'
#: locks, and a child forked in the middle of one would inherit them held by a thread it does not
#: have, then hang at start when it takes them to write its own file.
_sampling_lock = threading.Lock()
_wake = threading.Event()
_sampling: threading.Thread | None = None


def use_directory(path: Path | None, *, server: int | None = None) -> None:
    """Share through ``path`` from now on: processes forked after this write there (None: stop).
    ``server``: the pid of the process that manages it (:mod:`correlation.metrics.server`)."""
    global directory, server_pid
    directory, server_pid = path, server


def activate() -> None:
    """Write this process's series to its own file in the shared directory."""
    global file, _sampling
    if directory is None:
        return
    with _lock:
        file = MetricsFile.for_worker(directory)
        for family in list(families):
            family.share(file)
        _wake.clear()
        _sampling = threading.Thread(target=_sample_forever, name="correlation-metrics-sampler", daemon=True)
        _sampling.start()


def add_sampler(sampler: Callable[[], None]) -> None:
    """Call ``sampler`` whenever this process samples (it writes its values into the families)."""
    _samplers.append(sampler)


def sample_now() -> None:
    """Write every sampled value of this process now (a no-op when not activated)."""
    if file is None:
        return
    with _sampling_lock:
        for family in list(families):
            family.sample()
        for sampler in list(_samplers):
            try:
                sampler()
            except Exception:  # noqa: BLE001 - one broken sampler must not stop the others, nor the thread
                pass


def _sample_forever() -> None:
    while not _wake.wait(SAMPLE_SECONDS):
        sample_now()


def _after_fork_in_child() -> None:
    global file, _sampling, _sampling_lock
    file, _sampling = None, None  # the parent's, and its thread did not survive the fork
    _sampling_lock = threading.Lock()  # the parent's copy was held across the fork
    if directory is not None:
        activate()


def _at_exit() -> None:
    _wake.set()
    sample_now()  # the last counts of a worker leaving normally


def _before_fork() -> None:
    _sampling_lock.acquire()  # a pass under way ends first (a few ms)


os.register_at_fork(
    before=_before_fork, after_in_parent=lambda: _sampling_lock.release(), after_in_child=_after_fork_in_child
)
atexit.register(_at_exit)
_env_directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
if _env_directory:  # every process of the server writes its own file, as prometheus_client's do
    Path(_env_directory).mkdir(parents=True, exist_ok=True)
    use_directory(Path(_env_directory))
    activate()
