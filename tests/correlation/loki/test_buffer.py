"""correlation.loki.buffer.LineBuffer on its own: the byte bound, batches by size and by age, flush
(join), drain and close. The handler and the sender are tested elsewhere; here nothing is sent."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.loki.buffer import ENTRY_OVERHEAD, LineBuffer, PushEntry
from fakes import wait_until

pytestmark = pytest.mark.unit

#: Long enough that a batch never becomes due by age unless a test wants it to.
NEVER = 60.0


def entry(n: int, size: int = 10) -> PushEntry:
    """A distinct entry whose line is ``size`` characters."""
    return PushEntry.encode(1_000 + n, f"{n:0{size}d}"[-size:])


def lines(batch: list[PushEntry]) -> list[str]:
    return [e.decode()[0] for e in batch]


@pytest.fixture
def in_thread() -> Iterator[Callable[[Callable[[], object]], list[object]]]:
    """Run a call in a thread; its result lands in the returned list. Threads are joined at the end."""
    threads: list[threading.Thread] = []

    def start(call: Callable[[], object]) -> list[object]:
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
        thread.start()
        threads.append(thread)
        return result

    yield start
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive(), "a buffer call was left blocked"


# -- the bound -----------------------------------------------------------------------------------


def test_an_entry_costs_its_fragment_plus_a_fixed_overhead() -> None:
    one = PushEntry.encode(5, "hello", {"correlation_id": "abc"})
    assert one.decode() == ("hello", {"correlation_id": "abc"})
    assert one.size == len(one.fragment) + ENTRY_OVERHEAD
    buffer = LineBuffer(10_000)
    assert buffer.put(one) and buffer.buffered == (1, one.size)


def test_an_entry_holds_no_more_memory_than_it_is_counted_for() -> None:
    """The byte bound is memory held: an entry's fragment must not keep a JSON encoder's larger
    output buffer alive behind it (orjson's is 4 KiB and never trimmed: 7x the bound, measured)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        entries = [PushEntry.encode(n, f"line {n} " + "x" * 300, {"correlation_id": "c" * 32}) for n in range(2_000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = sum(e.size for e in entries)
    assert held <= counted, f"{held / len(entries):.0f} bytes held per entry, {counted / len(entries):.0f} counted"


def test_put_refuses_past_the_byte_bound_and_stores_nothing_of_it() -> None:
    size = entry(0).size
    buffer = LineBuffer(max_bytes=3 * size + size // 2)
    assert [buffer.put(entry(n)) for n in range(5)] == [True, True, True, False, False]
    assert buffer.buffered == (3, 3 * size)
    assert lines(buffer.take_now(10**6)) == [f"{n:010d}" for n in range(3)], "the refused ones were not kept"
    assert buffer.put(entry(9)), "room again once taken"


def test_put_refuses_once_closed() -> None:
    buffer = LineBuffer(10_000)
    buffer.close()
    assert not buffer.put(entry(0)) and buffer.buffered == (0, 0) and buffer.closed


# -- take: by size, by age, in order -------------------------------------------------------------------


def test_take_returns_at_once_when_enough_bytes_wait_and_keeps_the_rest() -> None:
    size = entry(0).size
    buffer = LineBuffer(10**6)
    for n in range(10):
        buffer.put(entry(n))
    started = time.monotonic()
    batch = buffer.take(max_bytes=4 * size, max_wait=NEVER)
    assert time.monotonic() - started < 1.0, "a full batch does not wait for its age"
    assert lines(batch) == [f"{n:010d}" for n in range(4)], "oldest first, at most max_bytes"
    assert buffer.buffered == (6, 6 * size)


def test_an_entry_bigger_than_a_batch_is_taken_alone_not_stuck() -> None:
    buffer = LineBuffer(10**6)
    buffer.put(entry(1, size=5_000))
    buffer.put(entry(2))
    assert lines(buffer.take(max_bytes=100, max_wait=NEVER)) == [f"{1:05000d}"]
    assert buffer.buffered[0] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=80), st.integers(1, 30_000))
