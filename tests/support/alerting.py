"""The alerting path run for real around the demo chain: Prometheus and Alertmanager with configs
derived from the repository's (only `for`, the intervals and the addresses changed), the notifier
in this process, a fake chat webhook, a gate in front of the fake Loki that can stall like a
Loki that stopped answering, and checkout traffic that records which requests failed.

Everything listens on 127.0.0.1; every wait is a poll with a deadline; every process started here
is stopped here.
"""

from __future__ import annotations

import copy
import io
import re
import secrets
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from correlation.settings import LokiSettings
from demo import local_worker
from demo.run_local import Chain, start_chain, wait_healthy
from demo.services import SERVICES
from fakes import FakeWebhook, LoopbackServer, QuietHandler, free_port, wait_until
from tests.support import REPO
from tests.support.broker import RETRY_ENV, Broker
from tests.support.stack import (
    alertmanager_server,
    instant_query,
    load_yaml,
    local_alertmanager_config,
    prometheus_server,
)
from trail.notify.auth import NotifyAuth
from trail.notify.delivery import DeliverySettings
from trail.notify.notifier import Notifier, NotifySettings, build
from trail.notify.payload import AlertEvent

#: Every rule's `for` is divided by this (HighErrorRatio 2m -> 5 s, DownstreamErrors 3m -> 7.5 s,
#: ServiceDown 1m -> 2.5 s): the order the rules rely on is kept.
FOR_SCALE = 24
INTERVAL_SECONDS = 1.0  # scrape and evaluation interval of the derived Prometheus
GRAFANA = "http://grafana.integration.test:3000"
RUNBOOKS = "http://runbooks.integration.test"
TRAIL_WEB = "http://trail-web.integration.test:8090"
TRAFFIC_MAX_SECONDS = 150.0
REQUEST_PERIOD_SECONDS = 0.2  # pacing of the traffic loop (a few checkouts a second), not a sync
_DURATION = re.compile(r"(\d+)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


# --- derived configs -------------------------------------------------------------------------------


def for_ms(text: str) -> int:
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unexpected duration {text!r}"
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def shorten_for(text: str) -> str:
    """The rules file with every `for:` divided by FOR_SCALE; every other byte unchanged."""

    def shorter(match: re.Match[str]) -> str:
        return f"{match.group(1)}{for_ms(match.group(2)) // FOR_SCALE}ms"

    return re.sub(r"^(\s+for:[ \t]*)(\S+)[ \t]*$", shorter, text, flags=re.MULTILINE)


def derived_rules() -> dict[str, str]:
    """alerts/*.rules.yml, `for` shortened: file name -> text."""
    return {path.name: shorten_for(path.read_text()) for path in sorted((REPO / "alerts").glob("*.rules.yml"))}


def derived_prometheus_config(targets: dict[str, str], rule_names: list[str], alertmanager: str) -> dict[str, Any]:
    """prometheus/prometheus.yml with the demo job pointed at the local chain (same `service`
    labels), 1 s intervals, the derived rule files and the local Alertmanager."""
    repo = load_yaml("prometheus/prometheus.yml")
    (job,) = [copy.deepcopy(j) for j in repo["scrape_configs"] if j["job_name"] == "demo-services"]
    assert job.get("honor_labels") is True, "the app's own `service` label must win"
    seen = set()
    for static in job["static_configs"]:
        service = static["labels"]["service"]
        (target,) = static["targets"]
        assert target.split(":")[0] == service, f"compose target {target} for service {service}"
        static["targets"] = [targets[service]]
        seen.add(service)
    assert seen == set(SERVICES), f"prometheus.yml scrapes {sorted(seen)}, the chain is {SERVICES}"
    assert repo["rule_files"] == ["/etc/prometheus/alerts/*.rules.yml"], "the derived config mirrors this glob"
    alerting = copy.deepcopy(repo["alerting"])
    assert len(alerting["alertmanagers"]) == 1 and len(alerting["alertmanagers"][0]["static_configs"]) == 1
    alerting["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    return {
        "global": {
            "scrape_interval": f"{INTERVAL_SECONDS:g}s",
            "evaluation_interval": f"{INTERVAL_SECONDS:g}s",
            # `${GRAFANA_URL}`, `${RUNBOOK_BASE_URL}` as written; expanded from the environment.
            "external_labels": repo["global"]["external_labels"],
            # scrape_protocols is left out: Prometheus 2.42 does not know it (exemplar-storage
            # makes 2.42 ask for OpenMetrics anyway).
        },
        "rule_files": rule_names,
        "alerting": alerting,
        "scrape_configs": [job],
    }


def add_worker_job(config: dict[str, Any], worker_url: str) -> None:
    """prometheus/prometheus.yml's notifications-worker job, pointed at the local worker (same
    `service` label), appended to ``config``'s scrape jobs."""
    from demo import notifications  # imports Celery: only for the tests that run the worker

    repo = load_yaml("prometheus/prometheus.yml")
    (job,) = [copy.deepcopy(j) for j in repo["scrape_configs"] if j["job_name"] == "notifications-worker"]
    assert job.get("honor_labels") is True, "the worker's own `service` label must win"
    (static,) = job["static_configs"]
    assert static["labels"] == {"service": notifications.SERVICE}
    static["targets"] = [urllib.parse.urlsplit(worker_url).netloc]
    config["scrape_configs"].append(job)


def derived_alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """alerts/alertmanager.yml with only the webhook's address and its token file changed."""
    return local_alertmanager_config(webhook_url, token_file)


# --- traffic and faults ----------------------------------------------------------------------------


@dataclass
class Traffic:
    """A bounded loop of POST /checkout in a thread, recording each answer's correlation ID."""

    gateway: str
    failed: dict[str, int] = field(default_factory=dict)  # correlation ID -> status (>= 500)
    succeeded: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="checkout-traffic", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + TRAFFIC_MAX_SECONDS
        with requests.Session() as session:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                try:
                    response = session.post(f"{self.gateway}/checkout", json={}, timeout=10)
                    cid = response.headers.get("X-Correlation-ID", "")
                    with self.lock:
                        if not cid:
                            self.problems.append(f"answer {response.status_code} without X-Correlation-ID")
                        elif response.status_code >= 500:
                            self.failed[cid] = response.status_code
                        else:
                            self.succeeded[cid] = response.status_code
                except requests.RequestException as exc:
                    with self.lock:
                        self.problems.append(repr(exc))
                self.stop_event.wait(REQUEST_PERIOD_SECONDS)

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the traffic thread did not stop"

    def all_ids(self) -> set[str]:
        with self.lock:
            return set(self.failed) | set(self.succeeded)


def set_faults(base: str, **values: Any) -> dict[str, Any]:
    response = requests.post(f"{base}/admin/faults", json=values, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --- the notifier's surroundings -----------------------------------------------------------------


def pages(chat: FakeWebhook) -> list[tuple[float, dict[str, Any]]]:
    """The notifications that page, with the monotonic time each reached the chat webhook."""
    return [(delivery.at, delivery.body) for delivery in chat.deliveries if delivery.body["page"]]


class LokiGate:
    """Loki as the notifier sees it: the fake Loki's query API, passed through, until
    :meth:`stall` makes it accept connections and never answer (a Loki that stopped)."""

    def __init__(self, loki_url: str) -> None:
        self.stalled = threading.Event()
        self.released = threading.Event()
        gate = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                if gate.stalled.is_set():
                    gate.released.wait(60)
                    try:
                        self.reply(503, "stopped")
                    except OSError:
                        pass  # the notifier gave up long ago, as it should
                    return
                with urllib.request.urlopen(loki_url + self.path, timeout=10) as answer:
                    self.reply(answer.status, answer.read(), answer.headers.get("Content-Type", ""))

        self.server = LoopbackServer(Handler)

    def stall(self) -> None:
        self.stalled.set()


@dataclass
class NotifierRun:
    """The notifier on loopback, writing to ``out`` and posting to the chat webhook; ``received``
    holds the monotonic time each alert state first reached it."""

    notifier: Notifier
    url: str
    out: io.StringIO
    received: dict[tuple[str, str, str], float]
    #: The token the notifier wants, for Alertmanager's ``credentials_file``.
    token_file: Path


@contextmanager
def running_notifier(loki_url: str, webhook_url: str) -> Iterator[NotifierRun]:
    """The notifier as compose runs it: wanting a token, linking under the stack's addresses."""
    token = secrets.token_urlsafe(16)
    settings = NotifySettings(
        port=0,
        grafana_url=GRAFANA,
        trail_web_url=TRAIL_WEB,
        runbook_base_url=RUNBOOKS,
        delivery=DeliverySettings(webhook_url=webhook_url),
        auth=NotifyAuth(token=token),
    )
    tmp = tempfile.TemporaryDirectory(prefix="notify-token-")
    token_file = Path(tmp.name) / "token"
    token_file.write_text(token + "\n")
    out = io.StringIO()
    server, notifier = build(settings, LokiSettings(url=loki_url), out=out)
    received: dict[tuple[str, str, str], float] = {}
    accept = notifier.accept

    def timed_accept(payload: Any, events: list[AlertEvent]) -> dict[str, int]:
        for event in events:
            received.setdefault((event.alertname, event.service or "", event.status), time.monotonic())
        return accept(payload, events)

    setattr(notifier, "accept", timed_accept)
    with tmp, LoopbackServer(server) as loopback:
        try:
            yield NotifierRun(notifier, loopback.url, out, received, token_file)
        finally:
            notifier.close(timeout=2)


@contextmanager
def alerting_stack(
    chain_urls: dict[str, str],
    notifier_url: str,
    token_file: Path,
    unscraped: frozenset[str] = frozenset(),
    worker_url: str | None = None,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A fresh Alertmanager and Prometheus (so no earlier scenario's rates linger) watching the
    chain; yields (prometheus URL, alertmanager URL, derived rules) once every service is up.
    ``unscraped``: services left out of the scrape job (a peer "not monitored here");
    ``worker_url``: the notifications worker's control endpoint, scraped as prometheus.yml does."""
    rules = derived_rules()
    with alertmanager_server(derived_alertmanager_config(notifier_url + "/alerts", token_file)) as am:
        targets = {name: urllib.parse.urlsplit(url).netloc for name, url in chain_urls.items()}
        config = derived_prometheus_config(targets, sorted(rules), urllib.parse.urlsplit(am).netloc)
        for job in config["scrape_configs"]:
            job["static_configs"] = [s for s in job["static_configs"] if s["labels"]["service"] not in unscraped]
        expected = set(SERVICES) - unscraped
        if worker_url is not None:
            add_worker_job(config, worker_url)
            expected.add("notifications")
        # Prometheus 2.42 expands ${VAR} in external labels only with this feature.
        with prometheus_server(
            config,
            rules,
            env={"GRAFANA_URL": GRAFANA, "RUNBOOK_BASE_URL": RUNBOOKS, "TRAIL_WEB_URL": TRAIL_WEB},
            features=("expand-external-labels",),
        ) as prom:

            def all_up() -> bool:
                result = instant_query(prom, "up == 1")["result"]
                return {r["metric"].get("service") for r in result} == expected

            wait_until(all_up, 60, f"Prometheus to scrape {sorted(expected)}", interval=0.5)
            yield prom, am, rules


def critical_alerts(prometheus: str) -> set[tuple[str, str, str]]:
    """(alertname, service, state) of every paging alert Prometheus holds, pending or firing."""
    result = instant_query(prometheus, 'ALERTS{severity="critical"}')["result"]
    return {(r["metric"]["alertname"], r["metric"]["service"], r["metric"]["alertstate"]) for r in result}


def rule_file_paths() -> list[Path]:
    return sorted((REPO / "alerts").glob("*.rules.yml"))


@dataclass
class TaskChain:
    """The demo chain and the notifications worker, with a Redis broker between them."""

    chain: Chain
    worker_url: str
    broker: Broker


def start_task_chain(started: ExitStack, root: Path, loki_url: str, codes: dict[str, int | None]) -> TaskChain:
    """Start a broker, the chain and the worker shipping to ``loki_url`` (logs in ``root``); each is
    stopped by ``started`` (last first), and ``codes`` gets every process's exit status."""
    redis_log = started.enter_context((root / "redis.log").open("wb"))
    chain_log = started.enter_context((root / "services.log").open("wb"))
    worker_log = started.enter_context((root / "worker.log").open("wb"))
    broker = Broker(free_port(), root, redis_log)
    broker.start()
    started.callback(lambda: broker.proc is not None and broker.proc.poll() is None and broker.stop())
    env = {
        "LOKI_URL": loki_url,
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2",
        "DEPLOY_ENV": "test",
        "CELERY_BROKER_URL": broker.url,
    }
    chain = start_chain({name: free_port() for name in SERVICES}, env, stdout=chain_log)
    started.callback(lambda: codes.update(chain.stop()))
    port = free_port()
    worker = local_worker.start_worker(
        port, {**env, **RETRY_ENV, "INVENTORY_URL": chain.urls["inventory"]}, stdout=worker_log
    )
    started.callback(lambda: codes.update({"worker": local_worker.stop(worker, timeout=20)}))
    worker_url = f"http://127.0.0.1:{port}"
    wait_healthy(worker_url, worker, timeout=30)
    return TaskChain(chain, worker_url, broker)
