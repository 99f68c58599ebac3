"""The dead workers' sums, kept in one file so that a scrape reads a bounded number of files
however often gunicorn recycles its workers (``max_requests``, timeouts, crashes).

Only the gunicorn arbiter writes it (:func:`absorb`, from the ``child_exit`` hook): it merges the
old archive and the dead worker's file into a new archive, replaces the old one atomically, then
deletes the dead worker's file. The archive lists the files it absorbed, so a scrape that opened a
dead worker's file before it was deleted does not count it twice
(:mod:`correlation.metrics.merge`). Counters, histograms and the newest failure are kept; a dead
worker's gauges (its in-flight requests, its buffered lines) are not: they described a process that
no longer runs.

One gauge means lines lost with the worker: its shipper's buffered lines. A worker that ends
normally closes its shipper, which writes its last figures (nothing buffered: sent, spooled, or
counted as dropped); a worker killed before that (SIGKILL, the OOM killer, gunicorn's timeout)
leaves in its file the lines it held at its last sample, and they are counted here as dropped,
reason ``worker_lost``. The sample is at most a second old: lines written in that last second are
missed, and lines of a push under way may have arrived after all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from correlation.metrics import shared
from correlation.metrics.merge import Merged
from correlation.metrics.shared import ABSORBED, COUNTER, GAUGE, HISTOGRAM, NEWEST, MetricsFile

#: (the gauge of lines a worker still held, the counter of lines that never reached Loki, the
#: reason): the shipper's families (correlation.loki.collector), known here by name only.
LOST_WITH_WORKER = ("loki_shipper_buffered_lines", "loki_shipper_dropped_lines", "worker_lost")
#: How long an absorbed file's name is remembered: far longer than any scrape takes to read the
#: files it opened.
REMEMBER_ABSORBED_SECONDS = 600.0
TEMPORARY = "correlation-archive.tmp"


def worker_files(directory: Path, pid: int) -> list[Path]:
    """The files the worker ``pid`` wrote (normally one)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [
        directory / name
        for name in sorted(names)
        if (found := shared.WORKER_FILE.fullmatch(name)) is not None and int(found.group(1)) == pid
    ]


def absorb(directory: Path, pid: int) -> int:
    """Fold the files of the dead worker ``pid`` into the archive and delete them; how many."""
    dead = worker_files(directory, pid)
    if not dead:
        return 0
    merged = Merged()
    old = shared.open_map(directory / shared.ARCHIVE_FILE)
    if old is not None:
        with old:
            for series in shared.read_series(old):
                merged.add(series, live=False)
    now = time.time()
    for path in dead:
        mm = shared.open_map(path)
        if mm is not None:
            with mm:
                every = list(shared.read_series(mm))
            for series in every:
                merged.add(series, live=False)
            for lost in lost_lines(every):
                merged.add(lost, live=False)
        merged.absorbed[path.name] = now
    _write(directory, merged, now)
    for path in dead:  # only after the new archive is in place
        path.unlink(missing_ok=True)
    return len(dead)


def lost_lines(series: list[shared.Series]) -> list[shared.Series]:
    """The lines a dead worker still held (its buffered-lines gauge, by service), as additions to
    its dropped-lines counter with the reason ``worker_lost``; none when it closed its shipper."""
    held_name, dropped_name, reason = LOST_WITH_WORKER
    held = {s.values: s.data for s in series if s.name == held_name and s.kind == GAUGE and s.data}
    counters = {s.values[0]: s for s in series if s.name == dropped_name and s.kind == COUNTER and s.values}
    lost = []
    for (service, *_), lines in held.items():
        like = counters.get(service)  # the worker's own series of that family: same name, help, labels
        if like is not None and lines > 0:
            lost.append(like._replace(values=(service, reason), data=(like.data[0], float(round(lines)), None)))
    return lost


def _write(directory: Path, merged: Merged, now: float) -> None:
    temporary = directory / TEMPORARY
    temporary.unlink(missing_ok=True)
    archive = MetricsFile(temporary)
    try:
        for (name, kind, documentation, labelnames, bounds, exemplar_label), series in merged.families.items():
            size = shared.data_size(kind, len(bounds))
            for values, data in series.items():
                key = shared.series_key(name, kind, documentation, labelnames, values, bounds, exemplar_label)
                region = archive.allocate(key, size)
                _write_data(region, kind, data, len(bounds))
        for name, absorbed_at in merged.absorbed.items():
            if now - absorbed_at < REMEMBER_ABSORBED_SECONDS:
                region = archive.allocate(shared.series_key("", ABSORBED, "", (), (name,)), 8)
                shared.write_double(region, 0, absorbed_at)
    finally:
        archive.close()
    os.replace(temporary, directory / shared.ARCHIVE_FILE)


def _write_data(region: shared.Region, kind: str, data: Any, buckets: int) -> None:
    mm, at = region
    if kind == COUNTER:
        created, value, exemplar = data
        shared.write_double(region, 0, created)
        shared.write_double(region, 8, value)
        if exemplar is not None:
            shared.write_slot(mm, at + 16, exemplar[0].encode(), exemplar[1], exemplar[2])
    elif kind == HISTOGRAM:
        created, total, counts, exemplars = data
        shared.write_double(region, 0, created)
        shared.write_double(region, 8, total)
        for index, count in enumerate(counts):
            shared.write_double(region, 16 + 8 * index, count)
        slots = at + 16 + 8 * buckets
        for index, exemplar in enumerate(exemplars):
            if exemplar is not None:
                shared.write_slot(mm, slots + index * shared.EXEMPLAR_SLOT, exemplar[0].encode(), *exemplar[1:])
    elif kind == NEWEST:
        values, value = data
        shared.write_slot(mm, at, json.dumps(values).encode(), value, value)