def test_a_batch_is_the_longest_run_of_oldest_entries_that_fits(sizes: list[int], max_bytes: int) -> None:
    entries = [entry(n, size) for n, size in enumerate(sizes)]
    buffer = LineBuffer(10**9)
    for one in entries:
        buffer.put(one)
    expected: list[PushEntry] = []
    for one in entries:  # what fits, oldest first, and never nothing
        if expected and sum(e.size for e in expected) + one.size > max_bytes:
            break
        expected.append(one)
    assert buffer.take_now(max_bytes) == expected
    left = entries[len(expected) :]
    assert buffer.buffered == (len(left), sum(e.size for e in left))
    assert buffer.take_now(10**9) == left, "the rest stays, in order"


def test_a_small_batch_waits_until_its_oldest_line_is_old_enough() -> None:
    buffer = LineBuffer(10**6)
    buffer.put(entry(1))
    started = time.monotonic()
    batch = buffer.take(max_bytes=10**6, max_wait=0.1)
    waited = time.monotonic() - started
    assert lines(batch) == [f"{1:010d}"]
    assert 0.09 <= waited < 2.0, f"due by age after 0.1 s, took {waited:.3f} s"


def test_take_blocks_while_empty_until_a_put(in_thread: Callable[[Callable[[], object]], list[object]]) -> None:
    buffer = LineBuffer(10**6)
    taken = in_thread(lambda: buffer.take(max_bytes=10**6, max_wait=0.0))
    time.sleep(0.05)
    assert taken == [], "nothing to take yet"
    buffer.put(entry(7))
    wait_until(lambda: taken, 5, "take to return the entry put")
    assert lines(taken[0]) == [f"{7:010d}"]  # type: ignore[arg-type]


# -- join, done, drain, close ----------------------------------------------------------------------


def test_join_waits_until_every_entry_put_is_done(in_thread: Callable[[Callable[[], object]], list[object]]) -> None:
    buffer = LineBuffer(10**6)
    for n in range(3):
        buffer.put(entry(n))
    assert buffer.join(timeout=0.05) is False, "nothing was taken, let alone done"
    joined = in_thread(lambda: buffer.join(timeout=5))
    batch = buffer.take(max_bytes=10**6, max_wait=NEVER)  # join asked for a flush: due at once
    assert len(batch) == 3
    buffer.done(2)
    time.sleep(0.05)
    assert joined == [], "one entry is still in flight"
    buffer.done(1)
    wait_until(lambda: joined, 5, "join to return")
    assert joined == [True]


def test_drain_removes_what_waits_and_counts_it_done() -> None:
    buffer = LineBuffer(10**6)
    for n in range(4):
        buffer.put(entry(n))
    in_flight = buffer.take_now(entry(0).size)  # one taken, three waiting
    assert buffer.drain() == 3
    assert buffer.buffered == (0, 0)
    assert buffer.join(timeout=0.05) is False, "the taken entry is not done yet"
    buffer.done(len(in_flight))
    assert buffer.join(timeout=1) is True


def test_close_hands_out_what_is_left_then_an_empty_batch() -> None:
    buffer = LineBuffer(10**6)
    buffer.put(entry(1))
    buffer.close()
    started = time.monotonic()
    assert lines(buffer.take(max_bytes=10**6, max_wait=NEVER)) == [f"{1:010d}"], "no batching delay once closed"
    assert buffer.take(max_bytes=10**6, max_wait=NEVER) == []
    assert time.monotonic() - started < 1.0


def test_close_wakes_a_take_blocked_on_an_empty_buffer(
    in_thread: Callable[[Callable[[], object]], list[object]],
) -> None:
    buffer = LineBuffer(10**6)
    taken = in_thread(lambda: buffer.take(max_bytes=10**6, max_wait=NEVER))
    time.sleep(0.05)
    buffer.close()
    wait_until(lambda: taken, 5, "take to return after close")
    assert taken == [[]]


def test_wait_fill_reports_whether_the_threshold_was_reached() -> None:
    buffer = LineBuffer(10**6)
    buffer.put(entry(1))
    assert buffer.wait_fill(entry(1).size, timeout=0.01) is True
    started = time.monotonic()
    assert buffer.wait_fill(10 * entry(1).size, timeout=0.05) is False
    assert time.monotonic() - started >= 0.04
