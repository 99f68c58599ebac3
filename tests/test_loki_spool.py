"""The disk spool: a Loki outage longer than memory loses nothing within the disk bound."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from correlation.loki import LokiHandler
from correlation.loki.spool import Spool
from tests.fakes import FakeLoki
from tests.support.shipper import LABELS
from tests.support.shipper import make_handler as _make_handler


def make_handler(sink: FakeLoki, spool_dir: Path, **overrides: object) -> LokiHandler:
    """Memory small next to the load, so an outage reaches the spool."""
    values = {
        "batch_max_bytes": 20_000,
        "buffer_max_bytes": 200_000,
        "backoff_max_seconds": 0.2,
        "flush_timeout_seconds": 1.0,
        "spool_dir": str(spool_dir),
        **overrides,
    }
    return _make_handler(sink, **values)


def _messages(sink: FakeLoki) -> list[str]:
    return [e.json["message"] for e in sink.entries]


def _steady_load(logger: logging.Logger, count: int, start: int = 0) -> list[str]:
    sent = []
    for n in range(start, start + count):
        logger.warning("line %05d %s", n, "x" * 60)
        sent.append(f"line {n:05d} {'x' * 60}")
        if n % 20 == 0:
            time.sleep(0.01)  # steady (about 2000 lines/s), not one burst bigger than memory
    return sent


def test_an_outage_longer_than_memory_loses_nothing_and_keeps_order(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path
) -> None:
    loki_sink.default = 503  # Loki is down
    handler = make_handler(loki_sink, tmp_path)
    logger.addHandler(handler)
    expected = _steady_load(logger, 3000)  # ~900 KB of lines against a 200 KB memory bound
    deadline = time.monotonic() + 10
    while handler.spooled()[0] + handler.buffered()[0] < 3000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handler.spooled()[0] > 2000, ("most lines went to disk", handler.stats.snapshot())
    assert handler.buffered()[1] <= 200_000
    loki_sink.default = 204  # Loki is back
    loki_sink.wait_for(lambda e: len(e) >= 3000, timeout=20)
    handler.flush(5)
    assert _messages(loki_sink) == expected, "everything, once, in timestamp order"
    stamps = [e.timestamp_ns for e in loki_sink.entries]
    assert stamps == sorted(stamps)
    stats = handler.stats.snapshot()
    assert sum(stats.dropped.values()) == 0 and stats.retries["server_error"] > 0
    assert handler.spooled() == (0, 0)


def test_past_the_disk_bound_lines_are_dropped_and_counted(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path
) -> None:
    loki_sink.default = 503
    handler = make_handler(loki_sink, tmp_path, spool_max_bytes=30_000)
    logger.addHandler(handler)
    _steady_load(logger, 2000)
    deadline = time.monotonic() + 10
    while handler.stats.snapshot().dropped["spool_full"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handler.spooled()[1] <= 30_000
    loki_sink.default = 204
    handler.flush(5)
    deadline = time.monotonic() + 10
    while handler.spooled()[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = handler.stats.snapshot()
    assert stats.dropped["spool_full"] > 0
    assert stats.sent_lines + stats.dropped["spool_full"] + stats.dropped["buffer_full"] == 2000, (
        "every line is sent or counted"
    )


def test_what_could_not_be_sent_at_exit_is_replayed_by_the_next_process(loki_sink: FakeLoki, tmp_path: Path) -> None:
    first = logging.getLogger("test.spool.first")
    first.propagate = False
    loki_sink.default = 503
    handler = make_handler(loki_sink, tmp_path, batch_max_wait_seconds=30.0)
    first.addHandler(handler)
    for n in range(100):
        first.warning("before restart %d", n)
    first.removeHandler(handler)
    handler.close()  # Loki still down: kept on disk, not dropped
    assert sum(handler.stats.snapshot().dropped.values()) == 0
    assert len(list(tmp_path.rglob("*.json.gz"))) >= 1

    loki_sink.default = 204
    second = logging.getLogger("test.spool.second")
    second.propagate = False
    restarted = make_handler(loki_sink, tmp_path)
    second.addHandler(restarted)
    second.warning("after restart")
    loki_sink.wait_for(lambda e: len(e) == 101)
    assert _messages(loki_sink) == [f"before restart {n}" for n in range(100)] + ["after restart"]
    second.removeHandler(restarted)
    restarted.close()
    assert list(tmp_path.rglob("*.json.gz")) == []


def test_a_live_owners_segments_are_left_alone(tmp_path: Path) -> None:
    from correlation.loki.buffer import PushEntry

    owner = Spool(str(tmp_path), 10**6)
    owner.write([PushEntry.encode(1, "a")], LABELS)
    other = Spool(str(tmp_path), 10**6)
    assert other.oldest() is None, "the first spool's owner is alive"
    owner.close()
    third = Spool(str(tmp_path), 10**6)
    segment = third.oldest()
    assert segment is not None and segment.read() == (LABELS, [PushEntry.encode(1, "a")])


def test_a_corrupt_segment_is_counted_and_skipped(loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path) -> None:
    dead = tmp_path / "p1-dead"
    dead.mkdir()
    (dead / "000000000001-7.json.gz").write_bytes(b"not gzip")
    handler = make_handler(loki_sink, tmp_path)
    logger.addHandler(handler)
    logger.warning("fine")
    loki_sink.wait_for(lambda e: len(e) == 1)
    handler.flush(2)
    assert handler.stats.snapshot().dropped["spool_error"] == 7


def test_an_unusable_spool_dir_is_reported_and_shipping_goes_on(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    handler = make_handler(loki_sink, not_a_dir)
    logger.addHandler(handler)
    logger.warning("still shipped")
    loki_sink.wait_for(lambda e: len(e) == 1)
    assert "LOKI_SPOOL_DIR" in capfd.readouterr().err
