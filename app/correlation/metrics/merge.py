"""The server's numbers from every worker's file: counters and histograms summed, the newest
exemplar kept per bucket and counter, gauges summed (or their largest, or smallest, kept) over live
workers, the newest of "newest" gauges kept.

A scrape opens every worker file first and the archive (the dead workers' sums,
:mod:`correlation.metrics.archive`) after. The arbiter writes a new archive before it deletes the
dead worker's file, so whichever archive the scrape opens, each dead worker is counted once: an old
archive without it comes with its file still open, a new one names it as absorbed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from correlation.metrics import shared
from correlation.metrics.shared import (
    ABSORBED,
    COUNTER,
    GAUGE,
    GAUGE_MAX,
    GAUGE_MIN,
    HISTOGRAM,
    LIVE_GAUGES,
    NEWEST,
    Series,
)

#: A family as a reader knows it: (name, kind, documentation, label names, bucket bounds, exemplar label).
FamilyKey = tuple[str, str, str, tuple[str, ...], tuple[float, ...], str]
Exemplar = tuple[str, float, float] | None  # (id, value, time)


def _newer(a: Exemplar, b: Exemplar) -> Exemplar:
    if a is None:
        return b
    if b is None:
        return a
    return b if b[2] > a[2] else a


def _earliest(a: float, b: float) -> float:
    return min(a, b) if a and b else a or b


@dataclass
class Merged:
    """Series by family, then by label values; data shaped as :func:`shared.read_series` gives it."""

    families: dict[FamilyKey, dict[tuple[str, ...], Any]] = field(default_factory=dict)
    #: Worker files (by name) whose sums an archive holds, with the time they were absorbed.
    absorbed: dict[str, float] = field(default_factory=dict)
    #: The processes whose live files were read.
    pids: set[int] = field(default_factory=set)

    def add(self, series: Series, *, live: bool = True) -> None:
        """Fold one series in; ``live``: from a running worker (a dead worker's gauges are dropped)."""
        if series.kind == ABSORBED:
            self.absorbed[series.values[0]] = series.data or 0.0
            return
        if series.kind in LIVE_GAUGES and not live:
            return
        family = (
            series.name,
            series.kind,
            series.documentation,
            series.labelnames,
            series.bounds,
            series.exemplar_label,
        )
        known = self.families.setdefault(family, {})
        previous = known.get(series.values)
        data = series.data
        if data is None or (series.kind == GAUGE_MIN and data == 0):  # never written, or unreadable
            return
        if previous is None:
            known[series.values] = _copy(series.kind, data)
            return
        if series.kind == COUNTER:
            known[series.values] = (
                _earliest(previous[0], data[0]),
                sum_exactly(previous[1], data[1]),
                _newer(previous[2], data[2]),
            )
        elif series.kind == HISTOGRAM:
            created, total, counts, exemplars = previous
            counts = [a + b for a, b in zip(counts, data[2], strict=True)]
            exemplars = [_newer(a, b) for a, b in zip(exemplars, data[3], strict=True)]
            known[series.values] = (_earliest(created, data[0]), sum_exactly(total, data[1]), counts, exemplars)
        elif series.kind == GAUGE:
            known[series.values] = previous + data
        elif series.kind == GAUGE_MAX:
            known[series.values] = max(previous, data)
        elif series.kind == GAUGE_MIN:
            known[series.values] = min(previous, data)
        elif series.kind == NEWEST and data[1] > previous[1]:
            known[series.values] = data


def _copy(kind: str, data: Any) -> Any:
    if kind == HISTOGRAM:
        created, total, counts, exemplars = data
        return created, sum_exactly(total), list(counts), list(exemplars)
    if kind == COUNTER:
        created, value, exemplar = data
        return created, sum_exactly(value), exemplar
    return data


#: Fractional sums (a histogram's ``_sum`` of seconds, CPU seconds) are added in whole millionths.
QUANTUM = 1_000_000


def sum_exactly(*values: float) -> float:
    """The sum of ``values``, the same in any order: integers as they are (exact as floats below
    2**53), anything fractional in whole millionths. A float sum depends on the order of its terms,
    and a scrape's order changes when a worker's file moves into the archive: a sum whose last bit
    went down would read as a counter reset to Prometheus (a spike in every ``rate``). Millionths
    of a second stay exact up to 2**53 of them (285 years of summed durations)."""
    if all(value.is_integer() for value in values):
        return sum(values)
    return sum(round(value * QUANTUM) for value in values) / QUANTUM


def read_directory(directory: Path) -> Merged:
    """The server's series: every worker file's, and the archive's, each dead worker once."""
    maps = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    for name in names:  # the workers' files first ...
        if (found := shared.WORKER_FILE.fullmatch(name)) is not None:
            mm = shared.open_map(directory / name)
            if mm is not None:
                maps.append((name, int(found.group(1)), mm))
    merged = Merged()
    archive = shared.open_map(directory / shared.ARCHIVE_FILE)  # ... then the archive
    if archive is not None:
        with archive:
            for series in shared.read_series(archive):
                merged.add(series, live=False)
    for name, pid, mm in maps:
        with mm:
            if name in merged.absorbed:
                continue
            merged.pids.add(pid)
            for series in shared.read_series(mm):
                merged.add(series)
    return merged
