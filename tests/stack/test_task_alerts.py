"""The background-task alerts and dashboard row, for real: a real redis-server, the demo chain with
orders publishing to it, the real notifications worker (Celery, threads pool), a real Prometheus
scraping the chain and the worker with the repository's scrape jobs and rules (only `for`
shortened), a real Alertmanager (alerts/alertmanager.yml, only the webhook's address changed) and
the notifier reading the fake Loki every process ships to.

- the worker's runs fail (its fault switch): exactly one page, TaskFailures for the worker, naming
  the failed run's hop and InjectedFault, for a checkout that succeeded while its task failed;
- the broker stops for a moment: TaskPublishFailures pages, naming the broker and a checkout
  whose task was lost;
- every query of the dashboard's task row returns data from these series, and the task
  exemplars Grafana links from are correlation IDs of runs that failed.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from correlation import schema
from correlation.settings import LokiSettings
from demo import notifications
from demo.run_local import Chain
from demo.services import SERVICES
from fakes import FakeLoki, FakeWebhook, wait_until
from tests.support.alerting import (
    GRAFANA,
    RUNBOOKS,
    TRAIL_WEB,
    NotifierRun,
    Traffic,
    add_worker_job,
    critical_alerts,
    derived_alertmanager_config,
    derived_prometheus_config,
    derived_rules,
    pages,
    running_notifier,
    set_faults,
    start_task_chain,
)
from tests.support.broker import Broker
from tests.support.fake_loki import checked_fake_loki
from tests.support.grafana import (
    dashboard_promql_queries,
    explore_exprs,
    parse_explore_url,
    provisioned_datasource_uids,
    substitute_grafana_vars,
)
from tests.support.stack import (
    alertmanager_server,
    http_get_json,
    instant_query,
    prometheus_server,
    require_tool,
)
from trail.links import trail_page_path
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.stack

TASK = notifications.TASK_NAME
#: Deadlines: generous, other test sessions share this 2-core machine.
PAGE_DEADLINE_SECONDS = 90.0
INJECTED_FAULT = "demo.faults.InjectedFault"


@dataclass
class TaskStack:
    chain: Chain
    worker_url: str
    broker: Broker
    sink: FakeLoki
    prometheus: str
    alertmanager: str
    notifier: NotifierRun
    chat: FakeWebhook


def scrape_config(chain: Chain, worker_url: str, alertmanager: str, rule_names: list[str]) -> dict[str, Any]:
    """prometheus/prometheus.yml's demo-services and notifications-worker jobs, pointed at the local
    chain and worker (same `service` labels), with the derived rules and the local Alertmanager."""
    targets = {name: urllib.parse.urlsplit(url).netloc for name, url in chain.urls.items()}
    config = derived_prometheus_config(targets, rule_names, alertmanager)
    add_worker_job(config, worker_url)
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskStack]:
    require_tool("redis-server")  # never a skip: `make test` installs it
    root = tmp_path_factory.mktemp("task-alerts")
    codes: dict[str, int | None] = {}
    with (
        checked_fake_loki() as sink,
        ExitStack() as started,  # every process started here is stopped here, last first
    ):
        demo = start_task_chain(started, root, sink.url, codes)
        chain, worker_url, broker = demo.chain, demo.worker_url, demo.broker
        rules = derived_rules()
        chat = FakeWebhook()
        run = started.enter_context(running_notifier(sink.url, started.enter_context(chat.server).url))
        am_config = derived_alertmanager_config(run.url + "/alerts", run.token_file)
        am = started.enter_context(alertmanager_server(am_config))
        config = scrape_config(chain, worker_url, urllib.parse.urlsplit(am).netloc, sorted(rules))
        prom = started.enter_context(
            prometheus_server(
                config,
                rules,
                env={"GRAFANA_URL": GRAFANA, "RUNBOOK_BASE_URL": RUNBOOKS, "TRAIL_WEB_URL": TRAIL_WEB},
                features=("expand-external-labels",),
            )
        )

        def all_up() -> bool:
            result = instant_query(prom, "up == 1")["result"]
            return {r["metric"].get("service") for r in result} == {*SERVICES, notifications.SERVICE}

        wait_until(all_up, 60, "Prometheus to scrape the four services and the worker", interval=0.5)
        yield TaskStack(chain, worker_url, broker, sink, prom, am, run, chat)
    assert codes == {name: 0 for name in [*SERVICES, "worker"]}, f"processes did not stop cleanly: {codes}"
    assert not sink.violations, f"pushes that break Loki's format: {sink.violations}"


def wait_for_page(stack: TaskStack, alertname: str, what: str) -> dict[str, Any]:
    def arrived() -> dict[str, Any]:
        return next((body for _, body in pages(stack.chat) if body["alertname"] == alertname), {})

    try:
        page = wait_until(arrived, PAGE_DEADLINE_SECONDS, what, interval=0.2)
    except AssertionError as exc:
        alerts = http_get_json(stack.prometheus + "/api/v1/alerts")["data"]["alerts"]
        notified = stack.notifier.out.getvalue()[-3000:]
        raise AssertionError(f"{exc}\nprometheus alerts: {alerts}\nnotifier: {notified}") from None
    return page


def firing_alert(stack: TaskStack, alertname: str) -> dict[str, Any]:
    alerts = http_get_json(stack.prometheus + "/api/v1/alerts")["data"]["alerts"]
    (alert,) = [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]
    return dict(alert)


def task_runs(sink: FakeLoki, state: str) -> list[dict[str, Any]]:
    """The worker's access lines in Loki of runs that ended in ``state``."""
    return [
        e.json for e in sink.entries if e.json.get(schema.KIND) == schema.KIND_TASK and e.json[schema.STATE] == state
    ]


