"""correlation.loki.sender.Sender on its own, against the fake Loki: what it does with each answer.

2xx delivers; 429, 5xx and resets are retried with a bounded, jittered backoff; other 4xx are
never retried and counted as rejected; "larger than max" splits the batch; with a spool, a batch
Loki cannot take goes to disk and is replayed from there. The handler in front of it is tested in
tests/correlation/loki/test_handler.py; here entries are put straight into the buffer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from correlation import schema
from correlation.loki.buffer import LineBuffer, PushEntry
from correlation.loki.sender import Sender
from correlation.loki.stats import ShipperStats
from correlation.settings import LokiSettings
from fakes import FakeLoki, wait_until
from tests.support.shipper import LABELS

pytestmark = pytest.mark.unit

T0 = 1_750_000_000_000_000_000


class Shipping:
    """A sender, its buffer and its counters, wired as the handler wires them."""

    def __init__(self, loki: FakeLoki, **settings: object) -> None:
        values: dict[str, object] = {
            "url": loki.url,
            "batch_max_wait_seconds": 0.01,
            "backoff_min_seconds": 0.01,
            "backoff_max_seconds": 0.02,
            "timeout_seconds": 2.0,
            **settings,
        }
        self.settings = LokiSettings(**values)  # type: ignore[arg-type]
        self.buffer = LineBuffer(self.settings.buffer_max_bytes)
        self.stats = ShipperStats()
        self.sender = Sender(self.settings, LABELS, self.buffer, self.stats)

    def send(self, count: int, first: int = 0) -> list[str]:
        """Put ``count`` numbered lines (with metadata) and start the sender; the lines put."""
        sent = []
        for n in range(first, first + count):
            line = f"line {n:04d}"
            assert self.buffer.put(PushEntry.encode(T0 + n, line, {schema.CORRELATION_ID: f"cid{n}"}))
            sent.append(line)
        self.sender.ensure_started()
        return sent

    def settled(self, timeout: float = 5.0) -> ShipperStats:
        """Wait until every line put is sent or dropped; the counters then."""
        assert self.buffer.join(timeout), f"lines still in flight: {self.stats.snapshot()}"
        return self.stats.snapshot()


@pytest.fixture
def shipping(loki_sink: FakeLoki) -> Iterator[Callable[..., Shipping]]:
    """Build a Shipping against the fake Loki; every sender built is stopped at the end."""
    built: list[Shipping] = []

    def build(**settings: object) -> Shipping:
        built.append(Shipping(loki_sink, **settings))
        return built[-1]

    yield build
    for each in built:
        assert each.sender.stop(2.0), "the sender thread ended"


def messages(loki: FakeLoki) -> list[str]:
    return [e.line for e in loki.entries]


def test_2xx_delivers_every_line_once_in_order_with_labels_and_metadata(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping]
) -> None:
    ship = shipping()
    sent = ship.send(50)
    stats = ship.settled()
    assert messages(loki_sink) == sent
    first = loki_sink.entries[0]
    assert first.labels == LABELS and first.timestamp_ns == T0 and first.metadata == {schema.CORRELATION_ID: "cid0"}
    assert stats.sent_lines == 50 and stats.sent_batches == len(loki_sink.pushes) == 1
    assert not stats.retries and not stats.dropped


@pytest.mark.parametrize(
    "failure, reason",
    [(429, "rate_limited"), (500, "server_error"), (503, "server_error"), ("reset", "connection_error")],
)
def test_retryable_answers_are_retried_until_delivered(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], failure: object, reason: str
) -> None:
    loki_sink.script = [failure, failure]
    ship = shipping()
    sent = ship.send(5)
    stats = ship.settled()
    assert messages(loki_sink) == sent, "delivered once, after the retries"
    assert stats.retries == {reason: 2} and stats.sent_lines == 5 and not stats.dropped
    assert len(loki_sink.requests) == 3


def test_backoff_is_jittered_from_its_minimum_and_stops_growing_at_its_cap(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping]
) -> None:
    """Pauses are jittered in [delay/2, delay], delay = 0.05 s doubling, capped at 0.1 s.

    Uncapped, the 5th and 6th pauses would be at least 0.4 and 0.8 s: the cap shows there (the
    bound leaves 0.2 s for a busy machine).
    """
    loki_sink.script = [503] * 6
    ship = shipping(backoff_min_seconds=0.05, backoff_max_seconds=0.1)
    ship.send(1)
    ship.settled()
    arrivals = [r.received_at for r in loki_sink.requests]
    assert len(arrivals) == 7
    pauses = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert min(pauses) >= 0.025 * 0.9, f"no pause shorter than half the minimum: {pauses}"
    assert max(pauses) < 0.3, f"no pause grows past the cap: {pauses}"


def test_a_batch_retried_past_max_retry_seconds_is_dropped_and_counted(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], capfd: pytest.CaptureFixture[str]
) -> None:
    loki_sink.default = 503
    ship = shipping(max_retry_seconds=0.1)
    ship.send(3)
    stats = ship.settled()
    assert stats.dropped == {"retries_exhausted": 3} and stats.sent_lines == 0
    assert stats.retries["server_error"] >= 2
    assert "gave up on 3 lines" in capfd.readouterr().err


@pytest.mark.parametrize(
    "answer, rejected",
    [
        ((400, "entry for stream has timestamp too old\ntotal ignored: 2 out of 3"), 2),
        ((400, "stream labels are invalid"), 3),
        ((401, "no org id"), 3),
    ],
)
def test_client_errors_are_never_retried_and_count_the_lines_loki_refused(
    loki_sink: FakeLoki,
    shipping: Callable[..., Shipping],
    capfd: pytest.CaptureFixture[str],
    answer: tuple[int, str],
    rejected: int,
) -> None:
    loki_sink.script = [answer]
    ship = shipping()
    ship.send(3)
    stats = ship.settled()
    assert len(loki_sink.requests) == 1, "not retried"
    assert stats.dropped == {"rejected": rejected} and stats.sent_lines == 3 - rejected
    assert not stats.retries
    err = capfd.readouterr().err
    assert f"HTTP {answer[0]}" in err and "total ignored" not in err, "Loki's reason, first line only"


@pytest.mark.parametrize(
    "too_large",
    [
        (
            500,
            "rpc error: code = ResourceExhausted desc = grpc: received message larger than max (4803609 vs. 4194304)",
        ),
        (413, "request entity too large"),
    ],
)
def test_a_push_too_large_is_split_in_halves_not_retried(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], too_large: tuple[int, str]
) -> None:
    loki_sink.script = [too_large]
    ship = shipping()
    sent = ship.send(40)
    stats = ship.settled()
    assert messages(loki_sink) == sent, "every line once, first half first"
    assert [len(p.entries) for p in loki_sink.pushes] == [20, 20]
    assert not stats.retries and not stats.dropped and stats.sent_batches == 2


def test_a_single_entry_too_large_is_dropped_and_counted(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping]
) -> None:
    loki_sink.default = (413, "request entity too large")
    ship = shipping()
    ship.send(1)
    stats = ship.settled()
    assert stats.dropped == {"too_large": 1} and len(loki_sink.requests) == 1


def test_with_a_spool_a_refused_batch_goes_to_disk_and_is_replayed_from_there(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], tmp_path: Path
) -> None:
    loki_sink.default = 503
    ship = shipping(spool_dir=str(tmp_path), backoff_min_seconds=0.05, backoff_max_seconds=0.05)
    sent = ship.send(30)

    def on_disk() -> int:
        return sum(int(p.name.split("-")[1].split(".")[0]) for p in tmp_path.rglob("*.json.gz"))

    wait_until(lambda: on_disk() == 30, 5, "the refused batch on disk")
    assert ship.buffer.buffered == (0, 0), "memory is free while Loki is away"
    ship.send(10, first=30)  # newer lines wait behind what is on disk
    time.sleep(0.1)
    assert loki_sink.entries == []
    loki_sink.default = 204
    ship.sender.stop(5.0)
    assert messages(loki_sink) == sent + [f"line {n:04d}" for n in range(30, 40)], "oldest first"
    stats = ship.stats.snapshot()
    assert stats.sent_lines == 40 and not stats.dropped and stats.retries["server_error"] >= 1
    assert on_disk() == 0, "replayed segments are removed"


# -- a sender that fails ---------------------------------------------------------------------


def _fail_on(real: Callable[..., object], error: Exception, calls: set[int]) -> Callable[..., object]:
    """``real``, raising ``error`` instead on the calls numbered in ``calls`` (the first is 1)."""
    made = 0

    def failing(*args: object) -> object:
        nonlocal made
        made += 1
        if made in calls:
            raise error
        return real(*args)

    return failing


def _fail_once(real: Callable[..., object], error: Exception) -> Callable[..., object]:
    return _fail_on(real, error, {1})


def _recording(real: Callable[[float], None], delays: list[float]) -> Callable[[float], None]:
    """``real`` (a pause of the sender), recording the delay it is asked for."""

    def pause(delay: float) -> None:
        delays.append(delay)
        real(delay)

    return pause


@pytest.mark.parametrize("where", ["between batches", "holding a batch"])
def test_a_sender_that_fails_is_restarted_counted_and_ships_on(
    loki_sink: FakeLoki,
    shipping: Callable[..., Shipping],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    where: str,
) -> None:
    ship = shipping()
    bug = RuntimeError("a bug in the sender")
    if where == "between batches":
        monkeypatch.setattr(ship.buffer, "take", _fail_once(ship.buffer.take, bug))
    else:
        push = ship.sender._push  # noqa: SLF001 - the failure put where the sender holds a batch
        monkeypatch.setattr(ship.sender, "_push", _fail_once(push, bug))
    first = ship.send(5)
    wait_until(lambda: ship.stats.snapshot().sender_restarts == 1, 5, "the failure counted as a restart")
    later = ship.send(5, first=5)
    stats = ship.settled()
    assert ship.sender.thread is not None and ship.sender.thread.is_alive()
    if where == "between batches":
        assert messages(loki_sink) == first + later and not stats.dropped
    else:
        assert messages(loki_sink) == later and stats.dropped == {"sender_error": 5}, "the batch it held, counted"
    assert "sender restarted" in capfd.readouterr().err


def test_stop_says_so_when_the_sender_thread_is_dead(loki_sink: FakeLoki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Sender, "_run", lambda self: None)  # a thread that ends without doing its work
    ship = Shipping(loki_sink)
    ship.send(3)
    assert ship.sender.thread is not None
    ship.sender.thread.join(2)
    assert ship.sender.stop(0.5) is False
    assert ship.buffer.buffered[0] == 3, "left for the caller to count"


def test_stop_says_so_when_the_sender_fails_while_flushing(
    loki_sink: FakeLoki, monkeypatch: pytest.MonkeyPatch
) -> None:
    ship = Shipping(loki_sink, batch_max_wait_seconds=30.0)

    def failing(entries: list[PushEntry], labels: dict[str, str]) -> tuple[int, str, str]:
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(ship.sender, "_push", failing)
    ship.send(3)
    assert ship.sender.stop(1.0) is False
    stats = ship.stats.snapshot()
    assert stats.dropped == {"sender_error": 3} and stats.sender_restarts == 1 and stats.sent_lines == 0


def test_the_restart_pause_is_back_at_its_minimum_once_a_batch_is_delivered_again(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three faults in a row pause 0.01, 0.02, then 0.04 s (the cap). A batch delivered after
    them shows the sender works again: the next, isolated, fault pauses the minimum again. (Never
    reset, every fault of a long-lived process would end up waiting the cap.)"""
    ship = shipping(backoff_min_seconds=0.01, backoff_max_seconds=0.04)
    pauses: list[float] = []
    monkeypatch.setattr(ship.sender, "_pause", _recording(ship.sender._pause, pauses))  # noqa: SLF001
    push = ship.sender._push  # noqa: SLF001 - the fault put where the sender holds a batch
    monkeypatch.setattr(ship.sender, "_push", _fail_on(push, RuntimeError("an isolated fault"), {1, 2, 3, 5}))

    def fault(n: int) -> None:  # one batch, one fault
        ship.send(1, first=n)
        wait_until(lambda: len(pauses) == n + 1, 5, f"restart {n + 1} paused")

    for n in range(3):
        fault(n)
    delivered = ship.send(1, first=3)
    wait_until(lambda: ship.stats.snapshot().sent_lines == 1, 5, "a batch delivered between the faults")
    ship.send(1, first=4)
    wait_until(lambda: len(pauses) == 4, 5, "the isolated fault paused")
    assert pauses == pytest.approx([0.01, 0.02, 0.04, 0.01])
    stats = ship.settled()
    assert messages(loki_sink) == delivered and stats.dropped == {"sender_error": 4} and stats.sender_restarts == 4


