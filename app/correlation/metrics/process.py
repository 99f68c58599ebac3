"""The figures of the server's processes (``process_*``, ``python_gc_*``) when several workers
share their metrics: what prometheus_client's default registry exports for one process, for the
whole server, without a label per process (recycled workers would make such series unbounded).

Each worker samples its own figures (prometheus_client's ``ProcessCollector`` and
``GCCollector``) into its file with the other sampled values (:mod:`correlation.metrics.store`);
a scrape merges them (:mod:`correlation.metrics.merge`) and adds the server process's own
(gunicorn's arbiter, read from ``/proc`` at each scrape, whichever process answers):

- ``process_cpu_seconds_total``: the sum, exited workers' included (the archive keeps their last
  sample, as it keeps their request counts): the server's CPU, a counter that never goes back
  when a worker is recycled or killed;
- ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``: the sum over live
  processes (pages shared after the fork count in each, as in the sum of their RSS);
- ``process_open_fds``: the largest over live processes, ``process_max_fds`` the smallest, so
  that ``process_open_fds / process_max_fds`` still tells how near a process is to its limit;
- ``process_start_time_seconds``: the earliest of live processes: the arbiter's, when the server
  started;
- ``python_gc_*``: sums over workers, exited ones included (the arbiter's own collections are
  not readable from another process, so they are left out);
- ``python_info``: the answering process's (every process runs the same interpreter).

Figures come from ``/proc`` (Linux), as prometheus_client's do: elsewhere only ``python_*``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import GC_COLLECTOR
from prometheus_client.process_collector import ProcessCollector

from correlation.metrics import store
from correlation.metrics.counter import ExemplarCounter
from correlation.metrics.family import Family
from correlation.metrics.gauge import Gauge, MaxGauge, MinGauge
from correlation.metrics.merge import Merged
from correlation.metrics.shared import COUNTER, Series

_ACROSS_LIVE = "summed over the server's live processes"
CPU = ExemplarCounter(
    "process_cpu_seconds",
    "Total user and system CPU time spent in seconds, summed over the server's processes, exited workers included.",
    [],
    registry=None,
)
RESIDENT = Gauge("process_resident_memory_bytes", f"Resident memory size in bytes, {_ACROSS_LIVE}.", [], registry=None)
VIRTUAL = Gauge("process_virtual_memory_bytes", f"Virtual memory size in bytes, {_ACROSS_LIVE}.", [], registry=None)
OPEN_FDS = MaxGauge(
    "process_open_fds", "Number of open file descriptors of the server's live process that has most.", [], registry=None
)
MAX_FDS = MinGauge(
    "process_max_fds",
    "Maximum number of open file descriptors, the lowest of the server's live processes.",
    [],
    registry=None,
)
START_TIME = MinGauge(
    "process_start_time_seconds",
    "Start time since unix epoch in seconds of the server's oldest live process.",
    [],
    registry=None,
)
_EXITED = "summed over the server's workers, exited ones included"
GC_COLLECTED = ExemplarCounter(
    "python_gc_objects_collected", f"Objects collected during gc, {_EXITED}.", ["generation"], registry=None
)
GC_UNCOLLECTABLE = ExemplarCounter(
    "python_gc_objects_uncollectable",
    f"Uncollectable objects found during GC, {_EXITED}.",
    ["generation"],
    registry=None,
)
GC_COLLECTIONS = ExemplarCounter(
    "python_gc_collections", f"Number of times this generation was collected, {_EXITED}.", ["generation"], registry=None
)

#: prometheus_client's family name -> ours.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        CPU, RESIDENT, VIRTUAL, OPEN_FDS, MAX_FDS, START_TIME, GC_COLLECTED, GC_UNCOLLECTABLE, GC_COLLECTIONS,
    )
}  # fmt: skip

_own = ProcessCollector(registry=None)
_others: dict[int, ProcessCollector] = {}


def sample() -> None:
    """Write this process's figures into its file (a sampler of :mod:`correlation.metrics.store`)."""
    for metric in (*_own.collect(), *GC_COLLECTOR.collect()):
        family = FAMILIES.get(metric.name)
        if family is None:
            continue
        for found in metric.samples:
            if found.name.endswith("_created"):
                continue
            child = family.labels(*(found.labels[name] for name in family.labelnames))
            if family.kind == COUNTER:
                child.set_total(found.value)
            else:
                child.set(found.value)


def figures_of(pid: int) -> Iterator[Series]:
    """The ``process_*`` figures of another process, as series of a live worker's file."""
    collector = _others.get(pid)
    if collector is None:
        _others.clear()  # the server process is one for a process's life: no growth
        collector = _others[pid] = ProcessCollector(pid=lambda: pid, registry=None)
    metrics = {metric.name: metric for metric in collector.collect()}
    started = metrics.get(START_TIME.name)
    created = started.samples[0].value if started is not None else 0.0
    for name, metric in metrics.items():
        family = FAMILIES.get(name)
        if family is None or not metric.samples:
            continue
        value = metric.samples[0].value
        data = (created, value, None) if family.kind == COUNTER else value
        yield Series(*family.family_key[:4], (), family.bounds, family.exemplar_label, data)


def add_server_figures(merged: Merged) -> None:
    """Fold in the server process's figures (unless it writes a file of its own: then they are in
    it). The CPU total is summed in any order to the same value (``merge.sum_exactly``): it never
    goes back when a worker's file moves into the archive."""
    pid = store.server_pid
    if pid is not None and pid not in merged.pids:
        for figure in figures_of(pid):
            merged.add(figure)


store.add_sampler(sample)
