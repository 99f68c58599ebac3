"""trail.notify: Alertmanager's webhook in, one notification per alert out, naming the hop where the
alerted service's newest failed request broke (read from a fake Loki), within its time budget
whatever Loki does."""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import ConfigError, LokiSettings
from fakes import FakeLoki, FakeWebhook, LoopbackServer, QuietHandler, closed_port_url, wait_until
from fakes.trail_lines import (
    MS,
    ORDERS,
    PAYMENTS,
    access_line,
    checkout_lines,
    log_line,
    push_all,
    rfc3339,
    task_run_line,
)
from tests.support import REPO
from tests.support.stack import load_yaml
from trail.notify.delivery import DeliverySettings
from trail.notify.message import FIELDS, LINK_FIELDS
from trail.notify.notifier import NotifySettings, build

pytestmark = pytest.mark.unit  # the tests waiting on real time say process

GRAFANA = "http://grafana.notify.test:3000"
TRAIL_WEB = "http://trail-web.notify.test"
RUNBOOK = "http://localhost:9095/alerts/runbooks/HighErrorRatio.md"


def alert(status: str = "firing", service: str = "payments", **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 sends it, with the rules' labels and annotations."""
    return {
        "status": status,
        "labels": {
            "trail_web_url": TRAIL_WEB,
            "alertname": "HighErrorRatio",
            "service": service,
            "severity": "critical",
            "cause_service": service,
            "grafana_url": GRAFANA,
            **labels,
        },
        "annotations": {
            "summary": f"{service}: 50% of requests fail (own errors)",
            "description": "...",
            "dashboard_url": f"{GRAFANA}/d/service-overview/service-overview?orgId=1&var-service={service}",
            "logs_url": f"{GRAFANA}/explore?schemaVersion=1&orgId=1&panes=%7B%7D",
            "trail_url": f"{GRAFANA}/d/request-trail/request-trail?orgId=1",
            "trail_page_url": f"{TRAIL_WEB}/",
            "runbook_url": RUNBOOK,
        },
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime()),
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generatorURL": "http://localhost:9090/graph?g0.expr=x",
        "fingerprint": f"fp-{service}",
    }


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "receiver": "demo-webhook",
        "status": alerts[0]["status"],
        "alerts": list(alerts),
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://localhost:9093",
        "groupKey": "{}",
        "truncatedAlerts": 0,
    }


