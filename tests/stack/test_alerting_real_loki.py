"""The whole alerting path against a real Loki: the demo chain under gunicorn and the notifications
worker (Celery, on a private redis-server) ship their lines to it, a real Prometheus evaluates the
repository's rules (only `for` shortened, tests/support/alerting.py), a real Alertmanager
(alerts/alertmanager.yml, only the webhook's address changed) routes to the notifier, which reads
that Loki, and a fake chat webhook gets the pages. Runs with LOKI_BIN (the test starts its own
Loki from loki/loki.yaml) or LOKI_URL; skipped without either.

Three faults, one at a time, each page checked against what Loki holds:
- payments fails half its requests: HighErrorRatio pages naming payments' hop and InjectedFault;
- the worker fails every run of its task: TaskFailures pages naming the failed run's hop;
- payments fails again, now not scraped ("not monitored here"): DownstreamErrors pages for orders
  naming payments, the hop where its checkouts broke.

For each: the notification's `failures` (counts by error type, requests, share) equal the lines
read back from Loki over the notification's own window, and include every failure the test's
traffic saw; every trail link, the notification's and the alert's own (`/t/<id>`,
`/go/last-failed`, Grafana's Explore query), leads in trail-web reading that Loki to a request that
really failed, whose hops are the lines Loki holds. On the test's own Loki (LOKI_BIN) the counts
are exactly this traffic's failures and each link opens one of its requests; a shared Loki
(LOKI_URL) holds what other runs wrote under the demo's service names within the notifier's 15
minutes, which the notifier may rightly count and name.

The traffic stops once the alert is pending and a few requests have failed, seconds before it can
fire: by the time the notifier counts, every line is in Loki, so the counts can be compared
exactly. The rules' 5-minute rates keep the alert active without traffic.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import flask.testing
import pytest

from correlation import schema
from correlation.ids import time_ms_of
from correlation.settings import LokiSettings
from demo import notifications
from demo.run_local import Chain
from demo.services import SERVICES
from fakes import FakeWebhook, wait_until
from tests.support.alerting import (
    TRAIL_WEB,
    NotifierRun,
    Traffic,
    alerting_stack,
    critical_alerts,
    pages,
    running_notifier,
    set_faults,
    start_task_chain,
)
from tests.support.broker import RETRY_ENV
from tests.support.grafana import explore_exprs, parse_explore_url, provisioned_datasource_uids
from tests.support.real_loki import LOKI_BIN, needs_real_loki, real_loki
from tests.support.stack import http_get_json, instant_query, require_tool
from trail.loki_query import LokiQueryClient
from trail.web.app import TrailWebSettings, create_app
from trail.window import NS

pytestmark = needs_real_loki

TASK = notifications.TASK_NAME
INJECTED_FAULT = "demo.faults.InjectedFault"
DOWNSTREAM_ERROR = "demo.calls.DownstreamError"
#: Deadlines: generous, other test sessions share this 2-core machine.
ALERT_DEADLINE_SECONDS = 90.0
#: Failures a fault makes before the traffic stops (with the alert pending), well before the alert
#: can fire: ratios need no more than a few, and TaskFailures' `increase(...) > 2` then still
#: holds without traffic (Prometheus' increase does not count a new series' first value).
FEW_FAILURES, TASK_FAILURES = 3, 6
#: The traffic stops at least this long before the notifier gets the alert, so every line the
#: notifier counts is in Loki by then (lines leave every 0.2 s): the counts compare exactly.
QUIET_BEFORE_ALERT_SECONDS = 1.0
#: The status each hop of a checkout answers when payments fails it.
FAILED_CHECKOUT = {"gateway": 502, "orders": 502, "payments": 500, "inventory": 201}
#: Read back at most this many lines of a service (Loki's default max_entries_limit_per_query).
READ_BACK_LIMIT = 5000


@dataclass
class Demo:
    chain: Chain
    worker_url: str
    loki: str
    own_loki: bool  # started by this test: every line in it is this test's


@dataclass
class Incident:
    """One fault's page as the chat webhook got it, the alert as Alertmanager sent it, and the
    traffic that ran while it failed."""

    page: dict[str, Any]
    alert: dict[str, Any]
    traffic: Traffic
    #: From the traffic's stop to the notifier's receipt of the alert.
    quiet_seconds: float
    #: Unix ns when the page was seen, before anything else ran: the lines the notifier counted
    #: are the ones written by then (the count's window ends on the next whole second, and the
    #: next step of the test writes lines of its own).
    seen_ns: int


@dataclass
class Incidents:
    high_error_ratio: Incident
    task_failures: Incident
    downstream_errors: Incident
    #: Every page, in order, of the first stack (payments, then the worker) and of the second.
    first_pages: list[tuple[str, str]]
    second_pages: list[tuple[str, str]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The chain and the worker shipping to the real Loki, the broker between them."""
    require_tool("redis-server")  # never a skip: `make test` installs it
    root = tmp_path_factory.mktemp("alerting-real-loki")
    codes: dict[str, int | None] = {}
    with (
        real_loki(root) as loki,
        ExitStack() as started,  # every process started here is stopped here, last first
    ):
        demo = start_task_chain(started, root, loki, codes)
        chain, worker_url = demo.chain, demo.worker_url
        yield Demo(chain, worker_url, loki, bool(LOKI_BIN))
    assert codes == {name: 0 for name in [*SERVICES, "worker"]}, f"processes did not stop cleanly: {codes}"


