"""Celery tasks in the trail, with the real parts: a real redis-server, the real notifications
worker (Celery, threads pool) and the demo chain under gunicorn, all shipping to the fake Loki.

The tests run in file order and share one stack; the last one of them restarts Redis. The very
last test brings its own Redis and worker (no chain) and stops that Redis under held retries.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from correlation import context, ids, schema
from correlation.integrations import celery as correlation_celery
from demo import local_worker, notifications
from demo.run_local import Chain, start_chain, wait_healthy
from demo.services import SERVICES
from fakes import FakeLoki, LoopbackServer, PushedEntry, QuietHandler, free_port, wait_until
from tests.support.broker import RETRY_ENV, Broker
from tests.support.fake_loki import fake_loki_fixture
from tests.support.stack import require_tool
from trail.log_line import parse_time_ns

pytestmark = pytest.mark.process

TASK = notifications.TASK_NAME


@dataclass
class Stack:
    chain: Chain
    worker: subprocess.Popen[bytes]
    worker_url: str
    logs: list[Path]

    def checkout(self) -> str:
        response = requests.post(f"{self.chain.urls['gateway']}/checkout", timeout=10)
        assert response.status_code == 201, response.text
        return response.headers[schema.CORRELATION_HEADER]

    def faults(self, **values: Any) -> None:
        assert requests.post(f"{self.worker_url}/admin/faults", json=values, timeout=5).status_code == 200

    def worker_metrics(self) -> str:
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        return requests.get(f"{self.worker_url}/metrics", headers=accept, timeout=5).text


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    require_tool("redis-server")  # never a skip: `make test` installs it
    root = tmp_path_factory.mktemp("redis")
    with (root / "redis.log").open("wb") as log:
        running = Broker(free_port(), root, log)
        running.start()
        yield running
        running.stop()


sink = fake_loki_fixture(scope="module")


@pytest.fixture(scope="module")
def stack(broker: Broker, sink: FakeLoki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The chain with orders publishing to ``broker``, and the worker consuming from it."""
    root = tmp_path_factory.mktemp("celery-stack")
    env = {
        "LOKI_URL": sink.url,
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2",
        "DEPLOY_ENV": "test",
        "CELERY_BROKER_URL": broker.url,
    }
    with (root / "services.log").open("wb") as chain_log, (root / "worker.log").open("wb") as worker_log:
        chain = start_chain({name: free_port() for name in SERVICES}, env, stdout=chain_log)
        port = free_port()
        worker = local_worker.start_worker(
            port, {**env, **RETRY_ENV, "INVENTORY_URL": chain.urls["inventory"]}, stdout=worker_log
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", worker, timeout=30)
        except BaseException:
            local_worker.stop(worker, 5)
            chain.stop(timeout=10)
            raise
        # The worker's log last: Stack.logs[-1] is the worker's.
        yield Stack(chain, worker, f"http://127.0.0.1:{port}", [root / "services.log", root / "worker.log"])
        worker_code = local_worker.stop(worker, timeout=20)
        codes = chain.stop()
    assert worker_code == 0, f"the worker did not stop cleanly: {worker_code}"
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"


@pytest.fixture
def publisher() -> Iterator[Any]:
    """A Celery app in this process publishing to the broker with the integration installed, the
    way Celery beat or a shell would: outside any request."""
    correlation_celery.install()
    yield
    correlation_celery.uninstall()


# -- reading the trail back -------------------------------------------------------------------------


def lines_of(sink: FakeLoki, cid: str) -> list[dict[str, Any]]:
    return [e.json for e in sink.entries if e.metadata.get(schema.CORRELATION_ID) == cid]


def task_runs(entries: list[PushedEntry], **match: Any) -> list[dict[str, Any]]:
    """The task access lines whose fields match, by attempt."""
    runs = [
        e.json
        for e in entries
        if e.json.get(schema.LOGGER) == schema.ACCESS_LOGGER
        and e.json.get(schema.KIND) == schema.KIND_TASK
        and all(e.json.get(k) == v for k, v in match.items())
    ]
    return sorted(runs, key=lambda line: line[schema.ATTEMPT])


def wait_runs(sink: FakeLoki, count: int, match: dict[str, Any], timeout: float = 15) -> list[dict[str, Any]]:
    """The task runs matching ``match`` (schema keys: a mapping, so it cannot fill ``timeout``) once
    there are ``count``."""
    entries = sink.wait_for(lambda es: len(task_runs(es, **match)) >= count, timeout=timeout)
    return task_runs(entries, **match)


def _carries_an_id(line: str) -> bool:
    try:
        return bool(json.loads(line).get(schema.CORRELATION_ID))
    except ValueError:
        return False


def access(lines: list[dict[str, Any]], service: str, route: str | None = None) -> dict[str, Any]:
    (line,) = [
        x
        for x in lines
        if x[schema.LOGGER] == schema.ACCESS_LOGGER
        and x[schema.SERVICE] == service
        and (route is None or x.get(schema.ROUTE) == route)
    ]
    return line


# -- the tests --------------------------------------------------------------------------------------


def trail_json(
    sink: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[dict[str, Any], str]:
    """``trail ... --json`` against the sink: the document and what it said on stderr."""
    from trail.cli.main import main as trail_main

    monkeypatch.setenv("LOKI_URL", sink.url)
    assert trail_main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_checkout_reaches_the_worker_with_the_right_parent(
    stack: Stack, sink: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = stack.checkout()
    (run,) = wait_runs(sink, 1, {schema.CORRELATION_ID: cid})
    lookup = "/reservations/{reservation_id}"  # inventory is FastAPI: its template syntax
    # Each service ships its own batches: wait for both access lines, not only the later one.
    wanted = {("inventory", lookup), ("orders", "/orders")}

    def both_arrived(entries: list[Any]) -> bool:
        seen = {
            (e.json.get(schema.SERVICE), e.json.get(schema.ROUTE))
            for e in entries
            if e.json.get(schema.CORRELATION_ID) == cid and e.json.get(schema.LOGGER) == schema.ACCESS_LOGGER
        }
        return wanted <= seen

    sink.wait_for(both_arrived)
    lines = lines_of(sink, cid)
    orders, inventory = access(lines, "orders"), access(lines, "inventory", lookup)
    assert run[schema.PARENT_REQUEST_ID] == orders[schema.REQUEST_ID], "the publishing hop is the task's parent"
    assert (run[schema.SERVICE], run[schema.CALLER], run[schema.TASK]) == ("notifications", "orders", TASK)
    assert (run[schema.STATE], run[schema.STATUS], run[schema.ATTEMPT], run[schema.QUEUE]) == (
        "success",
        200,
        1,
        "notifications",
    )
    assert run[schema.QUEUE_WAIT_MS] >= 0 and run[schema.DURATION_MS] > 0
    assert run[schema.PUBLISHED_AT] <= run[schema.TIME], "published before the run ended"
    # Every line the run wrote, from any logger (the demo's, Celery's own), carries the hop.
    worker_lines = [x for x in lines if x[schema.SERVICE] == "notifications"]
    assert {x[schema.REQUEST_ID] for x in worker_lines} == {run[schema.REQUEST_ID]}
    assert {x[schema.LOGGER] for x in worker_lines} >= {"demo", "celery.app.trace", schema.ACCESS_LOGGER}
    assert all(x[schema.PARENT_REQUEST_ID] == orders[schema.REQUEST_ID] for x in worker_lines)
    # queue -> worker -> HTTP: the worker's call to inventory is a child of the task's hop.
    assert inventory[schema.PARENT_REQUEST_ID] == run[schema.REQUEST_ID] and inventory[schema.CALLER] == "notifications"
    assert f'# {{correlation_id="{cid}"}}' in stack.worker_metrics(), "task metrics carry the ID as exemplar"
    # trail: the task is an asynchronous hop under orders, started when orders published it.
    document, _ = trail_json(sink, monkeypatch, capsys, cid)
    hops = {hop["request_id"]: hop for hop in document["hops"]}
    task_hop = hops[run[schema.REQUEST_ID]]
    assert document["complete"] and (task_hop["async"], task_hop["depth"], task_hop["state"]) == (True, 2, "success")
    assert hops[orders[schema.REQUEST_ID]]["children"][-1] == task_hop["request_id"], "published last"
    assert hops[inventory[schema.REQUEST_ID]]["parent_request_id"] == task_hop["request_id"]
    published_ns, start_ns = parse_time_ns(run[schema.PUBLISHED_AT]), parse_time_ns(task_hop["start"])
    assert published_ns is not None and start_ns is not None
    assert abs(start_ns - published_ns) < 5_000_000, "its start is the publish time"


def test_a_task_published_outside_a_request_gets_a_fresh_id(
    stack: Stack, sink: FakeLoki, broker: Broker, publisher: Any
) -> None:
    app = notifications.make_celery(broker.url)
    assert context.current() is None, "beat-style: no request, no task around the publish"
    sent = [app.send_task(TASK, kwargs={"order_id": f"beat-{n}", "reservation_id": "r1"}).id for n in range(2)]
    runs = [wait_runs(sink, 1, {schema.TASK_ID: task_id})[0] for task_id in sent]
    first, second = (run[schema.CORRELATION_ID] for run in runs)
    assert first != second, "each publish starts its own trail"
    assert all(ids.time_of(run[schema.CORRELATION_ID]) is not None for run in runs), "IDs of ours, with their time"
    assert all(run[schema.PARENT_REQUEST_ID] is None and run[schema.STATE] == "success" for run in runs)
    assert all(run[schema.CALLER] == context.service() for run in runs)


def test_a_hostile_header_is_replaced_logged_escaped_and_counted(
    stack: Stack, sink: FakeLoki, broker: Broker, publisher: Any
) -> None:
    app = notifications.make_celery(broker.url)
    hostile = {
        schema.CORRELATION_HEADER: "evil\x1b[31m\nX-Injected: 1" + "x" * 100,
        schema.PARENT_HEADER: ["not", "text"],
        schema.PUBLISHED_AT_HEADER: "yesterday",
    }
    task_id = app.send_task(TASK, kwargs={"order_id": "hostile", "reservation_id": "r2"}, headers=hostile).id
    (run,) = wait_runs(sink, 1, {schema.TASK_ID: task_id})
    cid = run[schema.CORRELATION_ID]
    assert ids.time_of(cid) is not None, "replaced by a fresh ID of ours"
    assert run[schema.STATE] == "success", "the task still runs"
    assert run[schema.PARENT_REQUEST_ID] is None and run[schema.QUEUE_WAIT_MS] is None
    warnings = [x[schema.MESSAGE] for x in lines_of(sink, cid) if x[schema.LEVEL] == "WARNING"]
    assert len(warnings) == 3, warnings
    assert any("\\x1b[31m\\nX-Injected" in w and "too_long" in w for w in warnings), "escaped, never raw"
    assert not any("\x1b" in w or "\n" in w for w in warnings)
    assert any("<list> ['not', 'text']" in w for w in warnings) and any("bad_published_at" in w for w in warnings)
    counted = {
        line.split("{", 1)[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in stack.worker_metrics().splitlines()
        if line.startswith("correlation_rejected_ids_total{")
    }
    assert counted['reason="too_long",service="notifications"'] >= 1
    assert counted['reason="bad_characters",service="notifications"'] >= 1
    assert counted['reason="bad_published_at",service="notifications"'] >= 1


def test_a_retry_is_a_new_hop_and_a_failing_task_is_the_last_error(
    stack: Stack, sink: FakeLoki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.faults(error_rate=1.0)
    try:
        cid = stack.checkout()  # the HTTP chain answers 201: only the task fails
        attempts = wait_runs(sink, 3, {schema.CORRELATION_ID: cid})
    finally:
        stack.faults(error_rate=0.0)
    assert [(r[schema.STATE], r[schema.STATUS], r[schema.ATTEMPT]) for r in attempts] == [
        ("retry", 202, 1),
        ("retry", 202, 2),
        ("failure", 500, 3),
    ]
    assert len({r[schema.REQUEST_ID] for r in attempts}) == 3 and len({r[schema.TASK_ID] for r in attempts}) == 1
    orders = access(lines_of(sink, cid), "orders")
    parents = [r[schema.PARENT_REQUEST_ID] for r in attempts]
    assert parents == [orders[schema.REQUEST_ID], attempts[0][schema.REQUEST_ID], attempts[1][schema.REQUEST_ID]]
    assert attempts[2][schema.ORIGIN] == "self"
    # The failed run names its exception's type, in the line and in Loki's metadata; retries do not.
    assert attempts[2][schema.ERROR_TYPE] == "demo.faults.InjectedFault"
    assert [schema.ERROR_TYPE in r for r in attempts] == [False, False, True]
    (failed_entry,) = [
        e
        for e in sink.entries
        if e.json.get(schema.REQUEST_ID) == attempts[2][schema.REQUEST_ID]
        and e.json.get("logger") == schema.ACCESS_LOGGER
    ]
    assert failed_entry.metadata[schema.ERROR_TYPE] == "demo.faults.InjectedFault"
    failed_hop = [x for x in lines_of(sink, cid) if x[schema.REQUEST_ID] == attempts[2][schema.REQUEST_ID]]
    assert any("InjectedFault" in x.get(schema.EXCEPTION, "") for x in failed_hop), (
        "Celery's own error line, in the hop"
    )
    assert all(x[schema.STATUS] < 500 for x in lines_of(sink, cid) if x.get(schema.METHOD)), "every HTTP hop answered"
    metrics = stack.worker_metrics()
    assert f'task_failures_total{{origin="self",service="notifications",task="{TASK}"}}' in metrics
    assert (
        f'correlation_last_failed_request{{correlation_id="{cid}",route="{TASK}",service="notifications",status="500"}}'
        in metrics
    )
    for args in (["--last-error"], ["--last-error", "--service", "notifications"]):
        document, err = trail_json(sink, monkeypatch, capsys, *args)
        assert f"most recent failed request: {cid}" in err
        hops = {hop["request_id"]: hop for hop in document["hops"]}
        assert [hops[r[schema.REQUEST_ID]]["depth"] for r in attempts] == [2, 3, 4]
        assert all(hops[r[schema.REQUEST_ID]]["async"] for r in attempts)


def test_redis_restarted_mid_run_tasks_resume_and_no_line_is_lost(stack: Stack, sink: FakeLoki, broker: Broker) -> None:
    stack.faults(latency_ms=800)  # a run in progress while Redis goes away
    before = stack.checkout()
    sink.wait_for(
        lambda es: any(
            "sending confirmation" in e.json.get(schema.MESSAGE, "")
            for e in es
            if e.json.get(schema.CORRELATION_ID) == before
        )
    )
    assert broker.stop() == 0
    started = time.monotonic()
    during = stack.checkout()  # no broker: the order still succeeds, the lost task is logged and counted
    assert time.monotonic() - started < 5, "a broker outage must not hold the checkout"
    broker.start()
    stack.faults(latency_ms=0)
    after = stack.checkout()  # published right away; the worker takes it once it has reconnected
    for cid in (before, after):
        (run,) = wait_runs(sink, 1, {schema.CORRELATION_ID: cid}, timeout=20)
        assert run[schema.STATE] == "success"
    lost = [x for x in lines_of(sink, during) if x[schema.SERVICE] == "orders" and x[schema.LEVEL] == "ERROR"]
    assert len(lost) == 1 and "could not publish task" in lost[0][schema.MESSAGE], lost
    assert not task_runs(sink.entries, **{schema.CORRELATION_ID: during})
    orders_metrics = requests.get(f"{stack.chain.urls['orders']}/metrics", timeout=5).text
    assert (
        f'task_publish_failures_total{{reason="broker_unavailable",service="orders",task="{TASK}"}} 1.0'
        in orders_metrics
    )

    def written() -> Counter[str]:
        """Every JSON line the worker wrote to stdout so far, and every request's line the services
        wrote (their gunicorn masters log to stdout only: they serve no request)."""
        found: Counter[str] = Counter()
        for path in stack.logs:
            text = path.read_text(errors="replace")
            lines = text.splitlines()[: None if text.endswith("\n") else -1]  # not a line being written
            json_lines = [line for line in lines if line.startswith("{") and line.endswith("}")]
            found.update(line for line in json_lines if path == stack.logs[-1] or _carries_an_id(line))
        return found

    def missing() -> Counter[str]:
        return written() - Counter(e.line for e in sink.entries)

    try:
        wait_until(lambda: not missing(), timeout=10, what="every line written to stdout to reach Loki")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing: {list(missing())[:5]}") from None
    assert sum(written().values()) > 100, "the check covered the services' request lines and the worker's"


#: Retries held long enough to stop Redis under them (4 s countdown), delivered again 6 s after the
#: worker took them (the visibility timeout must exceed the countdown).
HELD_RETRY_ENV = {"TASK_MAX_RETRIES": "2", "TASK_RETRY_DELAY_SECONDS": "4", "BROKER_VISIBILITY_TIMEOUT_SECONDS": "6"}


class Reservations(QuietHandler):
    """inventory's ``GET /reservations/<id>``, all the task needs of it."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.reply(200, {"status": "held"})


def test_redis_lost_under_held_retries_the_worker_survives_and_runs_each_once(
    sink: FakeLoki, publisher: Any, tmp_path: Path
) -> None:
    """A retry waiting for its countdown is a message the worker holds unacknowledged. With Celery
    5.7.0, Redis stopping under such messages made the worker exit (AttributeError while closing
    the lost connection: demo.broker.RedisTransport). Now it reconnects, and Redis delivers
    them again after the visibility timeout: every task's retry runs, after the restart, once."""

    def run_of(task_id: str, state: str) -> list[dict[str, Any]]:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}; its log: {worker_path}")
        return task_runs(sink.entries, **{schema.TASK_ID: task_id, schema.STATE: state})

    worker_path = tmp_path / "worker.log"
    with (
        (tmp_path / "redis.log").open("wb") as redis_log,
        worker_path.open("wb") as worker_log,
        LoopbackServer(Reservations) as inventory,
    ):
        own = Broker(free_port(), tmp_path, redis_log)
        own.start()
        env = {"LOKI_URL": sink.url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"}
        env |= {"CELERY_BROKER_URL": own.url, "INVENTORY_URL": inventory.url, "FAULT_ERROR_RATE": "1"}
        port = free_port()
        worker = local_worker.start_worker(port, {**env, **HELD_RETRY_ENV}, stdout=worker_log)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", worker, timeout=30)
            app = notifications.make_celery(own.url)
            sent = [app.send_task(TASK, kwargs={"order_id": f"held-{n}", "reservation_id": "r"}).id for n in range(3)]
            for task_id in sent:
                wait_until(partial(run_of, task_id, "retry"), 10, f"task {task_id}'s first attempt to be retried")
            assert requests.post(f"http://127.0.0.1:{port}/admin/faults", json={"error_rate": 0}, timeout=5).ok
            assert own.stop() == 0  # within the countdown: the worker holds all three retries
            wait_until(
                lambda: worker.poll() is not None or b"Connection to broker lost" in worker_path.read_bytes(),
                10,
                "the worker to notice that Redis is gone",
            )
            own.start()
            restarted_ns = time.time_ns()
            runs = [wait_until(partial(run_of, task_id, "success"), 15, f"task {task_id} to run") for task_id in sent]
        finally:
            worker_code = local_worker.stop(worker, timeout=10)
            if own.proc is not None and own.proc.poll() is None:
                own.stop()
    assert worker_code == 0, f"the worker did not stop cleanly: {worker_code}"
    assert [len(run) for run in runs] == [1, 1, 1], "each retry runs once"
    for (run,) in runs:
        ran_ns = parse_time_ns(run[schema.TIME])
        assert run[schema.ATTEMPT] == 2 and ran_ns is not None and ran_ns > restarted_ns, (
            "the retry ran after Redis was back (it was held while Redis was down)"
        )
