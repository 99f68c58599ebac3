"""The alert redirects (/go/last-failed, /go/lost-task, /go/slowest) against a real Loki (runs only
when LOKI_URL is set): lines in the library's shape are shipped by the library's own LokiHandler
(structured metadata as in production) under service and peer names of this run alone, then each
redirect of a trail web app reading that Loki is followed to the trail page it opens.

What the fake Loki can only imitate: that Loki's LogQL engine runs the queries as written (the
peer-with-port regex, the message regex of a lost task, ``max_over_time ... by (service_name)``
over more requests than Loki's 500-series limit, the float round trip of ``duration_ms >= x``).

Why pushed lines and not the alerts themselves: tests/stack/test_alert_links.py fires the real
alerts (Prometheus, Alertmanager, the chain) against the fake Loki, which takes well over a
minute; the links those alerts hold are the URLs followed here.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import flask.testing
import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.loki.handler import LokiHandler
from correlation.settings import LokiSettings
from fakes import wait_until
from fakes.trail_lines import access_line, log_line
from trail.alert_requests import slowest
from trail.links import trail_page_path
from trail.loki_query import LokiQueryClient
from trail.web.app import TrailWebSettings, create_app
from trail.window import NS, Window

pytestmark = [
    pytest.mark.real_loki,
    pytest.mark.skipif(not os.environ.get("LOKI_URL"), reason="needs a real Loki: set LOKI_URL"),
]

MS = 1_000_000
#: More requests than Loki's default max_query_series (500): a series per request would be refused.
SLOW_REQUESTS = 600
LOST_TASK = "notifications.send_confirmation"

Line = tuple[int, dict[str, Any]]


@dataclass
class Staged:
    """What was shipped: names of this run, the IDs each redirect must open, the window."""

    caller: str  # the service whose calls failed (DownstreamErrors' service)
    other_caller: str
    slow: str  # the service whose slowest request is looked for (HighLatencyP99's)
    inventory: str  # peer names of this run only: ServiceDown's link reads every caller
    payments: str
    expected: dict[str, str]
    durations: dict[str, tuple[str, float]]  # correlation ID -> (route, duration_ms) of `slow`
    window: dict[str, str]


def ship(settings: LokiSettings, service: str, lines: list[Line]) -> None:
    """``lines`` through the library's shipper, as a service named ``service`` would send them."""
    handler = LokiHandler(settings, {schema.SERVICE_LABEL: service, schema.ENV_LABEL: "alert-links-test"})
    try:
        for ts_ns, line in lines:
            handler.emit_line(ts_ns / 1e9, line[schema.LEVEL], json.dumps(line), line)
    finally:
        handler.close()  # flushes
    stats = handler.stats.snapshot()
    assert stats.sent_lines == len(lines) and not sum(stats.dropped.values()), stats