def diagnostics(prometheus: str, run: NotifierRun) -> str:
    alerts = http_get_json(prometheus + "/api/v1/alerts")["data"]["alerts"]
    return f"prometheus alerts: {[(a['labels'], a['state']) for a in alerts]}\nnotifier: {run.out.getvalue()[-3000:]}"


def fail_until_pending(
    prometheus: str, run: NotifierRun, gateway: str, alertname: str, service: str, failures: str, count: int
) -> tuple[Traffic, float]:
    """Checkout traffic until ``alertname`` for ``service`` is pending (or firing) and ``failures``
    (PromQL) reached ``count``; then the traffic stops. Its record, and when it stopped
    (``time.monotonic()``)."""
    traffic = Traffic(gateway).start()
    enough = f"sum(increase({failures}[5m])) >= {count}"

    def pending() -> bool:
        active = any((name, svc) == (alertname, service) for name, svc, _ in critical_alerts(prometheus))
        return active and bool(instant_query(prometheus, enough)["result"])

    try:
        wait_until(pending, ALERT_DEADLINE_SECONDS, f"{alertname} for {service} to be pending", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(prometheus, run)}") from None
    finally:
        traffic.stop()
    assert not traffic.problems, traffic.problems[:5]
    return traffic, time.monotonic()


def wait_for_page(
    chat: FakeWebhook,
    prometheus: str,
    run: NotifierRun,
    alertname: str,
    service: str,
    traffic: tuple[Traffic, float],
) -> Incident:
    """The page of ``alertname`` for ``service`` at the chat webhook, and the alert behind it."""

    def arrived() -> dict[str, Any] | None:
        return next((b for _, b in pages(chat) if (b["alertname"], b["service"]) == (alertname, service)), None)

    try:
        page = wait_until(arrived, ALERT_DEADLINE_SECONDS, f"{alertname} for {service} to page", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(prometheus, run)}") from None
    seen_ns = time.time_ns()
    record, stopped = traffic
    quiet = run.received[(alertname, service, "firing")] - stopped
    print(f"\n{alertname} for {service} ({quiet:.1f} s after the traffic stopped), as the chat got it:\n{page['text']}")
    alert = next(
        alert
        for payload in run.notifier.snapshot()[0]
        for alert in payload["alerts"]
        if (alert["labels"]["alertname"], alert["labels"].get("service"), alert["status"])
        == (alertname, service, "firing")
    )
    return Incident(page, dict(alert), record, quiet, seen_ns)


@pytest.fixture(scope="module")
def incidents(demo: Demo) -> Iterator[Incidents]:
    urls = demo.chain.urls
    try:
        chat = FakeWebhook()
        with (
            chat.server,
            running_notifier(demo.loki, chat.server.url) as run,
            alerting_stack(urls, run.url, run.token_file, worker_url=demo.worker_url) as (prom, _, _),
        ):
            set_faults(urls["payments"], error_rate=0.5)
            failures = 'http_server_errors_total{service="payments",origin="self"}'
            traffic = fail_until_pending(
                prom, run, urls["gateway"], "HighErrorRatio", "payments", failures, FEW_FAILURES
            )
            high_error_ratio = wait_for_page(chat, prom, run, "HighErrorRatio", "payments", traffic)
            set_faults(urls["payments"], error_rate=0.0)

            set_faults(demo.worker_url, error_rate=1.0)  # every run fails on its own, after its retries
            failures = f'task_failures_total{{service="notifications",task="{TASK}",origin="self"}}'
            traffic = fail_until_pending(
                prom, run, urls["gateway"], "TaskFailures", "notifications", failures, TASK_FAILURES
            )
            task_failures = wait_for_page(chat, prom, run, "TaskFailures", "notifications", traffic)
            set_faults(demo.worker_url, error_rate=0.0)
            first_pages = [(b["alertname"], b["service"]) for _, b in pages(chat)]

        # A fresh Prometheus that does not scrape payments: its failures are not in its rates.
        chat = FakeWebhook()
        with (
            chat.server,
            running_notifier(demo.loki, chat.server.url) as run,
            alerting_stack(urls, run.url, run.token_file, unscraped=frozenset({"payments"})) as (prom, _, _),
        ):
            set_faults(urls["payments"], error_rate=0.5)
            failures = 'http_server_errors_total{service="orders",origin="downstream"}'
            traffic = fail_until_pending(
                prom, run, urls["gateway"], "DownstreamErrors", "orders", failures, FEW_FAILURES
            )
            downstream_errors = wait_for_page(chat, prom, run, "DownstreamErrors", "orders", traffic)
            set_faults(urls["payments"], error_rate=0.0)
            second_pages = [(b["alertname"], b["service"]) for _, b in pages(chat)]
        yield Incidents(high_error_ratio, task_failures, downstream_errors, first_pages, second_pages)
    finally:
        set_faults(urls["payments"], error_rate=0.0)
        set_faults(demo.worker_url, error_rate=0.0)


