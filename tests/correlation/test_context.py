"""The context: bind/reset, bound blocks, and carrying the hop into other threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import correlation
from correlation import context

pytestmark = pytest.mark.unit


def test_no_hop_outside_a_request() -> None:
    assert context.current() is None and context.correlation_id() is None


def test_bind_and_reset_restore_the_previous_hop() -> None:
    outer = context.Hop.start("outer")
    token = context.bind(outer)
    inner_token = context.bind(context.Hop.start("inner", parent_request_id=outer.request_id))
    assert context.correlation_id() == "inner"
    context.reset(inner_token)
    assert context.current() is outer
    context.reset(token)
    assert context.current() is None


def test_bound_starts_a_fresh_hop_for_background_work() -> None:
    with context.bound() as hop:
        assert context.current() is hop
        assert correlation.time_of(hop.correlation_id) is not None
        assert hop.parent_request_id is None
    assert context.current() is None


def test_threads_do_not_inherit_the_hop_unless_wrapped() -> None:
    seen: dict[str, object] = {}
    with context.bound(context.Hop.start("req-1")):
        plain = threading.Thread(target=lambda: seen.update(plain=context.correlation_id()))
        # Wrapped before it is handed to Thread: inside Thread(target=...) mypy cannot infer the lambda.
        in_hop = context.wrap(lambda: seen.update(wrapped=context.correlation_id()))
        wrapped = threading.Thread(target=in_hop)
        for thread in (plain, wrapped):
            thread.start()
        for thread in (plain, wrapped):
            thread.join()
    assert seen == {"plain": None, "wrapped": "req-1"}


def test_submit_keeps_each_requests_hop_in_a_shared_pool() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {}
        for n in range(20):
            with context.bound(context.Hop.start(f"req-{n}")):
                futures[f"req-{n}"] = context.submit(pool, context.correlation_id)
        assert all(future.result() == expected for expected, future in futures.items())
        # The pool's threads are left clean between tasks.
        assert pool.submit(context.correlation_id).result() is None


def test_a_wrapped_callable_may_run_in_many_threads_at_once() -> None:
    barrier = threading.Barrier(4)
    results = []

    def work() -> None:
        barrier.wait(5)
        results.append(context.correlation_id())

    with context.bound(context.Hop.start("shared")):
        task = context.wrap(work)
    threads = [threading.Thread(target=task) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["shared"] * 4