class Running:
    """A notifier on loopback, its stdout captured."""

    def __init__(
        self, loki_url: str, webhook: str = "", fmt: str = "json", budget: float = 3.0, attempts: int = 5
    ) -> None:
        self.out = io.StringIO()
        settings = NotifySettings(
            port=0,
            grafana_url=GRAFANA,
            trail_web_url=TRAIL_WEB,
            lookup_seconds=budget,
            runbook_dir=str(REPO / "alerts/runbooks"),
            delivery=DeliverySettings(webhook_url=webhook, format=fmt, attempts=attempts, backoff_min_seconds=0.05),
        )
        server, self.notifier = build(settings, LokiSettings(url=loki_url), out=self.out)
        self.loopback = LoopbackServer(server).start()
        self.url = self.loopback.url

    def post(self, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + "/alerts", data=data, headers={"Content-Type": "application/json"}, timeout=5)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def wait_lines(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        return wait_until(lambda: len(self.lines()) >= count and self.lines(), timeout, f"{count} notification(s)")

    def stop(self) -> None:
        self.loopback.stop()
        self.notifier.close(timeout=2)


def notify_once(loki_url: str, firing: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """One alert through a notifier reading ``loki_url``: its notification."""
    running = Running(loki_url)
    try:
        running.post(payload(firing))
        (note,) = running.wait_lines(1, timeout)
    finally:
        running.stop()
    return note


def notify_in_slack(loki_url: str, chat: FakeWebhook, firing: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """One alert through a notifier posting Slack's shape to ``chat``: its notification and the body
    the chat received."""
    running = Running(loki_url, webhook=chat.server.url, fmt="slack")
    try:
        running.post(payload(firing))
        (note,) = running.wait_lines(1)
        (body,) = wait_until(lambda: chat.bodies, 5, "the chat webhook")
    finally:
        running.stop()
    return note, body


@pytest.fixture
def chat() -> Iterator[FakeWebhook]:
    webhook = FakeWebhook()
    with webhook.server:
        yield webhook


@pytest.fixture
def staged(loki_sink: FakeLoki) -> tuple[FakeLoki, str]:
    """A fake Loki holding one failed checkout (payments 500, TimeoutError) of a minute ago."""
    t0 = time.time_ns() - 60_000 * MS
    cid = new_correlation_id(t0 // MS)
    push_all(loki_sink, checkout_lines(cid, t0))
    return loki_sink, cid


def test_firing_alert_names_the_failed_hop_and_its_error(staged: tuple[FakeLoki, str], chat: FakeWebhook) -> None:
    loki, cid = staged
    running = Running(loki.url, webhook=chat.server.url + "/hook")
    try:
        answer = running.post(payload(alert()))
        assert answer.status_code == 200 and answer.json() == {"received": 1, "notifying": 1, "repeats": 0}
        (note,) = running.wait_lines(1)
        wait_until(lambda: chat.bodies, 5, "the chat webhook")
        assert requests.get(running.url + "/notifications", timeout=5).json() == [note]
        (stored,) = requests.get(running.url + "/alerts", timeout=5).json()
        assert [a["fingerprint"] for a in stored["alerts"]] == ["fp-payments"]
    finally:
        running.stop()
    assert chat.bodies == [note], "the webhook gets the very object of the stdout line"
    assert list(note) == list(FIELDS)
    assert note["status"] == "firing" and note["page"] is True and note["trail"] == "found"
    assert (note["alertname"], note["severity"], note["service"]) == ("HighErrorRatio", "critical", "payments")
    assert note["root_cause"] == {
        "service": "payments",
        "method": "POST",
        "route": "/payments",
        "status": 500,
        "duration_ms": 12.0,
        "request_id": PAYMENTS,
    }
    assert note["error"] == {"type": "TimeoutError", "message": "processor"}
    assert note["correlation_id"] == cid and note["trail_command"] == f"trail {cid}"
    assert note["trail_note"] is None
    # The trail link opens the request the notification names, from the alert's Grafana.
    panes = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(note["trail_url"]).query)["panes"][0])
    assert note["trail_url"].startswith(GRAFANA + "/explore?")
    assert (
        panes["trail"]["queries"][0]["expr"] == f'{{service_name=~".+", shard=~"{cid[-1]}|"}} | correlation_id="{cid}"'
    )
    assert note["trail_page_url"] == f"http://trail-web.notify.test/t/{cid}"
    assert note["runbook_url"] == RUNBOOK and note["dashboard_url"].startswith(GRAFANA + "/d/service-overview/")
    assert note["text"].splitlines()[:5] == [
        "[FIRING] HighErrorRatio (critical, page): payments",
        "payments: 50% of requests fail (own errors)",
        f"Root cause: payments POST /payments answered 500 in 12.0 ms (request {PAYMENTS})",
        "Error: TimeoutError: processor",
        f"Correlation ID: {cid}  ->  trail {cid}",
    ]
    # It searched the alerted service's failed access lines, then the request's trail.
    queries = [q.query for q in loki.queries]
    assert queries[0].startswith('{service_name="payments"} |= "correlation.access"')
    assert queries[1] == f'{{service_name=~".+", shard=~"{cid[-1]}|"}} | correlation_id="{cid}"'
    # How much broke: the one failed request, which raised nothing the access line names.
    failures = note["failures"]
    assert (failures["state"], failures["failed"], failures["requests"], failures["share"]) == ("counted", 1, 1, 1.0)
    assert [(kind["error_type"], kind["count"]) for kind in failures["by_type"]] == [(None, 1)]
    assert failures["first_failure"] is None and failures["last_failure"] is None, "only when it resolves"


TASK = "notifications.send_confirmation"
#: Request IDs of the task's three attempts (two retries, then the failure).
RUN1, RUN2, RUN3 = "e000000000000005", "e000000000000006", "e000000000000007"
INJECTED = "demo.faults.InjectedFault: injected fault (error_rate=1.0)"


def failed_task_lines(
    cid: str,
    t0_ns: int,
    task: str = TASK,
    runs: tuple[str, str, str] = (RUN1, RUN2, RUN3),
    error: str = INJECTED,
) -> list[tuple[int, dict[str, Any]]]:
    """A checkout that succeeded, then a task it published failing, as the notifications worker
    writes it (correlation.celery): two attempts retried (202; the first on a connection error,
    the second on ``error``), the third failing (500) with ``error`` in Celery's error line."""
    published_ns = t0_ns + 25 * MS
    lines = checkout_lines(cid, t0_ns, payments_status=201)
    first, second, third = runs
    attempts = [
        (first, ORDERS, "retry", "requests.exceptions.ConnectionError: inventory refused"),
        (second, first, "retry", error),
        (third, second, "failure", error),
    ]
    for number, (rid, parent, state, error) in enumerate(attempts, start=1):
        start_ns = published_ns + number * 200 * MS
        failed = state == "failure"
        what = f"raised unexpected: {error}" if failed else f"retry: Retry in 0.2s: {error}"
        lines.append(
            log_line(cid, rid, parent, "notifications", start_ns + MS, f"sending confirmation (attempt {number})")
        )
        lines.append(
            log_line(
                cid,
                rid,
                parent,
                "notifications",
                start_ns + 2 * MS,
                f"Task {task}[t-1] {what}",
                level="ERROR" if failed else "INFO",
                logger="celery.app.trace",
                **{schema.EXCEPTION: f"Traceback (most recent call last):\n  ...\n{error}"},
            )
        )
        fields = {
            schema.KIND: schema.KIND_TASK,
            schema.TASK: task,
            schema.TASK_ID: "t-1",
            schema.STATE: state,
            schema.ATTEMPT: number,
            schema.QUEUE: "notifications",
            schema.PUBLISHED_AT: rfc3339(published_ns),
            schema.QUEUE_WAIT_MS: 2.5,
            schema.STATUS: 500 if failed else 202,
            schema.DURATION_MS: 3.0,
            schema.CALLER: "orders" if number == 1 else "notifications",
            **({schema.ORIGIN: schema.ORIGIN_SELF} if failed else {}),
        }
        level = "ERROR" if failed else "WARNING"
        access = log_line(
            cid,
            rid,
            parent,
            "notifications",
            start_ns + 3 * MS,
            f"task {task} {state}",
            level,
            schema.ACCESS_LOGGER,
            **fields,
        )
        lines.append(access)
    return sorted(lines, key=lambda pair: pair[0])


def test_a_task_failure_alert_names_the_failed_run_and_its_exception(chat: FakeWebhook) -> None:
    """TaskFailures, with the labels the rule gives it (alerts/correlation-demo.rules.yml): the
    notification names the worker's last failed run (the task's name as route, status 500), the
    exception of that attempt (not of the retried ones), and the checkout that published it."""
    t0 = time.time_ns() - 60_000 * MS
    cid = new_correlation_id(t0 // MS)
    task_alert = alert(service="notifications", alertname="TaskFailures", task=TASK)
    task_alert["annotations"]["summary"] = f"notifications: 100% of {TASK} runs fail"
    with FakeLoki() as loki:
        push_all(loki, failed_task_lines(cid, t0))
        running = Running(loki.url, webhook=chat.server.url + "/hook")
        try:
            running.post(payload(task_alert))
            (note,) = running.wait_lines(1)
        finally:
            running.stop()
        queries = [q.query for q in loki.queries]
    assert (note["alertname"], note["service"], note["cause_service"]) == (
        "TaskFailures",
        "notifications",
        "notifications",
    )
    assert note["page"] is True and note["trail"] == "found" and note["trail_note"] is None
    assert note["root_cause"] == {
        "service": "notifications",
        "method": None,
        "route": TASK,
        "status": 500,
        "duration_ms": 3.0,
        "request_id": RUN3,
    }
    assert note["error"] == {"type": "demo.faults.InjectedFault", "message": "injected fault (error_rate=1.0)"}
    assert note["correlation_id"] == cid and note["trail_page_url"] == f"http://trail-web.notify.test/t/{cid}"
    assert note["text"].splitlines()[2:4] == [
        f"Root cause: notifications {TASK} answered 500 in 3.0 ms (request {RUN3})",
        f"Error: {INJECTED}",
    ]
    assert queries[0].startswith('{service_name="notifications"} |= "correlation.access"')


#: A second task of the same worker, failing later than TASK with another exception.
RECEIPT = "notifications.send_receipt"
RECEIPT_RUNS = ("f000000000000008", "f000000000000009", "f00000000000000a")
TIMEOUT = "requests.exceptions.ReadTimeout: mail relay did not answer"


def two_tasks_failing(loki: FakeLoki) -> tuple[str, str]:
    """TASK's runs failing two minutes ago, RECEIPT's one minute ago (the service's newest failure):
    the correlation IDs of the two."""
    t_confirmation, t_receipt = time.time_ns() - 120_000 * MS, time.time_ns() - 60_000 * MS
    confirmation, receipt = new_correlation_id(t_confirmation // MS), new_correlation_id(t_receipt // MS)
    push_all(loki, failed_task_lines(confirmation, t_confirmation))
    push_all(loki, failed_task_lines(receipt, t_receipt, RECEIPT, RECEIPT_RUNS, TIMEOUT))
    return confirmation, receipt


def task_failures_alert(task: str) -> dict[str, Any]:
    return alert(service="notifications", alertname="TaskFailures", task=task)


def test_a_task_alert_names_a_run_of_its_task_not_the_services_newest_failure() -> None:
    """One worker, two tasks failing: TaskFailures for the task that failed first names that
    task's run and exception, although another task failed since."""
    with FakeLoki() as loki:
        confirmation, _ = two_tasks_failing(loki)
        note = notify_once(loki.url, task_failures_alert(TASK))
        queries = [q.query for q in loki.queries]
    assert note["trail"] == "found" and note["trail_caveat"] is None and note["trail_note"] is None
    assert note["correlation_id"] == confirmation
    assert note["root_cause"]["route"] == TASK and note["root_cause"]["request_id"] == RUN3
    assert note["error"] == {"type": "demo.faults.InjectedFault", "message": "injected fault (error_rate=1.0)"}
    assert f'task="{TASK}"' in queries[0], "the search was for the alert's task"
    assert not any(line.startswith("Note:") for line in note["text"].splitlines())


def test_a_task_alert_without_a_failed_run_of_its_task_says_what_it_names_instead() -> None:
    with FakeLoki() as loki:
        _, receipt = two_tasks_failing(loki)
        note = notify_once(loki.url, task_failures_alert("notifications.send_invoice"))
    assert note["trail"] == "found" and note["correlation_id"] == receipt, "the service's newest failure"
    assert note["root_cause"]["route"] == RECEIPT and note["error"]["type"] == "requests.exceptions.ReadTimeout"
    caveat = note["trail_caveat"]
    assert re.fullmatch(
        r"no run of task notifications\.send_invoice failed in \S+ \.\. \S+; "
        r"naming the newest failure at notifications instead",
        caveat,
    ), caveat
    assert note["text"].splitlines()[2] == f"Note: {caveat}."


def test_a_hostile_task_label_is_searched_for_escaped_and_shown_escaped() -> None:
    """The task label is the alert's text: it goes into LogQL as an escaped string (the fake Loki
    parses it as Loki does) and finds nothing, and into the message with control characters
    escaped."""
    hostile = 'x"} | line_format "{{.x}}\n\x1b[31m'
    with FakeLoki() as loki:
        _, receipt = two_tasks_failing(loki)
        note = notify_once(loki.url, task_failures_alert(hostile))
        queries = [q.query for q in loki.queries]
        metric = [q.query for q in loki.metric_queries]
    assert note["trail"] == "found" and note["correlation_id"] == receipt
    assert 'task="x\\"} | line_format \\"{{.x}}\\n\\u001b[31m"' in queries[0], queries[0]
    # Counted for that task too: none of its runs failed (not the worker's two), the name escaped.
    assert len(metric) == 2 and all('task="x\\"} | line_format \\"{{.x}}\\n\\u001b[31m"' in q for q in metric)
    assert (note["failures"]["failed"], note["failures"]["requests"]) == (0, 0)
    assert note["failures"]["task"] == 'x"} | line_format "{{.x}}\\n\\x1b[31m'
    assert "\x1b" not in note["trail_caveat"] and "\n" not in note["trail_caveat"]
    assert note["trail_caveat"].startswith('no run of task x"} | line_format "{{.x}}\\n\\x1b[31m failed')


#: The broker refusing the connection, as kombu says it (correlation.celery logs repr(exc)).
REFUSED = "OperationalError('Error 111 connecting to 127.0.0.1:6379. Connection refused.')"
PUBLISH_LOGGER = "correlation.celery"


def lost_task_line(
    cid: str, rid: str, service: str, ts_ns: int, task: str, error: str = REFUSED, reason: str = "broker_unavailable"
) -> tuple[int, dict[str, Any]]:
    """The ERROR line correlation.celery.send_task writes inside a request whose task it could not
    queue (the request itself succeeds)."""
    message = f"could not publish task {task} ({reason}): {error}"
    return log_line(cid, rid, None, service, ts_ns, message, level="ERROR", logger=PUBLISH_LOGGER)


def publish_alert(service: str = "orders", task: str = TASK, reason: str = "broker_unavailable") -> dict[str, Any]:
    """TaskPublishFailures with the labels the rule gives it (alerts/correlation-demo.rules.yml)."""
    return alert(
        service=service,
        alertname="TaskPublishFailures",
        task=task,
        reason=reason,
        cause_service="broker" if reason == "broker_unavailable" else service,
    )


def stage_lost_tasks(loki: FakeLoki) -> list[str]:
    """Lost tasks of two services and two tasks over the last three minutes; orders' TASK lines are
    three, not the newest of all (orders lost RECEIPT and gateway lost TASK later), and an app's
    look-alike line from another logger is newer still. The correlation IDs of orders' TASK losses,
    oldest first."""
    now = time.time_ns()
    ids = [new_correlation_id((now - seconds * 1000 * MS) // MS) for seconds in (180, 120, 90, 60, 30, 20)]
    push_all(
        loki,
        [
            lost_task_line(ids[0], "b000000000000010", "orders", now - 180_000 * MS, TASK),
            lost_task_line(ids[1], "b000000000000011", "orders", now - 120_000 * MS, TASK),
            lost_task_line(ids[2], "b000000000000012", "orders", now - 90_000 * MS, TASK, error="TimeoutError()"),
            lost_task_line(ids[3], "b000000000000013", "orders", now - 60_000 * MS, RECEIPT),
            lost_task_line(ids[4], "a000000000000014", "gateway", now - 30_000 * MS, TASK),
            log_line(
                ids[5], "b000000000000015", None, "orders", now - 20_000 * MS, f"could not publish task {TASK} (x): y"
            ),
        ],
    )
    return ids[:3]


def test_a_publish_failure_alert_names_the_newest_lost_task_of_its_service_and_task(chat: FakeWebhook) -> None:
    """TaskPublishFailures fails no request: the notification names the newest task orders could
    not queue of the alert's task (not RECEIPT's, not gateway's, not an app's look-alike line), how
    many it lost, and the checkout that asked for it, with that checkout's trail links."""
    with FakeLoki() as loki:
        lost = stage_lost_tasks(loki)
        note, body = notify_in_slack(loki.url, chat, publish_alert())
        queries = [q.query for q in loki.queries]
    cid = lost[-1]
    assert (note["alertname"], note["service"], note["cause_service"]) == ("TaskPublishFailures", "orders", "broker")
    assert note["trail"] == "found" and note["trail_note"] is None and note["trail_caveat"] is None
    assert note["correlation_id"] == cid and note["trail_command"] == f"trail {cid}"
    assert note["root_cause"] is None and note["error"] is None, "no request failed"
    lost_task = note["lost_task"]
    assert {k: lost_task[k] for k in ("task", "reason", "error", "request_id", "count", "count_capped")} == {
        "task": TASK,
        "reason": "broker_unavailable",
        "error": "TimeoutError()",
        "request_id": "b000000000000012",
        "count": 3,
        "count_capped": False,
    }
    assert note["trail_page_url"] == f"http://trail-web.notify.test/t/{cid}"
    panes = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(note["trail_url"]).query)["panes"][0])
    assert (
        panes["trail"]["queries"][0]["expr"] == f'{{service_name=~".+", shard=~"{cid[-1]}|"}} | correlation_id="{cid}"'
    )
    assert note["runbook_url"] == RUNBOOK and note["logs_url"].startswith(GRAFANA + "/explore?")
    text = note["text"].splitlines()
    assert re.fullmatch(r"Lost tasks: 3 not queued by orders in \S+ \.\. \S+", text[2]), text
    assert text[3] == f"Newest: {TASK} (broker_unavailable) at {lost_task['time']}, request b000000000000012: " + (
        "TimeoutError()"
    )
    assert text[4] == f"Correlation ID: {cid}  ->  trail {cid}"
    assert "Links only" not in note["text"]
    section = body["blocks"][1]["text"]["text"]
    assert "*Lost tasks: 3 not queued by orders" in section and f"*Correlation ID:* `{cid}`" in section
    (search,) = [q for q in queries if "could not publish task" in q]
    assert search.startswith('{service_name="orders"} |= "could not publish task"'), search
    assert "notifications\\\\.send_confirmation" in search, "the search was for the alert's task"


def test_a_publish_failure_alert_names_a_loss_of_its_own_reason() -> None:
    """The rule fires per reason: a task that cannot be serialised (reason ``error``, the publisher's
    own bug) is named by its own alert, though broker outages lost the same task since; a reason
    label that is not one the library writes is not searched for, and the note says so."""
    now = time.time_ns()
    bug, outage = (new_correlation_id((now - s * 1000 * MS) // MS) for s in (90, 30))
    with FakeLoki() as loki:
        push_all(
            loki,
            [
                lost_task_line(bug, "b000000000000030", "orders", now - 90_000 * MS, TASK, "EncodeError()", "error"),
                lost_task_line(outage, "b000000000000031", "orders", now - 30_000 * MS, TASK),
            ],
        )
        note = notify_once(loki.url, publish_alert(reason="error"))
        other = notify_once(loki.url, publish_alert(reason='x") |~ ".*'))
    assert (
        note["correlation_id"] == bug and note["lost_task"]["reason"] == "error" and note["cause_service"] == "orders"
    )
    assert note["lost_task"]["count"] == 1 and note["trail_caveat"] is None
    assert other["correlation_id"] == outage and other["lost_task"]["count"] == 2
    assert other["trail_caveat"].startswith("the alert's reason label cannot be searched for (reason 'x\") |~")


def test_a_publish_failure_alert_without_lost_task_lines_gives_links_only() -> None:
    with FakeLoki() as loki:
        stage_lost_tasks(loki)
        note = notify_once(loki.url, publish_alert(service="inventory"))
    assert note["trail"] == "not_found" and note["correlation_id"] is None and note["lost_task"] is None
    assert re.fullmatch(
        rf'no ERROR line "could not publish task {re.escape(TASK)} \(broker_unavailable\) \.\.\." at inventory '
        r"in \S+ \.\. \S+",
        note["trail_note"],
    ), note["trail_note"]
    assert f"Links only: {note['trail_note']}." in note["text"]
    assert note["trail_url"] == alert()["annotations"]["trail_url"], "the alert's own links stay"
    assert all(note[name] for name in LINK_FIELDS)


def test_hostile_lost_task_text_is_searched_for_escaped_and_shown_escaped(chat: FakeWebhook) -> None:
    """The task's name (the alert's label, and the line's) goes into LogQL escaped and still finds
    its line; the name and the error text are shown with control characters escaped, the error
    cut to 500 characters, and cannot ping a Slack channel."""
    hostile_task = 'x"} | line_format "{{.x}}\n\x1b[31m (a): .*'
    hostile_error = "<!channel> & `boom`\x1b[31m\n" + "x" * 2000
    now = time.time_ns()
    cid = new_correlation_id((now - 10_000 * MS) // MS)
    other = new_correlation_id((now - 5_000 * MS) // MS)
    with FakeLoki() as loki:
        push_all(
            loki,
            [
                lost_task_line(cid, "b000000000000020", "orders", now - 10_000 * MS, hostile_task, hostile_error),
                lost_task_line(other, "b000000000000021", "orders", now - 5_000 * MS, "x"),
            ],
        )
        note, body = notify_in_slack(loki.url, chat, publish_alert(task=hostile_task))
    assert note["correlation_id"] == cid, "the hostile task's line, not the other task's newer one"
    lost_task = note["lost_task"]
    assert lost_task["task"] == 'x"} | line_format "{{.x}}\\n\\x1b[31m (a): .*'
    assert lost_task["reason"] == "broker_unavailable" and lost_task["count"] == 1
    error = lost_task["error"]
    assert error.startswith("<!channel> & `boom`\\x1b[31m\\n") and "\n" not in error and "\x1b" not in error
    assert len(error) == 500 and error.endswith("…")
    assert "\x1b" not in note["text"] and len(note["text"].splitlines()) == len(note["text"].split("\n"))
    section = body["blocks"][1]["text"]["text"]
    assert "<!channel>" not in section and "&lt;!channel&gt; &amp; 'boom'" in section


@pytest.mark.process
def test_a_stalled_loki_gives_links_only_within_the_budget(chat: FakeWebhook) -> None:
    """Loki accepts the connection and never answers: the Alertmanager webhook is answered at
    once, and the notification goes out when the budget is spent, saying why it has no trail."""
    release = threading.Event()

    class Stalled(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            release.wait(30)
            self.reply(503)

    with LoopbackServer(Stalled) as stalled:
        running = Running(stalled.url, webhook=chat.server.url, budget=1.0)
        try:
            started = time.monotonic()
            answer = running.post(payload(alert()))
            answered = time.monotonic() - started
            (note,) = running.wait_lines(1, timeout=5)
            notified = time.monotonic() - started
            wait_until(lambda: chat.bodies, 5, "the chat webhook")
        finally:
            release.set()
            running.stop()
    assert answer.status_code == 200 and answered < 0.5, answered
    assert 0.9 <= notified < 2.0, notified
    assert note["trail"] == "unavailable" and note["root_cause"] is None and note["correlation_id"] is None
    assert note["trail_note"] == "the trail could not be read: Loki did not answer within 1 s"
    assert note["trail_url"] == alert()["annotations"]["trail_url"], "the alert's own link stays"
    assert "Links only: the trail could not be read: Loki did not answer within 1 s." in note["text"]
    # The count waited no longer than the trail, and gives no number.
    why = "the failed requests could not be counted: Loki did not answer within 1 s"
    assert note["failures"] == {"state": "unavailable", "note": why}
    assert f"Failed requests: count unavailable ({why})" in note["text"]


@pytest.mark.parametrize("firing", [alert(), publish_alert()], ids=["failed-request", "lost-task"])
def test_a_loki_that_is_down_gives_links_only_at_once(firing: dict[str, Any]) -> None:
    note = notify_once(closed_port_url(), firing, timeout=3)
    assert note["trail"] == "unavailable" and "cannot reach Loki" in note["trail_note"]
    assert note["root_cause"] is None and note["lost_task"] is None
    assert all(note[name] for name in LINK_FIELDS)
    if firing["labels"]["alertname"] == "HighErrorRatio":
        assert note["failures"]["state"] == "unavailable" and "cannot reach Loki" in note["failures"]["note"]
    else:
        assert note["failures"]["state"] == "skipped", "lost tasks are counted in lost_task"


def test_no_failure_in_the_window_says_so() -> None:
    with FakeLoki() as loki:
        note = notify_once(loki.url, alert(service="inventory"))
    assert note["trail"] == "not_found"
    assert re.fullmatch(r"no request failed \(status >= 500\) at inventory in \S+ \.\. \S+", note["trail_note"])


#: The two exception types the failures below raise (the demo's fault switch injects the first).
INJECTED_TYPE, OTHER_TYPE = "demo.faults.InjectedFault", "builtins.ValueError"


def stage_failures(loki: FakeLoki, t0: int, plan: list[str | None]) -> list[tuple[str, int, str | None]]:
    """One payments request a second from ``t0``: each failed with the planned ``error_type`` (or
    answered 201 for None, or failed raising nothing for ``""``). The failures: (ID, time, type)."""
    failed = []
    for i, kind in enumerate(plan):
        start = t0 + i * 1000 * MS
        cid = new_correlation_id(start // MS)
        status = 201 if kind is None else 500
        ts, line = access_line(cid, f"{i:016x}", None, "payments", start, 3.0, "POST", "/payments", status)
        if kind:
            line[schema.ERROR_TYPE] = kind
        loki.push(ts, line)
        if kind is not None:
            failed.append((cid, ts, kind or None))
    return failed


def test_the_counts_equal_the_failures_sent_by_type() -> None:
    """Two exception types and a failure that raised nothing, among successes: the notification
    counts each type, says when it was first and last seen, and the share of all requests."""
    plan = [INJECTED_TYPE, None, OTHER_TYPE, INJECTED_TYPE, None, None, "", INJECTED_TYPE, OTHER_TYPE, None]
    t0 = time.time_ns() - 120_000 * MS
    with FakeLoki() as loki:
        failed = stage_failures(loki, t0, plan)
        note = notify_once(loki.url, alert())
        metric = [q.query for q in loki.metric_queries]
    failures = note["failures"]
    assert (failures["failed"], failures["requests"], failures["share"]) == (6, 10, 0.6)
    step = failures["step_seconds"]
    expected = []
    for kind in (INJECTED_TYPE, OTHER_TYPE, None):
        times = [ts for _, ts, k in failed if k == kind]
        expected.append((kind, len(times), min(times), max(times)))
    assert [(k["error_type"], k["count"]) for k in failures["by_type"]] == [(k, n) for k, n, _, _ in expected]
    for kind, (_, _, first, last) in zip(failures["by_type"], expected, strict=True):
        # Seen in the step that ends at first_seen / last_seen.
        for shown_at, sent in ((kind["first_seen"], first), (kind["last_seen"], last)):
            seen = parse_rfc3339_ns(shown_at)
            assert seen - step * 1_000_000_000 < sent <= seen, (kind, shown_at, rfc3339(sent))
    assert f"Failed requests: 6 of 10 (60.0%) at payments in {failures['window']['start']}" in note["text"]
    assert f"  {INJECTED_TYPE}: 3, first seen " in note["text"] and "  no exception: 1, first seen " in note["text"]
    # One range query grouped by error type, one instant count of all requests: never a line read.
    assert len(metric) == 2 and metric[0].startswith("sum by (error_type) (count_over_time(")


def parse_rfc3339_ns(text: str) -> int:
    """The ns of a ``format_time`` string (``...:SS.ffffffZ``)."""
    whole, fraction = text.rstrip("Z").split(".")
    moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + int(fraction) * 1000


def test_a_resolved_notification_closes_the_story() -> None:
    """How long it lasted, how many requests failed by type, the trail of the first and last failure;
    no trail of the newest failure is read (it is over)."""
    plan = [None, INJECTED_TYPE, OTHER_TYPE, None, INJECTED_TYPE, None]
    t0 = time.time_ns() - 200_000 * MS
    started = time.gmtime(t0 // 1_000_000_000 - 60)
    with FakeLoki() as loki:
        failed = stage_failures(loki, t0, plan)
        resolved = alert("resolved")
        resolved["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", started)
        resolved["endsAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 // 1_000_000_000 + 540))
        note = notify_once(loki.url, resolved)
    assert note["status"] == "resolved" and note["page"] is False and note["trail"] == "skipped"
    assert note["duration_seconds"] == 600.0 and note["correlation_id"] is None
    failures = note["failures"]
    assert [(k["error_type"], k["count"]) for k in failures["by_type"]] == [(INJECTED_TYPE, 2), (OTHER_TYPE, 1)]
    assert (failures["failed"], failures["requests"]) == (3, 6)
    (first_id, first_ts, _), (last_id, last_ts, _) = failed[0], failed[-1]
    assert failures["first_failure"]["correlation_id"] == first_id and failures["first_failure"]["time"] == rfc3339(
        first_ts
    )
    assert failures["last_failure"]["correlation_id"] == last_id
    assert failures["last_failure"]["trail_page_url"] == f"{TRAIL_WEB}/t/{last_id}"
    assert f"correlation_id%3D%5C%22{first_id}" in failures["first_failure"]["trail_url"]
    lines = note["text"].splitlines()
    assert lines[0] == "[RESOLVED] HighErrorRatio (critical, no page): payments"
    assert lines[2].startswith("Lasted 10m (") and lines[3].startswith("Failed requests: 3 of 6 (50.0%) at payments")
    assert f"First failure: {rfc3339(first_ts)} {TRAIL_WEB}/t/{first_id}" in lines
    assert f"Last failure: {rfc3339(last_ts)} {TRAIL_WEB}/t/{last_id}" in lines


#: A second exception type of the worker's runs (a mail relay that timed out).
TIMEOUT_TYPE = "requests.exceptions.ReadTimeout"


def stage_task_runs(loki: FakeLoki, t0: int, task: str, plan: list[str]) -> list[tuple[str, int, str]]:
    """One run of ``task`` at the notifications worker a second from ``t0``: ``success``, ``retry``
    (an attempt that was retried: no end) or the error type the run failed with, its retries spent.
    The failed runs: (ID, time, type)."""
    failed = []
    for i, planned in enumerate(plan):
        ts = t0 + i * 1000 * MS
        cid = new_correlation_id(ts // MS)
        state = planned if planned in ("success", "retry") else "failure"
        error_type = planned if state == "failure" else None
        loki.push(*task_run_line(cid, f"{i:08x}{len(task):08x}", "notifications", ts, task, state, error_type))
        if error_type is not None:
            failed.append((cid, ts, error_type))
    return failed


def two_tasks_failing_at_different_rates(loki: FakeLoki, t0: int) -> list[tuple[str, int, str]]:
    """TASK fails 3 of its 8 finished runs (two attempts retried besides); RECEIPT, of the same
    worker, fails every run, starting before TASK's first failure and ending after its last. TASK's
    failed runs: (ID, time, type)."""
    stage_task_runs(loki, t0, RECEIPT, [TIMEOUT_TYPE] * 12)
    plan = [INJECTED_TYPE, "success", "retry", OTHER_TYPE, "success", "success", "retry", INJECTED_TYPE]
    return stage_task_runs(loki, t0 + 2500 * MS, TASK, [*plan, "success", "success"])


def test_a_task_alert_counts_the_failed_runs_of_its_task_not_of_the_worker() -> None:
    """TaskFailures is about one task: its notification counts that task's failed runs by type,
    over that task's finished runs, although another task of the same worker fails more."""
    t0 = time.time_ns() - 60_000 * MS
    with FakeLoki() as loki:
        failed = two_tasks_failing_at_different_rates(loki, t0)
        note = notify_once(loki.url, task_failures_alert(TASK))
    failures = note["failures"]
    assert [(k["error_type"], k["count"]) for k in failures["by_type"]] == [(INJECTED_TYPE, 2), (OTHER_TYPE, 1)]
    # Retried attempts are no end of a run: 8 finished runs, as TaskFailures' own ratio counts them.
    assert (failures["failed"], failures["requests"], failures["share"]) == (3, 8, 0.375)
    assert (failures["service"], failures["task"]) == ("notifications", TASK)
    step = failures["step_seconds"] * 1_000_000_000
    (injected, _) = failures["by_type"]
    first, last = failed[0][1], failed[-1][1]
    assert parse_rfc3339_ns(injected["first_seen"]) - step < first <= parse_rfc3339_ns(injected["first_seen"])
    assert parse_rfc3339_ns(injected["last_seen"]) - step < last <= parse_rfc3339_ns(injected["last_seen"])
    assert f"Failed runs of {TASK}: 3 of 8 (37.5%) at notifications in " in note["text"]


def test_a_resolved_task_alert_links_the_first_and_last_failed_run_of_its_task() -> None:
    t0 = time.time_ns() - 60_000 * MS
    with FakeLoki() as loki:
        failed = two_tasks_failing_at_different_rates(loki, t0)
        resolved = task_failures_alert(TASK)
        resolved.update(status="resolved", endsAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        note = notify_once(loki.url, resolved)
    failures = note["failures"]
    assert (failures["failed"], failures["task"]) == (3, TASK)
    assert failures["first_failure"]["correlation_id"] == failed[0][0], "the task's first, not the worker's"
    assert failures["last_failure"]["correlation_id"] == failed[-1][0]


def test_a_task_label_that_cannot_be_searched_for_is_not_counted_as_the_worker() -> None:
    with FakeLoki() as loki:
        two_tasks_failing(loki)
        note = notify_once(loki.url, task_failures_alert("t" * 300))
        metric = loki.metric_queries
    assert note["failures"]["state"] == "skipped" and not metric
    assert note["failures"]["note"].startswith("the alert's task label cannot be searched for (task name 'ttt")


def test_a_repeated_alert_is_notified_once(staged: tuple[FakeLoki, str]) -> None:
    """Alertmanager re-sends a whole group when another alert joins it; HA peers each send."""
    loki, _ = staged
    running = Running(loki.url)
    try:
        first = alert()  # one startsAt: alert() reads the clock, and a second may tick between two calls
        assert running.post(payload(first)).json()["notifying"] == 1
        second = running.post(payload(first, alert(service="inventory"))).json()
        assert second == {"received": 2, "notifying": 1, "repeats": 1}
        running.wait_lines(2)
    finally:
        running.stop()  # waits for the workers: every notification queued is written by now
    assert sorted(n["service"] for n in running.lines()) == ["inventory", "payments"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"alerts": []}', "version: expected '4'"),
        (b'{"version": "4", "alerts": {}}', "alerts: expected a list"),
        (b'{"version": "4", "alerts": [{"status": "burning", "labels": {"alertname": "X"}}]}', "alerts[0].status"),
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": 5}}]}',
            "alerts[0].labels.alertname: expected a string",
        ),
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"service": "x"}}]}',
            "alerts[0].labels.alertname: missing",
        ),
        (
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "X"}, "startsAt": "now"}]}',
            "alerts[0].startsAt",
        ),
    ],
)
def test_a_malformed_payload_gets_400_with_the_reason(body: bytes, reason: str) -> None:
    running = Running(closed_port_url())
    try:
        answer = running.post(body)
        assert answer.status_code == 400 and reason in answer.json()["error"], answer.json()
        assert requests.get(running.url + "/healthz", timeout=5).status_code == 200, "still serving"
        assert requests.get(running.url + "/alerts", timeout=5).json() == []
    finally:
        running.stop()
    assert running.lines() == []


def test_slack_format_escapes_and_bounds_what_comes_from_logs(chat: FakeWebhook) -> None:
    """A hostile error message cannot ping the channel, fake a line or flood it."""
    t0 = time.time_ns() - 30_000 * MS
    cid = new_correlation_id(t0 // MS)
    hostile = "<!channel> & `boom`\x1b[31m\t" + "x" * 2000
    lines = [pair for pair in checkout_lines(cid, t0) if "exception" not in pair[1]]
    lines.append(
        log_line(
            cid,
            PAYMENTS,
            "b000000000000002",
            "payments",
            t0 + 8 * MS,
            "failed",
            level="ERROR",
            exception=f"Traceback (most recent call last):\nValueError: {hostile}",
        )
    )
    with FakeLoki() as loki:
        push_all(loki, lines)
        note, body = notify_in_slack(loki.url, chat, alert())
    message = note["error"]["message"]
    assert message.startswith("<!channel> & `boom`\\x1b[31m\\t") and "\t" not in message
    assert len(message) == 500 and message.endswith("…")
    assert set(body) == {"text", "blocks"} and body["text"].startswith("[FIRING] HighErrorRatio")
    header, section, actions = body["blocks"]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    text = section["text"]["text"]
    assert section["text"]["type"] == "mrkdwn" and len(text) <= 3000
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp; 'boom'" in text
    assert f"*Correlation ID:* `{cid}`" in text and "*Root cause:* `payments POST /payments answered 500" in text
    assert [b["url"] for b in actions["elements"]] == [note[name] for name in LINK_FIELDS]


@pytest.mark.process
def test_the_webhook_is_retried_with_backoff_and_refusals_are_counted(chat: FakeWebhook) -> None:
    chat.script = [503, 503]
    running = Running(closed_port_url(), webhook=chat.server.url)
    try:
        running.post(payload(alert()))
        wait_until(lambda: chat.bodies, 10, "delivery after two 503s")
        chat.script = [400]
        running.post(payload(alert(service="orders")))
        running.wait_lines(2)
        assert running.notifier.delivery.wait_idle(10)
        stats = requests.get(running.url + "/healthz", timeout=5).json()["delivery"]
    finally:
        running.stop()
    assert len(chat.bodies) == 1
    assert stats["sent"] == 1 and stats["retries"] == 2
    assert stats["dropped"] == {"queue_full": 0, "rejected": 1, "retries_exhausted": 0, "shutdown": 0}
    assert len(running.lines()) == 2, "stdout has every notification, delivered or not"


def test_runbooks_are_served_and_nothing_else() -> None:
    running = Running(closed_port_url())
    try:
        ok = requests.get(running.url + "/alerts/runbooks/HighErrorRatio.md", timeout=5)
        assert ok.status_code == 200 and ok.text.startswith("# HighErrorRatio (page)")
        for path in ("/alerts/runbooks/../../README.md", "/alerts/runbooks/%2e%2e/x.md", "/alerts/runbooks/Nope.md"):
            assert requests.get(running.url + path, timeout=5).status_code == 404, path
    finally:
        running.stop()


def test_each_runbook_says_first_where_the_count_of_what_broke_is() -> None:
    """A runbook is static text: its first paragraph points at the notification field that counts."""
    for path in sorted((REPO / "alerts/runbooks").glob("*.md")):
        first = path.read_text().split("\n\n")[1]
        field = "lost_task" if path.stem == "TaskPublishFailures" else "failures"
        assert first.startswith("**How much broke** is in the notification") and f"`{field}`" in first, path.name
        assert field in FIELDS


def test_settings_refuse_bad_values_naming_the_variable() -> None:
    assert NotifySettings.from_env({}) == NotifySettings()
    settings = NotifySettings.from_env(
        {
            "NOTIFY_WEBHOOK_URL": "https://hooks.example.test/x/",
            "NOTIFY_FORMAT": "slack",
            "NOTIFY_LOOKUP_SECONDS": "1.5",
        }
    )
    assert settings.delivery.webhook_url == "https://hooks.example.test/x" and settings.delivery.format == "slack"
    assert settings.lookup_seconds == 1.5
    for name, value in (
        ("NOTIFY_FORMAT", "xml"),
        ("NOTIFY_WEBHOOK_URL", "hooks.example.test"),
        ("NOTIFY_LOOKUP_SECONDS", "0"),
        ("NOTIFY_PORT", "http"),
    ):
        with pytest.raises(ConfigError, match=f"^{name}="):
            NotifySettings.from_env({name: value})


def test_the_notifier_page_documents_every_field_and_variable() -> None:
    """The notification's fields and NOTIFY_* variables are a contract: docs/notifier.md lists each."""
    section = (REPO / "docs" / "notifier.md").read_text()
    for name in FIELDS:
        assert f"| `{name}` |" in section, name
    source = "".join(path.read_text() for path in sorted((REPO / "app/trail/notify").glob("*.py")))
    for variable in sorted(set(re.findall(r'"(NOTIFY_[A-Z_]+)"', source))):
        assert f"`{variable}`" in section, variable


def test_alertmanager_and_compose_agree_on_the_notifier() -> None:
    am = load_yaml("alerts/alertmanager.yml")
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://alert-receiver:9095/alerts"]
    assert all(w["send_resolved"] for r in am["receivers"] for w in r.get("webhook_configs", []))
    svc = load_yaml("docker-compose.yml")["services"]["alert-receiver"]
    assert svc["command"] == ["python", "-m", "trail.notify", "--host", "0.0.0.0", "--port", "9095"]
    assert svc["environment"]["LOKI_URL"] == "http://loki:3100"
    assert svc["environment"]["NOTIFY_RUNBOOK_DIR"] == "/srv/runbooks"
    assert "./alerts/runbooks:/srv/runbooks:ro" in svc["volumes"]
    assert "127.0.0.1:9095:9095" in svc["ports"], "the default runbook_url base must open in a browser"
    prometheus = load_yaml("docker-compose.yml")["services"]["prometheus"]
    assert prometheus["environment"]["RUNBOOK_BASE_URL"] == "${RUNBOOK_BASE_URL:-http://localhost:9095}"
    # The notifier links only under its own bases: they must be the ones the alerts' links are
    # built on (Prometheus' external labels), or every link would be dropped.
    bases = {
        "NOTIFY_GRAFANA_URL": "GRAFANA_URL",
        "NOTIFY_TRAIL_WEB_URL": "TRAIL_WEB_URL",
        "NOTIFY_RUNBOOK_BASE_URL": "RUNBOOK_BASE_URL",
    }
    for notifier_variable, prometheus_variable in bases.items():
        assert svc["environment"][notifier_variable] == prometheus["environment"][prometheus_variable]
