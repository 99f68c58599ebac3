"""The disk spool: a Loki outage longer than memory loses nothing within the disk bound, and the
spool touches nothing it did not write.

The directories here are real: foreign files, symlinks, a volume's ``lost+found``, directories
written by earlier versions, dead owners' directories made by a real Spool, corrupt segments.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from correlation.ids import shard_of
from correlation.loki.buffer import PushEntry
from correlation.loki.handler import LokiHandler
from correlation.loki.push import push_body
from correlation.loki.segment import Segment, UnreadableSegment
from correlation.loki.sender import Sender
from correlation.loki.spool import QUARANTINE, Spool
from fakes import FakeLoki
from tests.support.shipper import LABELS
from tests.support.shipper import make_handler as _make_handler

pytestmark = pytest.mark.process

T0 = 1_750_000_000_000_000_000


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


# -- what the spool may touch ----------------------------------------------------------------


def _entries(text: str, count: int, first_ns: int = T0) -> list[PushEntry]:
    return [PushEntry.encode(first_ns + n, f"{text} {n}") for n in range(count)]


def _dead_spool(root: Path, *batches: list[PushEntry]) -> Path:
    """The directory of a spool that wrote ``batches`` and whose process is gone (lock free)."""
    spool = Spool(str(root), 10**7)
    for batch in batches:
        assert spool.write(batch, LABELS)
    spool.close()
    return spool.dir


def _legacy_dir(root: Path, name: str, *batches: list[PushEntry]) -> Path:
    """A directory as earlier versions left it: ``p<pid>-<8 chars>``, a ``.lock``, segments."""
    directory = root / name
    directory.mkdir()
    (directory / ".lock").touch()
    for n, batch in enumerate(batches, 1):
        (directory / f"{n:012d}-{len(batch)}.json.gz").write_bytes(push_body(batch, LABELS))
    return directory


def _tree(root: Path) -> dict[str, object]:
    """Every path under ``root`` without following links: a file's bytes, a link's target."""
    found: dict[str, object] = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = path.read_bytes()
    return found


def _spool_reports(err: str) -> list[str]:
    return [line for line in err.splitlines() if "holds what the spool did not write" in line]


def test_only_the_spools_own_directories_are_adopted_and_nothing_else_is_touched(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root, outside = tmp_path / "volume", tmp_path / "data"
    root.mkdir()
    outside.mkdir()  # a data directory elsewhere, with files a spool would write and one it would not
    (outside / ".lock").touch()
    (outside / "000000000001-1.json.gz").write_bytes(push_body(_entries("outside", 1), LABELS))
    (outside / "precious.db").write_bytes(b"someone's data")
    # What a volume root or a shared directory holds besides the spool.
    (root / "lost+found").mkdir()
    (root / "lost+found" / "#1234").write_bytes(b"recovered by fsck")
    (root / "notes.txt").write_text("not the spool's")
    (root / "p7-linkdata").symlink_to(outside)  # named like an owner's directory, but a link
    (root / "lokispool-p8-0123abcd").symlink_to(outside)
    (_legacy_dir(root, "p9-withnote", _entries("odd", 2)) / "README").write_text("a file no spool writes")
    unmarked = root / "lokispool-p10-0000beef"  # the spool's name without its marker
    unmarked.mkdir()
    (unmarked / ".lock").touch()
    (unmarked / "000000000001-1.json.gz").write_bytes(push_body(_entries("unmarked", 1), LABELS))
    # The spool's own: a dead owner of each form. The legacy one has a write cut short; into the
    # other someone dropped a file and a segment-named link.
    legacy = _legacy_dir(root, "p11-abcdefgh", _entries("legacy", 2))
    (legacy / ".000000000002-9.json.gz.tmp").write_bytes(b"half a segm")
    dead = _dead_spool(root, _entries("dead", 3, T0 + 100))
    (dead / "keep.me").write_text("someone's")
    (dead / "000000000099-1.json.gz").symlink_to(outside / "000000000001-1.json.gz")
    before, outside_before = _tree(root), _tree(outside)

    handler = make_handler(loki_sink, root)
    logger.addHandler(handler)
    logger.warning("fresh")
    entries = loki_sink.wait_for(lambda e: len(e) >= 6)
    handler.flush(2)
    logger.removeHandler(handler)
    handler.close()

    assert sorted(e.line for e in entries[:5]) == ["dead 0", "dead 1", "dead 2", "legacy 0", "legacy 1"]
    assert entries[5].json["message"] == "fresh" and len(loki_sink.entries) == 6, "nothing of anyone else's"
    assert _tree(outside) == outside_before, "never followed a link"
    after = _tree(root)
    adopted = {k for k in before if k.startswith(legacy.name) or k.startswith(f"{dead.name}/0000000000")}
    kept = {k: v for k, v in before.items() if k not in adopted or k == f"{dead.name}/000000000099-1.json.gz"}
    assert not legacy.exists(), "the legacy directory was adopted, its cut-short write removed"
    assert {k: v for k, v in after.items() if k in kept} == kept, "everything else as it was"
    assert set(after) - set(kept) <= {f"{dead.name}/.lock", f"{dead.name}/.lokispool"}
    (report,) = _spool_reports(capfd.readouterr().err)  # once
    for name in ("lost+found", "notes.txt", "p7-linkdata", "lokispool-p8-0123abcd", "p9-withnote"):
        assert name in report


def test_a_live_legacy_owner_is_left_alone_and_adopted_once_gone(tmp_path: Path) -> None:
    legacy = _legacy_dir(tmp_path, "p4242-x1y2z3_a", _entries("legacy", 2))
    held = os.open(legacy / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # an older version's process, still running
    try:
        alive = Spool(str(tmp_path), 10**6)
        assert alive.oldest() is None and alive.left_alone == []
        assert sorted(p.name for p in legacy.iterdir()) == [".lock", "000000000001-2.json.gz"]
    finally:
        os.close(held)
    adopter = Spool(str(tmp_path), 10**6)
    segment = adopter.oldest()
    assert segment is not None and segment.read() == (LABELS, _entries("legacy", 2))
    assert not legacy.exists()
    alive.close()
    adopter.close()


def test_adopted_segments_count_against_the_size_bound(tmp_path: Path) -> None:
    dead = _dead_spool(tmp_path, _entries("a", 50), _entries("b", 50))
    size = sum(p.stat().st_size for p in dead.glob("*.json.gz"))
    spool = Spool(str(tmp_path), size + 50)
    assert spool.pending == (100, size)
    assert not spool.write(_entries("c", 20), LABELS), "no room left for more than 50 bytes"
    spool.close()


def _gzip_garbage() -> bytes:
    return gzip.compress(b"x")[:10] + b"\xff" * 64  # a gzip header, then no valid deflate data: zlib.error


CORRUPT = {
    "not gzip": b"not gzip",
    "zlib garbage": _gzip_garbage(),
    "truncated gzip": push_body(_entries("cut", 7), LABELS)[:40],
    "deeply nested json": gzip.compress(b"[" * 100_000 + b"]" * 100_000),
    "wrong shape": gzip.compress(json.dumps({"streams": [{"stream": LABELS, "values": [["1"]]}]}).encode()),
    "wrong types": gzip.compress(json.dumps({"streams": [{"stream": {"a": 1}, "values": [[1, "x"]]}]}).encode()),
}


@pytest.mark.parametrize("corrupt", list(CORRUPT.values()), ids=list(CORRUPT))
def test_a_segment_that_cannot_be_read_is_quarantined_counted_and_shipping_goes_on(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path, capfd: pytest.CaptureFixture[str], corrupt: bytes
) -> None:
    dead = _dead_spool(tmp_path, _entries("before", 3), _entries("bad", 7, T0 + 10), _entries("after", 2, T0 + 20))
    (dead / "000000000002-7.json.gz").write_bytes(corrupt)
    handler = make_handler(loki_sink, tmp_path)
    logger.addHandler(handler)
    logger.warning("fresh")
    entries = loki_sink.wait_for(lambda e: len(e) >= 6)
    handler.flush(2)
    assert [e.line for e in entries[:5]] == ["before 0", "before 1", "before 2", "after 0", "after 1"]
    assert entries[5].json["message"] == "fresh"
    stats = handler.stats.snapshot()
    assert stats.dropped == {"spool_corrupt": 7} and stats.sender_restarts == 0
    assert handler.sender.thread is not None and handler.sender.thread.is_alive()
    (quarantined,) = (tmp_path / QUARANTINE).iterdir()
    assert quarantined.read_bytes() == corrupt, "moved aside as it was, not deleted"
    assert "lines not replayed, segment moved to" in capfd.readouterr().err
    logger.removeHandler(handler)
    handler.close()
    assert [p.name for p in tmp_path.iterdir()] == [QUARANTINE]
    again = Spool(str(tmp_path), 10**6)
    assert again.oldest() is None and again.left_alone == [], "the quarantine is never adopted, nor reported"
    again.close()
    assert quarantined.read_bytes() == corrupt


def test_a_segment_the_sender_fails_on_is_moved_aside_and_the_sender_goes_on(
    loki_sink: FakeLoki, logger: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dead_spool(tmp_path, _entries("poison", 4))
    push = Sender._push  # noqa: SLF001 - the failure put where the sender replays a segment

    def failing_on_poison(self: Sender, entries: list[PushEntry], labels: dict[str, str]) -> tuple[int, str, str]:
        if any(e.decode()[0].startswith("poison") for e in entries):
            raise RuntimeError("a bug met on this segment")
        return push(self, entries, labels)

    monkeypatch.setattr(Sender, "_push", failing_on_poison)
    handler = make_handler(loki_sink, tmp_path)
    logger.addHandler(handler)
    logger.warning("fresh")
    (entry,) = loki_sink.wait_for(lambda e: len(e) >= 1)
    assert entry.json["message"] == "fresh"
    stats = handler.stats.snapshot()
    assert stats.sender_restarts == 1 and stats.dropped == {"spool_corrupt": 4}
    assert len(list((tmp_path / QUARANTINE).iterdir())) == 1


def test_a_segment_is_on_disk_before_its_name_says_it_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(str(tmp_path), 10**6)
    events: list[tuple[str, str]] = []
    fsync, rename = os.fsync, os.rename

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_rename(src: str, dst: str, **kwargs: int) -> None:
        events.append(("rename", f"{src} -> {dst}"))
        rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    assert spool.write(_entries("a", 3), LABELS)
    monkeypatch.undo()
    partial = ".000000000001-3.json.gz.tmp"
    assert events[:2] == [
        ("fsync", str(spool.dir / partial)),
        ("rename", f"{partial} -> 000000000001-3.json.gz"),
    ]
    spool.close()


_FULL_DISK = """
import json, os, resource, signal, sys
from correlation.loki.buffer import PushEntry
from correlation.loki.spool import Spool

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
spool = Spool(sys.argv[1], 10**9)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # the disk fills at 4 KiB
entries = [PushEntry.encode(n, os.urandom(300).hex()) for n in range(200)]  # ~60 KiB gzipped
try:
    spool.write(entries, {"service_name": "svc"})
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "files": sorted(os.listdir(spool.dir)), "pending": spool.pending}))
"""


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout)
    assert result == {"errno": errno.EFBIG, "files": [".lock", ".lokispool"], "pending": [0, 0]}


# -- the shard label: segments of this version and of the previous one --------------------------


def _one_stream_body(messages: list[str], cid: str) -> bytes:
    """A segment as the version before the shard label wrote it: one stream, no ``shard``."""
    values = [[str(T0 + n), json.dumps({"message": m}), {"correlation_id": cid}] for n, m in enumerate(messages)]
    return gzip.compress(json.dumps({"streams": [{"stream": LABELS, "values": values}]}).encode())


def test_a_segment_of_the_previous_version_and_a_multi_stream_one_both_replay(
    loki_sink: FakeLoki, tmp_path: Path
) -> None:
    cids = ["0192f0c4e2a87abc8def012345678900", "0192f0c4e2a87abc8def0123456789a7", "foreign-id"]
    sharded = [
        PushEntry.encode(T0 + 10 + n, json.dumps({"message": f"new {n}"}), {"correlation_id": c}, shard_of(c))
        for n, c in enumerate(cids)
    ]
    legacy = tmp_path / "p4243-x1y2z3_b"
    legacy.mkdir()
    (legacy / ".lock").touch()
    (legacy / "000000000001-2.json.gz").write_bytes(_one_stream_body(["old 0", "old 1"], cids[0]))
    (legacy / "000000000002-3.json.gz").write_bytes(push_body(sharded, LABELS))
    spool = Spool(str(tmp_path), 10**6)
    old_segment, new_segment = spool._segments  # noqa: SLF001 - the adopted segments, read as the sender reads them
    assert [e.shard for e in old_segment.read()[1]] == ["", ""], "replayed as written: no shard"
    assert new_segment.read() == (LABELS, sorted(sharded, key=lambda e: (e.shard, e.timestamp_ns)))
    spool.close()

    logger = logging.getLogger("test.spool.shards")
    logger.propagate = False
    handler = make_handler(loki_sink, tmp_path)
    logger.addHandler(handler)
    try:
        logger.warning("after restart")
        loki_sink.wait_for(lambda e: len(e) == 6)
    finally:
        logger.removeHandler(handler)
        handler.close()
    by_message = {e.json["message"]: e.labels for e in loki_sink.entries}
    assert by_message["old 0"] == by_message["old 1"] == LABELS
    assert [by_message[f"new {n}"] for n in range(3)] == [
        {**LABELS, "shard": s} for s in ("0", "7", shard_of("foreign-id"))
    ]
    assert sum(handler.stats.snapshot().dropped.values()) == 0 and list(tmp_path.rglob("*.json.gz")) == []


@pytest.mark.parametrize(
    ("streams", "why"),
    [
        ([({**LABELS, "shard": "0"}, "a"), ({"service_name": "other", "env": "test", "shard": "1"}, "b")], "differ"),
        ([({**LABELS, "shard": "17"}, "a")], "not one of"),
    ],
)
def test_a_segment_whose_streams_are_not_one_shippers_shards_is_unreadable(
    tmp_path: Path, streams: list[tuple[dict[str, str], str]], why: str
) -> None:
    body = {"streams": [{"stream": labels, "values": [[str(T0), line]]} for labels, line in streams]}
    path = tmp_path / "000000000001-2.json.gz"
    path.write_bytes(gzip.compress(json.dumps(body).encode()))
    with pytest.raises(UnreadableSegment, match=why):
        Segment(path, 2, path.stat().st_size).read()