def failed(service: str, at_ns: int, peer: str | None, status: int = 502) -> tuple[str, Line]:
    cid = new_correlation_id(now_ms=at_ns // MS)
    ts, line = access_line(cid, secrets.token_hex(8), None, service, at_ns, 20.0, "POST", "/orders", status)
    line[schema.ORIGIN] = schema.ORIGIN_DOWNSTREAM if peer else schema.ORIGIN_SELF
    if peer:
        line[schema.FAILED_DOWNSTREAM] = peer
    line[schema.ERROR_TYPE] = "demo.calls.DownstreamError" if peer else "builtins.RuntimeError"
    return cid, (ts, line)


def lost(service: str, at_ns: int, task: str, reason: str) -> tuple[str, Line]:
    cid = new_correlation_id(now_ms=at_ns // MS)
    message = f"could not publish task {task} ({reason}): ConnectionError('refused')"
    return cid, log_line(cid, secrets.token_hex(8), None, service, at_ns, message, "ERROR", "correlation.celery")


@pytest.fixture(scope="module")
def staged() -> Iterator[Staged]:
    run = secrets.token_hex(4)
    caller, other_caller, slow = f"orders-{run}", f"gateway-{run}", f"inventory-{run}"
    inventory, payments = f"inventory-{run}", f"payments-{run}"
    settings = LokiSettings.from_env()
    settings = LokiSettings(**{**settings.__dict__, "batch_max_wait_seconds": 0.1})
    t0 = time.time_ns() - 300 * NS  # recent: a real Loki refuses lines older than its limits
    expected: dict[str, str] = {}
    caller_lines: list[Line] = []

    def add(key: str | None, made: tuple[str, Line]) -> None:
        if key:
            expected[key] = made[0]
        caller_lines.append(made[1])

    add(None, failed(caller, t0 + 10 * NS, inventory))
    add("payments", failed(caller, t0 + 20 * NS, payments))
    add("inventory", failed(caller, t0 + 25 * NS, f"{inventory}:8083"))  # never answered: named by address
    add(None, failed(caller, t0 + 28 * NS, f"{inventory}-two:8083"))  # not it: a name is matched whole
    add("own", failed(caller, t0 + 30 * NS, None, status=500))
    add(None, lost(caller, t0 + 5 * NS, LOST_TASK, "broker_unavailable"))
    add("lost", lost(caller, t0 + 15 * NS, LOST_TASK, "broker_unavailable"))
    add("invoice", lost(caller, t0 + 35 * NS, "notifications.send_invoice", "error"))  # the newest
    cid = new_correlation_id(now_ms=(t0 + 40 * NS) // MS)  # a success, newer than every failure
    caller_lines.append(access_line(cid, secrets.token_hex(8), None, caller, t0 + 40 * NS, 5.0, "POST", "/x", 201))
    down_cid, down_line = failed(other_caller, t0 + 45 * NS, inventory)  # ServiceDown: newest of any caller

    rng = random.Random(24)
    durations: dict[str, tuple[str, float]] = {}
    slow_lines: list[Line] = []
    for n in range(SLOW_REQUESTS):
        at = t0 + 50 * NS + n * 300 * MS
        cid = new_correlation_id(now_ms=at // MS)
        route = "/reservations" if n % 3 else "/stock"
        duration = round(rng.uniform(5, 3000 if n % 3 else 2000), 3)  # /stock's slowest is not the slowest
        durations[cid] = (route, duration)
        slow_lines.append(access_line(cid, secrets.token_hex(8), None, slow, at, duration, "POST", route, 201))
    # Slower, but not HTTP requests of the service: a task run of the same service, another service's.
    task_cid = new_correlation_id(now_ms=(t0 + 60 * NS) // MS)
    ts, task_run = access_line(task_cid, secrets.token_hex(8), None, slow, t0 + 60 * NS, 98_000.0, "POST", "t", 200)
    slow_lines.append((ts, {**task_run, schema.KIND: schema.KIND_TASK, schema.TASK: LOST_TASK}))
    other = access_line(down_cid, secrets.token_hex(8), None, other_caller, t0, 99_000.0, "POST", "/stock", 201)

    ship(settings, caller, sorted(caller_lines, key=lambda pair: pair[0]))
    ship(settings, other_caller, sorted([(down_line[0], down_line[1]), other], key=lambda pair: pair[0]))
    ship(settings, slow, sorted(slow_lines, key=lambda pair: pair[0]))
    expected["down"] = down_cid

    client = LokiQueryClient(settings)
    counted = {caller: len(caller_lines), other_caller: 2, slow: len(slow_lines)}

    def queryable() -> bool:  # ingested lines become queryable quickly, not instantly
        for service, count in counted.items():
            samples = client.query_vector(f'sum(count_over_time({{service_name="{service}"}}[10m]))', time.time_ns())
            if not samples or samples[0].value != count:
                return False
        return True

    wait_until(queryable, 30, "every shipped line queryable in Loki", interval=0.5)
    window = {"from": str((t0 - 60 * NS) // MS), "to": str(time.time_ns() // MS + 1000)}
    yield Staged(caller, other_caller, slow, inventory, payments, expected, durations, window)


@pytest.fixture(scope="module")
def web() -> flask.testing.FlaskClient:
    return create_app(TrailWebSettings(LokiSettings.from_env())).test_client()


def follow(web: flask.testing.FlaskClient, staged: Staged, redirect: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """The redirect followed to its trail page: (the ID it opens, that page's trail document)."""
    response = web.get(f"/go/{redirect}?{urlencode({**staged.window, **params}, doseq=True)}")
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    page = urlsplit(response.headers["Location"])
    cid = unquote(page.path.removeprefix("/t/"))
    assert response.headers["Location"] == trail_page_path(cid), "our IDs carry their own window"
    opened = web.get(f"{page.path}?format=json")
    assert opened.status_code == 200, opened.get_data(as_text=True)[:2000]
    document = opened.get_json()
    assert document["correlation_id"] == cid
    return cid, document


def the_hop(document: dict[str, Any]) -> dict[str, Any]:
    (hop,) = document["hops"]
    return dict(hop)


def test_last_failed_opens_the_callers_newest_failure_through_that_peer(
    web: flask.testing.FlaskClient, staged: Staged
) -> None:
    cid, document = follow(web, staged, "last-failed", service=staged.caller, peer=staged.inventory)
    assert cid == staged.expected["inventory"], "the newest through inventory, named with its port"
    hop = the_hop(document)
    assert (hop["service"], hop["status"]) == (staged.caller, 502)
    cid, _ = follow(web, staged, "last-failed", service=staged.caller, peer=staged.payments)
    assert cid == staged.expected["payments"]
    cid, document = follow(web, staged, "last-failed", service=staged.caller)
    assert cid == staged.expected["own"] and the_hop(document)["status"] == 500, "no peer: the newest failure"


def test_service_down_opens_the_newest_request_of_any_caller_that_could_not_reach_it(
    web: flask.testing.FlaskClient, staged: Staged
) -> None:
    cid, document = follow(web, staged, "last-failed", peer=[staged.inventory, "10.0.0.7:8083"])
    assert cid == staged.expected["down"] and the_hop(document)["service"] == staged.other_caller


def test_lost_task_opens_the_newest_request_that_could_not_queue_it(
    web: flask.testing.FlaskClient, staged: Staged
) -> None:
    cid, document = follow(web, staged, "lost-task", service=staged.caller, task=LOST_TASK)
    assert cid == staged.expected["lost"]
    (line,) = [line for hop in document["hops"] for line in hop["lines"]]
    assert f"could not publish task {LOST_TASK} (broker_unavailable)" in json.dumps(line)
    cid, _ = follow(web, staged, "lost-task", service=staged.caller, task="notifications.send_invoice", reason="error")
    assert cid == staged.expected["invoice"]
    cid, _ = follow(web, staged, "lost-task", service=staged.caller, reason="broker_unavailable")
    assert cid == staged.expected["lost"]
    cid, _ = follow(web, staged, "lost-task", service=staged.caller)
    assert cid == staged.expected["invoice"], "any task, any reason: the newest"


def test_slowest_opens_the_longest_request_checked_against_every_duration_sent(
    web: flask.testing.FlaskClient, staged: Staged
) -> None:
    sent = staged.durations
    slowest_id = max(sent, key=lambda c: sent[c][1])
    cid, document = follow(web, staged, "slowest", service=staged.slow)
    assert cid == slowest_id, f"{sent[cid] if cid in sent else cid} is not the slowest, {sent[slowest_id]}"
    assert the_hop(document)["service"] == staged.slow
    stock = max((c for c in sent if sent[c][0] == "/stock"), key=lambda c: sent[c][1])
    assert stock != slowest_id
    cid, _ = follow(web, staged, "slowest", service=staged.slow, route="/stock")
    assert cid == stock
    # The maximum Loki computed is the duration sent, to the last digit (the line query uses it).
    window = Window(int(staged.window["from"]) * MS, int(staged.window["to"]) * MS)
    found = slowest(LokiQueryClient(LokiSettings.from_env()), window, service=staged.slow)
    assert found is not None and found.duration_ms == sent[slowest_id][1]