def failed_runs(sink: FakeLoki) -> set[str]:
    """Correlation IDs of the task runs that failed."""
    return {run[schema.CORRELATION_ID] for run in task_runs(sink, "failure")}


def retries_settled(sink: FakeLoki) -> bool:
    """Every task whose attempt was retried has run again to an end: the worker holds no message
    waiting for its retry time. (Celery 5.7's redis transport cannot restore such a message when the
    broker goes away: the worker dies with an AttributeError. The broker stops only after this.)"""
    last: dict[str, tuple[int, str]] = {}
    for e in sink.entries:
        if e.json.get(schema.KIND) == schema.KIND_TASK:
            attempt = (e.json[schema.ATTEMPT], e.json[schema.STATE])
            last[e.json[schema.TASK_ID]] = max(last.get(e.json[schema.TASK_ID], attempt), attempt)
    return all(state != "retry" for _, state in last.values())


@dataclass
class Incidents:
    task_page: dict[str, Any]
    task_alert: dict[str, Any]  # TaskFailures as Prometheus holds it
    paging_at_task_page: set[tuple[str, str, str]]
    publish_page: dict[str, Any]
    publish_alert: dict[str, Any]  # TaskPublishFailures as Alertmanager holds it
    succeeded: set[str]  # checkouts answered 201


@pytest.fixture(scope="module")
def incidents(stack: TaskStack) -> Iterator[Incidents]:
    traffic = Traffic(stack.chain.urls["gateway"]).start()
    try:
        # Every run fails on its own, after its two retries; the checkouts still succeed.
        set_faults(stack.worker_url, error_rate=1.0)
        task_page = wait_for_page(stack, "TaskFailures", "TaskFailures to page for the worker")
        paging = critical_alerts(stack.prometheus)
        task_alert = firing_alert(stack, "TaskFailures")
        succeeded_before = len(task_runs(stack.sink, "success"))
        set_faults(stack.worker_url, error_rate=0.0)
        # A run succeeding after the reset: the worker's lines written before it have been shipped.
        wait_until(
            lambda: len(task_runs(stack.sink, "success")) > succeeded_before and retries_settled(stack.sink),
            30,
            "a run to succeed and the retries of the failed runs to end",
        )

        # The broker goes away for a moment: orders keeps answering and loses the publishes.
        assert stack.broker.stop() == 0
        lost = 'sum(increase(task_publish_failures_total{service="orders"}[1m])) > 0'
        wait_until(lambda: instant_query(stack.prometheus, lost)["result"], 30, "Prometheus to see lost publishes")
        stack.broker.start()
        publish_page = wait_for_page(stack, "TaskPublishFailures", "TaskPublishFailures to page")
        (publish_alert,) = [
            a
            for a in http_get_json(stack.alertmanager + "/api/v2/alerts")
            if a["labels"]["alertname"] == "TaskPublishFailures"
        ]
        traffic.stop()
        yield Incidents(task_page, task_alert, paging, publish_page, publish_alert, set(traffic.succeeded))
    finally:
        traffic.stop_event.set()
        set_faults(stack.worker_url, error_rate=0.0)
        if stack.broker.proc is None or stack.broker.proc.poll() is not None:
            stack.broker.start()


# --- the tests ---------------------------------------------------------------------------------


def test_failing_runs_page_once_naming_the_run_and_its_exception(stack: TaskStack, incidents: Incidents) -> None:
    page = incidents.task_page
    assert incidents.paging_at_task_page == {("TaskFailures", "notifications", "firing")}, "one page, nothing pending"
    assert (page["alertname"], page["severity"], page["service"], page["cause_service"]) == (
        "TaskFailures",
        "critical",
        "notifications",
        "notifications",
    )
    assert page["trail"] == "found", page["trail_note"]
    hop = page["root_cause"]
    assert (hop["service"], hop["method"], hop["route"], hop["status"]) == ("notifications", None, TASK, 500)
    assert page["error"]["type"] == INJECTED_FAULT and "injected fault" in page["error"]["message"]
    cid = page["correlation_id"]
    assert cid in incidents.succeeded and cid in failed_runs(stack.sink), "a checkout that succeeded, its task failed"
    assert page["trail_page_url"] == TRAIL_WEB + trail_page_path(cid)
    assert page["runbook_url"] == f"{RUNBOOKS}/alerts/runbooks/TaskFailures.md"


