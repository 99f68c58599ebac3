"""correlation.metrics.merge: a histogram's ``_sum`` (and any fractional counter) is the same in any
order of its terms, so it never goes back when a worker's file moves into the archive (which
changes the order): Prometheus would read a last-bit drop as a counter reset."""

from __future__ import annotations

import itertools
import random

import pytest

from correlation.metrics.merge import Merged, sum_exactly
from correlation.metrics.shared import HISTOGRAM, Series

pytestmark = pytest.mark.unit

BOUNDS = (0.1, 1.0, float("inf"))


def _histogram(total: float, count: int = 1) -> Series:
    data = (1.0, total, [0, count, 0], [None, None, None])
    return Series("http_server_request_duration_seconds", HISTOGRAM, "", ("route",), ("/x",), BOUNDS, "", data)


def _sum(merged: Merged) -> float:
    (by_values,) = merged.families.values()
    return by_values[("/x",)][1]


def test_a_histogram_sum_is_the_same_in_any_order_of_its_workers() -> None:
    sums = set()
    for order in itertools.permutations((0.1, 0.2, 0.3, 0.0123457)):
        merged = Merged()
        for total in order:
            merged.add(_histogram(total))
        sums.add(_sum(merged))
    assert sums == {0.612346}, "float addition gives 0.6123457000000001 in some orders"


def test_a_worker_moving_into_the_archive_never_lowers_the_sum() -> None:
    """A scrape reads the archive (the dead workers' merged sums) first, then the live workers'
    files by name: a worker that dies moves from its place among them to the front."""
    rng = random.Random(3)
    for _ in range(200):
        workers = [rng.uniform(0, 50) for _ in range(4)]
        before = Merged()
        for total in workers:
            before.add(_histogram(total))
        for dead in range(len(workers)):
            after = Merged()
            after.add(_histogram(workers[dead]), live=False)
            for total in workers[:dead] + workers[dead + 1 :]:
                after.add(_histogram(total))
            assert _sum(after) == _sum(before)


def test_integers_add_as_they_are() -> None:
    assert sum_exactly(3.0, 4.0) == 7.0
    assert sum_exactly(2.0**53 - 1) == 2.0**53 - 1
    assert sum_exactly(0.1, 0.2) == 0.3