def test_the_replay_backoff_is_back_at_its_minimum_once_a_batch_is_delivered_again(
    loki_sink: FakeLoki, shipping: Callable[..., Shipping], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An outage: the spooled batch's replays are refused and wait 0.01, then 0.02 s; then the
    sender fails on that segment (moved aside, counted), so no replay ever succeeds. Loki takes
    the next batch: it is back. The first replay of a later outage waits the minimum again, not
    what the old outage had grown it to."""
    ship = shipping(spool_dir=str(tmp_path), backoff_min_seconds=0.01, backoff_max_seconds=0.04)
    replay_waits: list[float] = []
    monkeypatch.setattr(ship.sender, "_wait_spilling", _recording(ship.sender._wait_spilling, replay_waits))  # noqa: SLF001
    push = ship.sender._push  # noqa: SLF001 - the 4th push (the third replay) breaks the sender
    monkeypatch.setattr(ship.sender, "_push", _fail_on(push, RuntimeError("a fault on the segment"), {4}))
    loki_sink.script = [503, 503, 503]  # the batch, then two replays
    ship.send(1)
    wait_until(lambda: ship.stats.snapshot().dropped["spool_corrupt"] == 1, 5, "the segment moved aside")
    assert replay_waits == pytest.approx([0.01, 0.02])
    delivered = ship.send(1, first=1)
    wait_until(lambda: ship.stats.snapshot().sent_lines == 1, 5, "Loki back: a batch delivered")
    loki_sink.script = [503, 503]  # a later outage: the batch, then its first replay
    delivered += ship.send(1, first=2)
    wait_until(lambda: ship.stats.snapshot().sent_lines == 2, 5, "the later outage's batch replayed")
    stats = ship.stats.snapshot()
    assert replay_waits == pytest.approx([0.01, 0.02, 0.01])
    assert messages(loki_sink) == delivered and stats.dropped == {"spool_corrupt": 1}