def test_the_alert_links_a_failed_run_of_the_task(stack: TaskStack, incidents: Incidents) -> None:
    """trail_url and trail_page_url come from correlation_last_failed_request{route=<task>}."""
    alert = incidents.task_alert
    assert alert["labels"]["task"] == TASK
    annotations = alert["annotations"]
    (expr,) = explore_exprs(parse_explore_url(annotations["trail_url"], provisioned_datasource_uids()))
    cid = expr.split('correlation_id="')[1].rstrip('"')
    assert cid in failed_runs(stack.sink) and cid in annotations["description"]
    assert annotations["trail_page_url"] == TRAIL_WEB + trail_page_path(cid)
    assert annotations["dashboard_url"] == (
        f"{GRAFANA}/d/service-overview/service-overview?orgId=1&var-service=notifications&from=now-1h&to=now"
    )


def test_a_broker_outage_pages_naming_the_broker(stack: TaskStack, incidents: Incidents) -> None:
    page = incidents.publish_page
    assert (page["alertname"], page["service"], page["cause_service"]) == ("TaskPublishFailures", "orders", "broker")
    assert page["page"] is True and page["runbook_url"] == f"{RUNBOOKS}/alerts/runbooks/TaskPublishFailures.md"
    # Each loss is an ERROR line of a checkout that succeeded: what logs_url shows.
    lost = [
        e.json[schema.CORRELATION_ID]
        for e in stack.sink.entries
        if e.labels["service_name"] == "orders" and "could not publish task" in e.json.get(schema.MESSAGE, "")
    ]
    assert lost and set(lost) <= incidents.succeeded
    # The page names one of them, not "no request failed": the newest loss in Loki when it was read.
    assert page["trail"] == "found", page["trail_note"]
    assert page["correlation_id"] in lost and page["trail_page_url"] == TRAIL_WEB + trail_page_path(
        page["correlation_id"]
    )
    assert page["lost_task"]["task"] == TASK and page["lost_task"]["reason"] == "broker_unavailable"
    assert page["lost_task"]["count"] >= 1 and "Lost tasks:" in page["text"]


def test_the_alerts_own_link_opens_a_request_that_could_not_queue_its_task(
    stack: TaskStack, incidents: Incidents
) -> None:
    """trail_page_url in the alert itself (every receiver has it): trail-web's /go/lost-task, which
    finds the newest such request in Loki and redirects to its trail."""
    alert = incidents.publish_alert
    url = urllib.parse.urlsplit(alert["annotations"]["trail_page_url"])
    assert f"{url.scheme}://{url.netloc}" == TRAIL_WEB and url.path == "/go/lost-task"
    params = urllib.parse.parse_qs(url.query)
    assert (params["service"], params["task"], params["reason"]) == (["orders"], [TASK], ["broker_unavailable"])
    web = create_app(TrailWebSettings(LokiSettings(url=stack.sink.url))).test_client()
    response = web.get(f"{url.path}?{url.query}")
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    cid = urllib.parse.unquote(urllib.parse.urlsplit(response.headers["Location"]).path.removeprefix("/t/"))
    lost = [
        e
        for e in stack.sink.entries
        if e.labels["service_name"] == "orders" and "could not publish task" in e.json.get(schema.MESSAGE, "")
    ]
    assert cid in {e.json[schema.CORRELATION_ID] for e in lost} and cid in incidents.succeeded
    start, end = int(params["from"][0]) * 1_000_000, int(params["to"][0]) * 1_000_000
    newest = max((e for e in lost if start <= e.timestamp_ns < end), key=lambda e: e.timestamp_ns)
    assert newest.json[schema.CORRELATION_ID] == cid, "the newest in the link's window"


def test_every_task_query_of_the_dashboard_returns_data(stack: TaskStack, incidents: Incidents) -> None:
    task_queries = [(where, expr) for where, expr in dashboard_promql_queries() if "task_" in expr]
    assert len(task_queries) >= 7
    empty = []
    for where, expr in task_queries:
        if not instant_query(stack.prometheus, substitute_grafana_vars(expr, {"service": ".+"}))["result"]:
            empty.append(where)
    assert not empty, f"task panels without data although runs succeeded, failed and publishes were lost: {empty}"
    (services,) = [expr for where, expr in dashboard_promql_queries() if where == "service-overview/$service"]
    listed = {r["metric"]["service"] for r in instant_query(stack.prometheus, services)["result"]}
    assert notifications.SERVICE in listed, "the worker is in the dashboard's service list"


def test_task_failure_exemplars_are_failed_runs(stack: TaskStack, incidents: Incidents) -> None:
    """The dots on *Task failures / s* link to trails by these IDs (the data source's exemplar links)."""
    now = time.time()
    query = urllib.parse.urlencode(
        {"query": 'task_failures_total{service="notifications"}', "start": f"{now - 600:.3f}", "end": f"{now:.3f}"}
    )
    body = http_get_json(f"{stack.prometheus}/api/v1/query_exemplars?{query}")
    ids = {e["labels"].get("correlation_id") for series in body["data"] for e in series["exemplars"]}
    assert ids and ids <= failed_runs(stack.sink), ids - failed_runs(stack.sink)
