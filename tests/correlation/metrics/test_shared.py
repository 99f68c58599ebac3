"""correlation.metrics with a shared directory: each worker's file, the merge at scrape (sums, the
newest exemplar), dead workers archived, and files that are not the library's left alone.

Workers are simulated in one process by families each shared with a file of their own (what a
worker process does with all of them); the fork test uses a real forked child."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from correlation.metrics import archive, server, shared, store
from correlation.metrics.counter import ExemplarCounter
from correlation.metrics.exposition import SharedCollector
from correlation.metrics.gauge import Gauge as OurGauge
from correlation.metrics.gauge import MaxGauge, MinGauge, NewestGauge
from correlation.metrics.histogram import ExemplarHistogram
from correlation.metrics.merge import read_directory
from correlation.metrics.shared import MetricsFile

pytestmark = pytest.mark.unit

BUCKETS = (0.1, 1.0)
_TIMES = re.compile(rb"\d{10}\.\d+|\d\.\d+e\+09")


class Worker:
    """One simulated worker: the families, shared with a file of its own in ``directory``."""

    def __init__(self, directory: Path | None) -> None:
        self.histogram = ExemplarHistogram("req_seconds", "Time.", ["route"], BUCKETS, "cid", registry=None)
        self.counter = ExemplarCounter("errors", "Errors.", ["route"], registry=None, exemplar_label="cid")
        self.gauge = OurGauge("in_flight", "Now.", ["service"], registry=None)
        self.newest = NewestGauge("last_failed", "Last.", ["service", "cid"], registry=None)
        self.file = MetricsFile.for_worker(directory) if directory else None
        if self.file is not None:
            for family in (self.histogram, self.counter, self.gauge, self.newest):
                family.share(self.file)

    def families(self) -> list:
        return [self.histogram, self.counter, self.gauge, self.newest]


def _scrape(directory: Path) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedCollector(directory))
    return generate_openmetrics(registry)


def _lines_of(text: bytes, prefixes: tuple[bytes, ...] = (b"req_", b"errors_")) -> set[bytes]:
    """The samples of the request histogram and error counter, times blanked, in any order."""
    return {line for line in _TIMES.sub(b"T", text).splitlines() if line.startswith(prefixes)}


def _sample(text: bytes, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.decode().splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split(" ")[1])
    raise AssertionError(f"{name}{labels} not in\n{text.decode()}")


@pytest.mark.parametrize("generate", [generate_latest, generate_openmetrics], ids=["text", "openmetrics"])
def test_counter_and_gauge_expose_what_prometheus_client_would(generate) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    their_counter = Counter("errors", "Errors.", ["route"], registry=theirs)
    their_gauge = Gauge("depth", "Depth.", ["queue"], registry=theirs)
    counter = ExemplarCounter("errors", "Errors.", ["route"], registry=ours, exemplar_label="cid")
    gauge = OurGauge("depth", "Depth.", ["queue"], registry=ours)
    for route, exemplar in (("/a", "id1"), ("/a", "id2"), ("/b", None)):
        their_counter.labels(route).inc(1, {"cid": exemplar} if exemplar else None)
        counter.labels(route).inc(1, exemplar)
    their_gauge.labels("q").set(3)
    gauge.labels("q").set(3)
    their_gauge.labels("r").set_function(lambda: 7)
    gauge.labels("r").set_function(lambda: 7)
    assert _TIMES.sub(b"T", generate(ours)) == _TIMES.sub(b"T", generate(theirs))


def test_every_workers_counts_are_summed_with_the_newest_exemplar_per_bucket(tmp_path: Path) -> None:
    workers = [Worker(tmp_path) for _ in range(3)]
    alone = Worker(None)  # one process seeing every observation: what the sum must equal
    for n in range(300):
        worker = workers[n % 3]
        value, cid = (0.0625, 0.125, 0.5)[n % 3] * (1 + n % 7), f"id-{n}"  # exact in binary: sums in any order
        for target in (worker, alone):
            target.histogram.labels("/a").observe(value, cid)
            if n % 10 == 0:
                target.counter.labels("/a").inc(1, cid)
    workers[0].gauge.labels("s").set(2)
    workers[2].gauge.labels("s").set(3)
    workers[1].newest.set(("s", "old"), 100.0)
    workers[2].newest.set(("s", "new"), 200.0)
    scraped = _scrape(tmp_path)
    single = CollectorRegistry(auto_describe=False)
    single.register(alone.histogram)
    single.register(alone.counter)
    assert _lines_of(scraped) == _lines_of(generate_openmetrics(single))
    assert _sample(scraped, "req_seconds_count", route="/a") == 300
    assert b'errors_total{route="/a"} 30.0 # {cid="id-290"}' in scraped, "the newest exemplar across workers"
    assert _sample(scraped, "in_flight", service="s") == 5
    assert b'last_failed{cid="new",service="s"} 200.0' in scraped and b'cid="old"' not in scraped


def test_a_dead_workers_counts_stay_in_the_archive_and_its_gauges_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Worker(tmp_path), Worker(tmp_path)
    for worker, n in ((first, 5), (second, 7)):
        for _ in range(n):
            worker.histogram.labels("/a").observe(0.5, f"w{n}")
        worker.gauge.labels("s").set(1)
    first.newest.set(("s", "from-the-dead"), 300.0)
    assert first.file is not None
    dead = first.file.path
    pid = int(shared.WORKER_FILE.fullmatch(dead.name).group(1))  # type: ignore[union-attr]
    # Both simulated workers share this process's pid: absorb only the first's file.
    monkeypatch.setattr(archive, "worker_files", lambda directory, wanted: [dead] if wanted == pid else [])
    assert archive.absorb(tmp_path, pid) == 1
    assert not dead.exists()
    scraped = _scrape(tmp_path)
    assert _sample(scraped, "req_seconds_count", route="/a") == 12
    assert _sample(scraped, "in_flight", service="s") == 1, "the dead worker's gauge is dropped"
    assert b'cid="from-the-dead"' in scraped, "the newest failure is kept"
    second.histogram.labels("/a").observe(0.5, "later")
    assert _sample(_scrape(tmp_path), "req_seconds_count", route="/a") == 13


def test_largest_and_smallest_gauges_keep_their_extreme_over_live_workers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's open fds against its own limit: summed they would mean nothing. A smallest
    gauge not sampled yet (0) does not win; a dead worker's extremes go with it."""
    files = [MetricsFile.for_worker(tmp_path) for _ in range(3)]
    largest = [MaxGauge("open_fds", "Fds.", [], registry=None) for _ in files]
    smallest = [MinGauge("started", "Start.", [], registry=None) for _ in files]
    for family, file in (*zip(largest, files, strict=True), *zip(smallest, files, strict=True)):
        family.share(file)
    for gauge, value in zip(largest, (12, 40, 7), strict=True):
        gauge.labels().set(value)
    smallest[0].labels().set(1000.0)
    smallest[1].labels().set(900.0)
    smallest[2].labels()  # made, not sampled yet: 0 in its file
    scraped = _scrape(tmp_path)
    assert (_sample(scraped, "open_fds"), _sample(scraped, "started")) == (40, 900)
    pid = os.getpid()  # every simulated worker has this pid: absorb the one with the extremes
    monkeypatch.setattr(archive, "worker_files", lambda directory, wanted: [files[1].path] if wanted == pid else [])
    archive.absorb(tmp_path, pid)
    scraped = _scrape(tmp_path)
    assert (_sample(scraped, "open_fds"), _sample(scraped, "started")) == (12, 1000)