@pytest.fixture(scope="module")
def web(demo: Demo) -> flask.testing.FlaskClient:
    """trail-web reading the real Loki."""
    return create_app(TrailWebSettings(LokiSettings(url=demo.loki))).test_client()


@pytest.fixture(scope="module")
def loki(demo: Demo) -> LokiQueryClient:
    return LokiQueryClient(LokiSettings(url=demo.loki))


# --- reading back from Loki ------------------------------------------------------------------------


def parse_time_ns(text: str) -> int:
    """The ns of a notification's time (``...:SS.ffffffZ``)."""
    whole, fraction = text.removesuffix("Z").split(".")
    return int(datetime.fromisoformat(whole + "+00:00").timestamp()) * NS + int(fraction.ljust(9, "0")[:9])


def access_lines(loki: LokiQueryClient, service: str, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """Every access line of ``service`` with its time in (start_ns, end_ns], read back from Loki."""
    query = f'{{{schema.SERVICE_LABEL}="{service}"}} |= "{schema.ACCESS_LOGGER}"'
    entries = loki.query_range(query, start_ns, end_ns + 1, limit=READ_BACK_LIMIT)
    assert len(entries) < READ_BACK_LIMIT, "more lines than one read-back returns"
    lines = []
    for entry in entries:
        line = json.loads(entry.line)
        if line.get(schema.LOGGER) == schema.ACCESS_LOGGER and start_ns < entry.ts_ns <= end_ns:
            lines.append(line)
    return lines


def assert_counts_are_lokis(
    loki: LokiQueryClient, incident: Incident, service: str, task: str | None = None
) -> list[dict[str, Any]]:
    """The page's `failures` equal the access lines Loki holds in the window it counted, up to when
    the page was seen (of ``task``: its failed and finished runs). The failed lines."""
    assert incident.quiet_seconds >= QUIET_BEFORE_ALERT_SECONDS, (
        f"the traffic stopped only {incident.quiet_seconds:.1f} s before the alert reached the notifier: "
        "lines may still have been on their way to Loki when it counted"
    )
    failures = incident.page["failures"]
    assert failures["state"] == "counted", failures
    assert (failures["service"], failures["task"]) == (service, task)
    start, end = parse_time_ns(failures["window"]["start"]), parse_time_ns(failures["window"]["end"])
    lines = access_lines(loki, service, start, min(end, incident.seen_ns))
    if task is not None:
        lines = [line for line in lines if line.get(schema.TASK) == task and line[schema.STATE] != "retry"]
    failed = [line for line in lines if line[schema.STATUS] >= 500]
    by_type = Counter(line.get(schema.ERROR_TYPE) for line in failed)
    counted = {kind["error_type"]: kind["count"] for kind in failures["by_type"]}
    assert counted == dict(by_type), f"{service} failures by type: notified {counted}, in Loki {dict(by_type)}"
    assert (failures["failed"], failures["requests"]) == (len(failed), len(lines))
    assert failures["share"] == round(len(failed) / len(lines), 4)
    return failed


def trail_in_loki(loki: LokiQueryClient, cid: str) -> list[tuple[str, str | None, int]]:
    """(service, route or task, status) of each access line of ``cid`` in Loki, sorted."""
    created_ms = time_ms_of(cid)
    assert created_ms is not None, f"{cid} is not one of our UUIDv7 IDs"
    query = f'{{{schema.SERVICE_LABEL}=~".+"}} | {schema.CORRELATION_ID}="{cid}"'
    entries = loki.query_range(query, created_ms * 1_000_000 - 60 * NS, time.time_ns(), limit=READ_BACK_LIMIT)
    lines = [json.loads(entry.line) for entry in entries]
    return sorted(
        (line[schema.SERVICE], line.get(schema.ROUTE) or line.get(schema.TASK), line[schema.STATUS])
        for line in lines
        if line.get(schema.LOGGER) == schema.ACCESS_LOGGER
    )


def follow(
    web: flask.testing.FlaskClient, loki: LokiQueryClient, url: str, whole: Callable[[dict[str, Any]], bool]
) -> tuple[str, dict[str, Any]]:
    """A trail link followed in trail-web (a ``/go/...`` redirect first): the request's ID and its
    trail page's document, once ``whole``; the page's hops are the access lines Loki holds."""
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == TRAIL_WEB, url
    path = parts.path
    if path.startswith("/go/"):
        response = web.get(f"{path}?{parts.query}")
        assert response.status_code == 302, response.get_data(as_text=True)[:2000]
        path = urllib.parse.urlsplit(response.headers["Location"]).path
    cid = urllib.parse.unquote(path.removeprefix("/t/"))

    def document() -> dict[str, Any] | None:
        found = web.get(f"{path}?format=json").get_json()
        return found if found and found.get("hops") and whole(found) else None

    page = wait_until(document, 30, f"the trail of {cid} in Loki", interval=0.5)
    assert page["correlation_id"] == cid
    hops = sorted((hop["service"], hop.get("route"), hop["status"]) for hop in page["hops"])
    assert hops == trail_in_loki(loki, cid), "the trail page shows the lines Loki holds"
    return cid, page


def assert_ours(demo: Demo, answered: dict[str, int], cid: str) -> None:
    """On the test's own Loki, the request a link opens is one of this fault's ``answered``. (A
    shared Loki holds what other runs wrote under the demo's names, and the newest failure there
    may rightly be theirs: then the link is checked against Loki only.)"""
    if demo.own_loki:
        assert cid in answered, f"{cid} is not a checkout of this fault"


def statuses(document: dict[str, Any]) -> dict[str, int]:
    return {hop["service"]: hop["status"] for hop in document["hops"]}


def failed_checkout(document: dict[str, Any]) -> bool:
    return statuses(document) == FAILED_CHECKOUT


def explore_services(loki: LokiQueryClient, url: str) -> set[str]:
    """The services whose lines Grafana's Explore link shows: its query run on Loki over its range."""
    panes = parse_explore_url(url, provisioned_datasource_uids())
    (expr,) = explore_exprs(panes)
    (pane,) = panes.values()
    start_ms, end_ms = int(pane["range"]["from"]), int(pane["range"]["to"])
    entries = loki.query_range(expr, start_ms * 1_000_000, end_ms * 1_000_000, limit=READ_BACK_LIMIT)
    return {json.loads(entry.line)[schema.SERVICE] for entry in entries}


# --- the tests ---------------------------------------------------------------------------------


def test_each_fault_pages_once_for_its_cause(incidents: Incidents) -> None:
    assert incidents.first_pages == [("HighErrorRatio", "payments"), ("TaskFailures", "notifications")]
    assert incidents.second_pages == [("DownstreamErrors", "orders")]


def test_high_error_ratio_names_payments_and_counts_what_loki_holds(
    incidents: Incidents, demo: Demo, loki: LokiQueryClient
) -> None:
    incident = incidents.high_error_ratio
    page = incident.page
    assert (page["cause_service"], page["trail"]) == ("payments", "found"), page["trail_note"]
    hop = page["root_cause"]
    assert (hop["service"], hop["method"], hop["route"], hop["status"]) == ("payments", "POST", "/payments", 500)
    assert page["error"]["type"] == INJECTED_FAULT
    failed = assert_counts_are_lokis(loki, incident, "payments")
    in_loki = {line[schema.CORRELATION_ID] for line in failed}
    assert set(incident.traffic.failed) <= in_loki, "every checkout that failed is counted"
    if demo.own_loki:  # nothing else wrote to it: exactly this traffic's failures
        assert in_loki == set(incident.traffic.failed)
        assert {kind["error_type"] for kind in page["failures"]["by_type"]} == {INJECTED_FAULT}
    assert f"Failed requests: {len(failed)} of " in page["text"]


def test_high_error_ratio_links_lead_to_a_checkout_that_failed(
    incidents: Incidents, demo: Demo, web: flask.testing.FlaskClient, loki: LokiQueryClient
) -> None:
    incident = incidents.high_error_ratio
    # The notification's link (its newest failure) and the alert's own (the last-failed gauge's).
    cid, _ = follow(web, loki, incident.page["trail_page_url"], failed_checkout)
    assert cid == incident.page["correlation_id"]
    assert_ours(demo, incident.traffic.failed, cid)
    cid, _ = follow(web, loki, incident.alert["annotations"]["trail_page_url"], failed_checkout)
    assert incident.traffic.failed.get(cid) == 502, "the gauge holds a checkout of this traffic, on any Loki"
    for url in (incident.page["trail_url"], incident.alert["annotations"]["trail_url"]):
        assert explore_services(loki, url) == set(SERVICES), "Explore shows every hop's lines"


def test_task_failures_names_the_failed_run_and_counts_the_tasks_runs(
    incidents: Incidents, demo: Demo, loki: LokiQueryClient
) -> None:
    incident = incidents.task_failures
    page = incident.page
    assert incident.alert["labels"]["task"] == TASK
    assert (page["cause_service"], page["trail"], page["trail_caveat"]) == ("notifications", "found", None)
    hop = page["root_cause"]
    assert (hop["service"], hop["method"], hop["route"], hop["status"]) == ("notifications", None, TASK, 500)
    assert page["error"]["type"] == INJECTED_FAULT
    failed = assert_counts_are_lokis(loki, incident, "notifications", TASK)
    in_loki = {line[schema.CORRELATION_ID] for line in failed}
    # Each checkout that succeeded while the worker failed published a run that failed.
    assert set(incident.traffic.succeeded) <= in_loki
    if demo.own_loki:
        assert in_loki == set(incident.traffic.succeeded)
    assert f"Failed runs of {TASK}: {len(failed)} of " in page["text"]


def test_task_failures_links_lead_to_a_checkout_whose_task_failed(
    incidents: Incidents, demo: Demo, web: flask.testing.FlaskClient, loki: LokiQueryClient
) -> None:
    incident = incidents.task_failures
    attempts = 1 + int(RETRY_ENV["TASK_MAX_RETRIES"])

    def run_failed(document: dict[str, Any]) -> bool:
        runs = sorted(hop["status"] for hop in document["hops"] if hop["service"] == "notifications")
        return runs == [202] * (attempts - 1) + [500]

    cid, document = follow(web, loki, incident.page["trail_page_url"], run_failed)
    assert cid == incident.page["correlation_id"] and statuses(document)["gateway"] == 201
    assert_ours(demo, incident.traffic.succeeded, cid)
    cid, document = follow(web, loki, incident.alert["annotations"]["trail_page_url"], run_failed)
    assert incident.traffic.succeeded.get(cid) == 201, "the gauge holds a run of this traffic, on any Loki"
    for url in (incident.page["trail_url"], incident.alert["annotations"]["trail_url"]):
        assert explore_services(loki, url) == {*SERVICES, "notifications"}


def test_downstream_errors_names_payments_and_counts_what_loki_holds(
    incidents: Incidents, demo: Demo, loki: LokiQueryClient
) -> None:
    incident = incidents.downstream_errors
    page = incident.page
    labels = incident.alert["labels"]
    assert (labels["downstream"], labels["cause_service"], page["cause_service"]) == ("payments",) * 3
    assert page["trail"] == "found", page["trail_note"]
    hop = page["root_cause"]
    assert (hop["service"], hop["route"], hop["status"]) == ("payments", "/payments", 500), "where it broke"
    failed = assert_counts_are_lokis(loki, incident, "orders")
    in_loki = {line[schema.CORRELATION_ID] for line in failed}
    assert set(incident.traffic.failed) <= in_loki
    if demo.own_loki:  # orders failed for both payments faults, and for nothing else
        assert in_loki == set(incident.traffic.failed) | set(incidents.high_error_ratio.traffic.failed)
        assert {kind["error_type"] for kind in page["failures"]["by_type"]} == {DOWNSTREAM_ERROR}


def test_downstream_errors_links_lead_to_a_checkout_that_failed_through_payments(
    incidents: Incidents, demo: Demo, web: flask.testing.FlaskClient, loki: LokiQueryClient
) -> None:
    incident = incidents.downstream_errors
    go = incident.alert["annotations"]["trail_page_url"]
    assert urllib.parse.urlsplit(go).path == "/go/last-failed"
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(go).query)
    assert (params["service"], params["peer"]) == (["orders"], ["payments"])
    for url in (go, incident.page["trail_page_url"]):
        cid, _ = follow(web, loki, url, failed_checkout)
        assert_ours(demo, incident.traffic.failed, cid)
    assert explore_services(loki, incident.page["trail_url"]) == set(SERVICES)