def test_a_file_the_archive_absorbed_counts_once_while_it_is_still_there(tmp_path: Path) -> None:
    """A scrape that opened a dead worker's file just before the arbiter deleted it, and the
    archive just after it was replaced: the archive names the file as absorbed."""
    worker = Worker(tmp_path)
    for _ in range(4):
        worker.counter.labels("/a").inc(1, "x")
    assert worker.file is not None
    kept = tmp_path / "kept"
    kept.write_bytes(worker.file.path.read_bytes())
    pid = os.getpid()
    archive.absorb(tmp_path, pid)
    kept.rename(worker.file.path)  # as if the scrape still held it
    assert _sample(_scrape(tmp_path), "errors_total", route="/a") == 4


def test_a_torn_exemplar_is_skipped_and_the_counts_still_read(tmp_path: Path) -> None:
    worker = Worker(tmp_path)
    worker.histogram.labels("/a").observe(0.05, "good-id")
    worker.histogram.labels("/a").observe(0.5, "torn-id")
    assert worker.file is not None
    raw = bytearray(worker.file.path.read_bytes())
    at = raw.index(b"torn-id")
    raw[at : at + 4] = b"XXXX"  # as a reader copying mid-write would see it: the crc no longer matches
    worker.file.path.write_bytes(bytes(raw))
    scraped = _scrape(tmp_path)
    assert _sample(scraped, "req_seconds_count", route="/a") == 2
    assert b'{cid="good-id"}' in scraped and b"XXXX" not in scraped and b"torn" not in scraped


def test_a_file_grows_past_its_first_mapping(tmp_path: Path) -> None:
    worker = Worker(tmp_path)
    for n in range(400):  # about 0.5 MB of series: the file doubles several times
        worker.histogram.labels(f"/route/{n}").observe(0.05, f"id-{n}")
    assert worker.file is not None and worker.file.path.stat().st_size > shared.INITIAL_SIZE
    worker.histogram.labels("/route/0").observe(0.05, "again")  # a region of the first mapping
    merged = read_directory(tmp_path)
    ((_, series),) = [(k, v) for k, v in merged.families.items() if k[0] == "req_seconds"]
    assert len(series) == 400 and series[("/route/0",)][2][0] == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_worker_writes_its_own_file_from_zero(tmp_path: Path) -> None:
    """What a gunicorn worker is: forked after the arbiter knew the directory. What the parent
    counted before the fork is not the child's to count again."""
    histogram = ExemplarHistogram("fork_seconds", "Time.", ["route"], BUCKETS, "cid", registry=None)
    for _ in range(5):
        histogram.labels("/a").observe(0.05, "parent")
    store.use_directory(tmp_path)
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                for _ in range(3):
                    histogram.labels("/a").observe(0.5, "child")
                histogram.labels("/b").observe(0.5, "child")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    finally:
        store.use_directory(None)
    assert store.file is None, "the parent itself does not write a file"
    merged = read_directory(tmp_path)
    series = next(v for k, v in merged.families.items() if k[0] == "fork_seconds")
    assert sum(series[("/a",)][2]) == 3 and sum(series[("/b",)][2]) == 1
    assert histogram.labels("/a").count == 5, "the parent's own counts are untouched"


def test_only_the_librarys_own_files_are_removed(tmp_path: Path) -> None:
    worker = Worker(tmp_path)
    worker.counter.labels("/a").inc()
    foreign = {
        "notes.txt": b"mine",
        "counter_123.db": b"prometheus_client's",
        "correlation-1-abcdef01.metrics": b"same name, not our bytes",
    }
    for name, content in foreign.items():
        (tmp_path / name).write_bytes(content)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.metrics"
    assert worker.file is not None
    outside.write_bytes(worker.file.path.read_bytes())  # our bytes, reached through a symlink
    (tmp_path / "correlation-2-abcdef02.metrics").symlink_to(outside)
    assert server.remove_own_files(tmp_path) == 1
    assert not worker.file.path.exists() and outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*foreign, "correlation-2-abcdef02.metrics"])
