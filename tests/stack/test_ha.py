"""More than one process per component (docker-compose.ha.yml), tested with real processes.

- The merged compose files validate, and say what docs/deployment-ha.md says.
- Two Debian Prometheus (distinct `replica` external labels) and two clustered Debian Alertmanagers
  on loopback, with the project's rules (only `for:` shortened) and routing (only the receiver
  URL changed): a firing alert that BOTH Prometheus send to BOTH Alertmanagers is notified once,
  and two replicas' series aggregate to the service's true error ratio.
- Two orders replicas serving two hops of one correlation ID: `trail` still builds a tree.
- With LOKI_BIN: loki/loki-ha.yaml as three real Loki processes behind Debian's nginx running
  loki/nginx-ha.conf (only addresses changed; a shared directory stands in for the bucket).

Everything listens on 127.0.0.1; every wait is a poll with a deadline; every process started here
is stopped here.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from demo.services import SERVICES
from fakes import FakeLoki, FakeWebhook, LoopbackServer, QuietHandler, free_port, wait_until
from tests.support import REPO
from tests.support.grafana import dashboard_promql_queries, substitute_grafana_vars
from tests.support.replicas import (
    LokiCluster,
    Server,
    assert_tree_across_orders_replicas,
    metric_sum,
    start_loki_cluster,
    start_replica_chain,
    two_checkouts_with_one_id,
)
from tests.support.shipper import make_handler
from tests.support.stack import (
    http_get_json,
    instant_query,
    load_yaml,
    local_alertmanager_config,
    require_tool,
    run,
)
from trail.cli.main import main as trail_main
from trail.loki_query import LokiQueryClient

pytestmark = pytest.mark.stack  # the trail test says process, the Loki cluster ones real_loki

COMPOSE_FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.ha.yml"]
SHORT_FOR = "5s"
#: Alertmanager waits peer_timeout x its position in the cluster before it notifies, so that a
#: peer's notification (gossiped) can stop it. Shortened from 15 s to keep the test quick.
PEER_TIMEOUT = "2s"
ERROR_RATIO = 0.10  # each payments replica fails 10% of its requests: the service fails 10%
LOKI_BIN = os.environ.get("LOKI_BIN", "")
NGINX = shutil.which("nginx")


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Server]]:
    """Every Server appended here is stopped at the end of the module."""
    started: list[Server] = []
    yield started
    for server in reversed(started):
        server.stop()


# --- the compose override ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    run([require_tool("docker-compose"), *COMPOSE_FILES, "config", "-q"], cwd=REPO)
    out = run([require_tool("docker-compose"), *COMPOSE_FILES, "config"], cwd=REPO).stdout
    return yaml.safe_load(out)["services"]


def test_merged_compose_files_validate_and_keep_ports_on_loopback(merged: dict[str, Any]) -> None:
    for name, service in merged.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        image = service.get("image", "")
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: pin {image!r}"
    for name in set(load_yaml("docker-compose.ha.yml")["services"]) - {"minio-init", "stack-secrets"}:  # one-shots
        assert "healthcheck" in merged[name], f"{name} has no healthcheck"


def test_merged_compose_runs_loki_in_ha_monolithic_mode(merged: dict[str, Any]) -> None:
    replicas = {name: merged[name] for name in ("loki-1", "loki-2", "loki-3")}
    modes = sorted(svc["environment"]["LOKI_COMPACTOR_MODE"] for svc in replicas.values())
    assert modes == ["main", "worker", "worker"], "exactly one main compactor"
    assert {svc["environment"]["LOKI_INSTANCE_ID"] for svc in replicas.values()} == set(replicas)
    for svc in replicas.values():
        assert svc["image"] == merged["loki-1"]["image"] and "-target=all" in svc["command"]
        assert "-config.expand-env=true" in svc["command"]
        assert svc["environment"]["LOKI_OBJECT_STORE"] == "s3"
        assert set(svc["environment"]["LOKI_MEMBERLIST_JOIN"].split(",")) == {f"{n}:7946" for n in replicas}
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # `loki` is now the load balancer, so every LOKI_URL and Grafana's data source stay as they are.
    assert merged["loki"]["image"].startswith("nginx:")
    assert set(merged["loki"]["depends_on"]) == set(replicas)
    nginx_conf = (REPO / "loki/nginx-ha.conf").read_text()
    assert all(f"server {name}:3100" in nginx_conf for name in replicas)
    config = load_yaml("loki/loki-ha.yaml")
    assert config["common"]["replication_factor"] == 3
    assert config["common"]["ring"]["kvstore"]["store"] == "memberlist"


def without(mapping: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def test_merged_compose_runs_two_of_every_service(merged: dict[str, Any]) -> None:
    """Every service of the chain (a SERVICE_NAME) runs twice; a twin is its original but for
    what must differ, so a change to the base file that misses the twin fails here."""
    services = {name for name, svc in merged.items() if "SERVICE_NAME" in svc.get("environment", {})}
    assert {"gateway", "orders", "payments", "inventory"} <= services
    for name in services - {"gateway", "gateway-2"}:
        assert merged[name]["deploy"]["replicas"] == 2, name
    # The gateway's host port fits one container: its twin answers to the same DNS name.
    gateway, twin = merged["gateway"], merged["gateway-2"]
    assert twin["networks"]["default"]["aliases"] == ["gateway"] and "ports" not in twin
    assert without(twin, "networks", "container_name") == without(gateway, "ports", "container_name")
    # Two Prometheus, alike but for the replica label and their own address and disk.
    first, second = merged["prometheus"], merged["prometheus-2"]
    assert first["environment"]["PROMETHEUS_REPLICA"] == "prometheus-1"
    assert without(second["environment"], "PROMETHEUS_REPLICA") == without(first["environment"], "PROMETHEUS_REPLICA")
    flags = ("--web.external-url",)
    assert [f for f in second["command"] if not f.startswith(flags)] == [
        f for f in first["command"] if not f.startswith(flags)
    ]
    assert second["image"] == first["image"] and second["healthcheck"] == first["healthcheck"]
    # Two Alertmanagers, each the other's gossip peer.
    for am, peer in (("alertmanager", "alertmanager-2"), ("alertmanager-2", "alertmanager")):
        assert f"--cluster.peer={peer}:9094" in merged[am]["command"]
    assert merged["alertmanager-2"]["image"] == merged["alertmanager"]["image"]


def test_ha_prometheus_config_is_prometheus_yml_with_every_replica() -> None:
    single, ha = load_yaml("prometheus/prometheus.yml"), load_yaml("prometheus/prometheus-ha.yml")
    assert ha["global"]["external_labels"] == {
        **single["global"]["external_labels"],
        "replica": "${PROMETHEUS_REPLICA}",
    }
    assert without(ha["global"], "external_labels") == without(single["global"], "external_labels")
    assert ha["rule_files"] == single["rule_files"]
    assert ha["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["alertmanager:9093", "alertmanager-2:9093"]}]}
    ]
    assert ha["alerting"]["alert_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]
    single_jobs = {job["job_name"]: job for job in single["scrape_configs"]}
    ha_jobs = {job["job_name"]: job for job in ha["scrape_configs"]}
    assert set(ha_jobs) == set(single_jobs)
    for name, job in single_jobs.items():
        targets = {t: g.get("labels", {}).get("service") for g in job["static_configs"] for t in g["targets"]}
        if "dns_sd_configs" in ha_jobs[name]:  # replicated services: a DNS name for each static target
            found = {f"{n}:{sd['port']}": n for sd in ha_jobs[name]["dns_sd_configs"] for n in sd["names"]}
            assert found == targets, name  # the DNS name is the `service` label the target had
            assert ha_jobs[name]["relabel_configs"] == [
                {"source_labels": ["__meta_dns_name"], "target_label": "service"}
            ]
            assert ha_jobs[name].get("honor_labels") == job.get("honor_labels"), name
        else:  # the stack's own components: every replica, on the same port
            ha_targets = [t for g in ha_jobs[name]["static_configs"] for t in g["targets"]]
            assert len(ha_targets) >= len(targets) and {t.split(":")[1] for t in ha_targets} == {
                t.split(":")[1] for t in targets
            }, name


def test_promtool_accepts_the_ha_prometheus_config(tmp_path: Path) -> None:
    config = load_yaml("prometheus/prometheus-ha.yml")
    # promtool 2.42 predates scrape_protocols; the image (v3) has it.
    assert config["global"].pop("scrape_protocols")[0] == "OpenMetricsText1.0.0"
    config["rule_files"] = [f.replace("/etc/prometheus/alerts", str(REPO / "alerts")) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run([require_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")]).stdout
    assert "SUCCESS" in out


# --- two Prometheus, two Alertmanagers ------------------------------------------------------------


def replica_metrics(service: str, failed_id: str) -> LoopbackServer:
    """/metrics of one replica answering 50 requests a second, ERROR_RATIO of them its own 5xx.
    Counters follow the clock, so both Prometheus read the same rates whatever their timing."""
    started = time.monotonic()
    failed_at = int(time.time())
    COUNT = "http_server_request_duration_seconds_count"  # noqa: N806 - a metric name, as in the rules

    class Replica(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            total = 50 * (time.monotonic() - started)
            common = f'service="{service}",route="/{service}",method="POST"'
            self.reply(
                200,
                "".join(
                    [
                        f'{COUNT}{{{common},status="201"}} {total * (1 - ERROR_RATIO)}\n',
                        f'{COUNT}{{{common},status="500"}} {total * ERROR_RATIO}\n',
                        f'http_server_errors_total{{{common},status="500",origin="self"}} {total * ERROR_RATIO}\n',
                        f'correlation_last_failed_request{{service="{service}",correlation_id="{failed_id}",'
                        f'route="/{service}",status="500"}} {failed_at}\n',
                    ]
                ),
                "text/plain; version=0.0.4",
            )

    return LoopbackServer(Replica)


def ha_prometheus_config(
    targets: dict[str, list[str]], alertmanagers: list[str], rule_files: list[str]
) -> dict[str, Any]:
    """prometheus/prometheus-ha.yml, pointed at loopback: each DNS name's answers become static
    targets carrying the __meta_dns_name that DNS discovery would set, so the relabeling runs as
    written; the rule files are the shortened copies; 1 s intervals."""
    repo = load_yaml("prometheus/prometheus-ha.yml")
    (job,) = [copy.deepcopy(j) for j in repo["scrape_configs"] if j["job_name"] == "demo-services"]
    names = {name for sd in job.pop("dns_sd_configs") for name in sd["names"]}
    assert set(targets) <= names == set(SERVICES)
    job["static_configs"] = [
        {"targets": addresses, "labels": {"__meta_dns_name": name}} for name, addresses in targets.items()
    ]
    alerting = copy.deepcopy(repo["alerting"])
    (am_config,) = alerting["alertmanagers"]
    am_config["static_configs"] = [{"targets": alertmanagers}]
    return {
        "global": {
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            # As written: ${PROMETHEUS_REPLICA} and the link bases, expanded from the environment.
            "external_labels": repo["global"]["external_labels"],
        },
        "rule_files": rule_files,
        "alerting": alerting,
        "scrape_configs": [job],
    }


def query_result(base: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = instant_query(base, expr)["result"]
    return result


@dataclass
class AlertingPair:
    prometheus: list[str]
    alertmanagers: list[str]
    webhook: FakeWebhook


@pytest.fixture(scope="module")
def alerting_pair(servers: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertingPair]:
    root = tmp_path_factory.mktemp("alerting")
    started = len(servers)
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(replica_metrics("payments", f"0192f0c4e2a87abc8def01234567890{i}")) for i in (1, 2)
        ]
        webhook = FakeWebhook()
        stack.enter_context(webhook.server)

        (root / "notify-token").write_text("ha-token\n")
        am_config = local_alertmanager_config(webhook.server.url + "/alerts", root / "notify-token")
        (root / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        web, gossip = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
        alertmanagers = []
        for i in range(2):
            (root / f"am-{i}").mkdir()
            server = Server(
                f"alertmanager-{i + 1}",
                [
                    require_tool("prometheus-alertmanager"),
                    f"--config.file={root / 'alertmanager.yml'}",
                    f"--storage.path={root / f'am-{i}'}",
                    f"--web.listen-address=127.0.0.1:{web[i]}",
                    f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
                    f"--cluster.peer=127.0.0.1:{gossip[1 - i]}",
                    f"--cluster.peer-timeout={PEER_TIMEOUT}",
                ],
                root / f"am-{i}.log",
            )
            servers.append(server.start())
            alertmanagers.append(f"http://127.0.0.1:{web[i]}")

        for path in glob.glob(str(REPO / "alerts/*.rules.yml")):
            text = Path(path).read_text()
            (root / Path(path).name).write_text(
                re.sub(r"^(\s+for:[ \t]*)\S+[ \t]*$", rf"\g<1>{SHORT_FOR}", text, flags=re.MULTILINE)
            )
        prometheus = []
        for i in range(2):
            port = free_port()
            config = ha_prometheus_config(
                {"payments": [r.address for r in replicas]},
                [urllib.parse.urlsplit(a).netloc for a in alertmanagers],
                sorted(str(p) for p in root.glob("*.rules.yml")),
            )
            (root / f"prometheus-{i}.yml").write_text(yaml.safe_dump(config))
            server = Server(
                f"prometheus-{i + 1}",
                [
                    require_tool("prometheus"),
                    f"--config.file={root / f'prometheus-{i}.yml'}",
                    f"--storage.tsdb.path={root / f'prom-{i}'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    # 2.42 expands ${VAR} in external labels only with this feature (3.x always does).
                    "--enable-feature=expand-external-labels",
                ],
                root / f"prometheus-{i}.log",
                env={"GRAFANA_URL": "http://grafana.ha.test:3000", "PROMETHEUS_REPLICA": f"prometheus-{i + 1}"},
            )
            servers.append(server.start())
            prometheus.append(f"http://127.0.0.1:{port}")
        for server, base in zip(servers[started:], alertmanagers + prometheus, strict=True):
            server.wait_answering(base + "/-/ready", 30, "/-/ready")
        yield AlertingPair(prometheus, alertmanagers, webhook)


def test_replicas_are_two_targets_of_one_service(alerting_pair: AlertingPair) -> None:
    def both_up(base: str) -> list[dict[str, Any]]:
        result = instant_query(base, 'up{job="demo-services"} == 1')["result"]
        return result if len(result) == 2 else []

    for base in alerting_pair.prometheus:
        up = wait_until(partial(both_up, base), 30, "both payments replicas scraped", interval=0.2)
        assert {r["metric"]["service"] for r in up} == {"payments"}, "the service label comes from the DNS name"
        assert len({r["metric"]["instance"] for r in up}) == 2, "Prometheus tells the replicas apart by instance"


def test_both_prometheus_fire_and_alertmanager_notifies_once(alerting_pair: AlertingPair) -> None:
    pair = alerting_pair
    for base in pair.prometheus:
        wait_until(
            partial(query_result, base, 'ALERTS{alertname="HighErrorRatio",alertstate="firing"}'),
            60,
            f"HighErrorRatio firing in {base}",
            interval=0.5,
        )
    first = wait_until(lambda: list(pair.webhook.bodies), 60, "a notification at the webhook", interval=0.2)
    # Each Prometheus delivered its alerts to each Alertmanager.
    for base in pair.prometheus:
        for am in pair.alertmanagers:
            wait_until(
                partial(metric_sum, base, "prometheus_notifications_sent_total", alertmanager=f"{am}/api/v2/alerts"),
                30,
                f"{base} sending to {am}",
                interval=0.2,
            )
    # Each Alertmanager has ONE alert: both Prometheus' copies share one label set (no `replica`).
    for am in pair.alertmanagers:
        alerts = http_get_json(am + "/api/v2/alerts")
        assert [a["labels"]["alertname"] for a in alerts] == ["HighErrorRatio"], alerts
        assert "replica" not in alerts[0]["labels"] and alerts[0]["labels"]["service"] == "payments"
    # Both Alertmanagers reached the point of sending (each consults the shared notification log
    # first); give the later one time to have sent, had it not seen the first one's entry.
    for am in pair.alertmanagers:
        wait_until(
            partial(metric_sum, am, "alertmanager_nflog_queries_total"),
            30,
            f"{am} to consult the notification log",
            interval=0.2,
        )
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len(pair.webhook.bodies) == 1:
        time.sleep(0.1)  # a bounded quiet period: a duplicate would arrive within it
    assert len(pair.webhook.bodies) == 1, json.dumps(pair.webhook.bodies, indent=1)[:3000]
    (alert,) = first[0]["alerts"]
    assert alert["labels"]["alertname"] == "HighErrorRatio" and "replica" not in alert["labels"]
    assert alert["labels"]["grafana_url"] == "http://grafana.ha.test:3000"
    sent = sum(metric_sum(am, "alertmanager_notifications_total", integration="webhook") for am in pair.alertmanagers)
    assert sent == 1, "one Alertmanager sent, the other found the gossiped log entry and stayed quiet"


def test_error_ratio_and_dashboards_aggregate_the_replicas(alerting_pair: AlertingPair) -> None:
    rules = [r for p in glob.glob(str(REPO / "alerts/*.rules.yml")) for g in load_yaml(p)["groups"] for r in g["rules"]]
    (ratio_rule,) = [r for r in rules if r["alert"] == "HighErrorRatio"]
    ratio_expr = ratio_rule["expr"].rsplit(">", 1)[0]
    for base in alerting_pair.prometheus:
        (ratio,) = wait_until(partial(query_result, base, ratio_expr), 30, "the error ratio", interval=0.2)
        assert float(ratio["value"][1]) == pytest.approx(ERROR_RATIO, rel=0.05), "two replicas must not double it"
        assert ratio["metric"] == {"service": "payments"}
    # Per-service panels give one series per service, never one per replica. The last failed
    # request is per replica on purpose (each replica has its own).
    per_replica = []
    for where, expr in dashboard_promql_queries():
        if "correlation_last_failed_request" in expr:
            continue
        query = substitute_grafana_vars(expr, {"service": ".+", "correlation_id": "x"})
        if any("instance" in r["metric"] for r in instant_query(alerting_pair.prometheus[0], query)["result"]):
            per_replica.append(where)
    assert not per_replica, f"dashboard queries that split a service by replica: {per_replica}"


# --- the trail with two replicas of orders --------------------------------------------------------


@pytest.mark.process
def test_trail_is_a_tree_when_two_orders_replicas_serve_one_request(
    loki: FakeLoki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = start_replica_chain(loki.url, tmp_path)
    cid = two_checkouts_with_one_id(chain)
    assert trail_main([cid, "--json"]) == 0
    assert_tree_across_orders_replicas(json.loads(capsys.readouterr().out), chain)


# --- Loki in HA monolithic mode (LOKI_BIN) ------------------------------------------------------------

needs_loki_cluster = [
    pytest.mark.real_loki,
    pytest.mark.skipif(
        not LOKI_BIN, reason="set LOKI_BIN to a Loki 3.7 binary to run loki/loki-ha.yaml as 3 processes"
    ),
    pytest.mark.skipif(NGINX is None, reason="needs nginx as Loki's load balancer: apt-get install nginx"),
]


@pytest.fixture(scope="module")
def loki_cluster(servers: list[Server], tmp_path_factory: pytest.TempPathFactory) -> LokiCluster:
    return start_loki_cluster(LOKI_BIN, NGINX or "nginx", tmp_path_factory.mktemp("loki-ha"), servers)


def loki_test(test: Any) -> Any:
    for mark in needs_loki_cluster:
        test = mark(test)
    return test


@loki_test
def test_three_replicas_form_one_ring_behind_nginx(loki_cluster: LokiCluster) -> None:
    assert loki_cluster.ring(loki_cluster.url) == {"loki-1": "ACTIVE", "loki-2": "ACTIVE", "loki-3": "ACTIVE"}
    assert requests.get(loki_cluster.url + "/ready", timeout=5).status_code == 200


@loki_test
def test_demo_chain_ships_through_nginx_and_trail_finds_the_request(
    loki_cluster: LokiCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = start_replica_chain(loki_cluster.url, tmp_path)
    cid = two_checkouts_with_one_id(chain)
    monkeypatch.setenv("LOKI_URL", loki_cluster.url)

    def found() -> dict[str, Any]:
        code = trail_main([cid, "--json"])
        document: dict[str, Any] = json.loads(capsys.readouterr().out) if code == 0 else {}
        return document if len(document.get("hops", [])) == 8 else {}

    assert_tree_across_orders_replicas(wait_until(found, 30, f"trail {cid} through nginx", interval=0.5), chain)


def log_lines_for(seconds: float, rate: float, logger: logging.Logger, run_id: str, midway: Any) -> int:
    """Log numbered lines at ``rate`` per second for ``seconds``; call ``midway`` at the middle."""
    count, started, called = 0, time.monotonic(), False
    while (elapsed := time.monotonic() - started) < seconds:
        while count < elapsed * rate:
            logger.info("ha-load %s %d", run_id, count)
            count += 1
        if not called and elapsed >= seconds / 2:
            midway()
            called = True
        time.sleep(0.005)
    return count


def load_logger(run_id: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.ha.{run_id}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def numbers_in_loki(base: str, run_id: str, since_ns: int) -> set[int]:
    """The numbers of the lines log_lines_for wrote in run ``run_id``, as Loki at ``base`` returns them."""
    query = f'{{{schema.SERVICE_LABEL}="svc"}} |= "ha-load {run_id} "'
    entries = LokiQueryClient(LokiSettings(url=base)).query_all(query, since_ns - 10**9, time.time_ns() + 10**9)
    return {int(json.loads(entry.line)[schema.MESSAGE].rsplit(" ", 1)[1]) for entry in entries}


@loki_test
def test_a_replica_killed_under_load_loses_no_acknowledged_line_and_rejoins(loki_cluster: LokiCluster) -> None:
    run_id, since_ns = new_correlation_id(), time.time_ns()
    handler = make_handler(loki_cluster.url, max_retry_seconds=60.0, timeout_seconds=5.0, flush_timeout_seconds=30.0)
    logger = load_logger(run_id, handler)
    victim = loki_cluster.replicas[1]
    try:
        written = log_lines_for(6.0, 300.0, logger, run_id, victim.kill)
    finally:
        logger.removeHandler(handler)
        handler.close()  # flushes: every line is then sent (acknowledged) or counted as dropped
    stats = handler.stats.snapshot()
    assert not stats.dropped and stats.sent_lines == written, (stats, written)
    # Every acknowledged line is in Loki, read through nginx from the two replicas left. (nginx
    # passes a push refused by the dead replica's closed port to the next one: the shipper
    # rarely even needs to retry.)
    assert numbers_in_loki(loki_cluster.url, run_id, since_ns) == set(range(written)), stats

    # The killed replica comes back with its ring tokens and WAL, and the cluster is whole again.
    victim.start()
    loki_cluster.wait_ready()
    assert numbers_in_loki(loki_cluster.http[1], run_id, since_ns) == set(range(written)), "asked the restarted one"


@loki_test
def test_without_a_write_quorum_the_shipper_retries_through_nginx_until_one_is_back(loki_cluster: LokiCluster) -> None:
    """Two replicas of three down: every stream needs 2 of its 3 copies written, so Loki refuses
    pushes with a 5xx, which nginx passes on. The shipper keeps the lines and retries until a
    replica is back; nothing is lost."""
    run_id, since_ns = new_correlation_id(), time.time_ns()
    handler = make_handler(
        loki_cluster.url, max_retry_seconds=120.0, backoff_max_seconds=1.0, flush_timeout_seconds=60.0
    )
    logger = load_logger(run_id, handler)
    down = loki_cluster.replicas[1:]
    try:

        def kill_down() -> None:
            for server in down:
                server.kill()

        written = log_lines_for(4.0, 100.0, logger, run_id, kill_down)
        wait_until(lambda: handler.stats.snapshot().retries["server_error"] >= 3, 30, "the shipper retrying 5xx")
        for server in down:
            server.start()
        loki_cluster.wait_ready()
    finally:
        logger.removeHandler(handler)
        handler.close()
    stats = handler.stats.snapshot()
    assert not stats.dropped and stats.sent_lines == written, (stats, written)
    assert numbers_in_loki(loki_cluster.url, run_id, since_ns) == set(range(written)), stats


@loki_test
def test_old_lines_of_one_replica_are_accepted_in_a_stream_another_keeps_current(loki_cluster: LokiCluster) -> None:
    """Two replicas of a service write one stream (no instance label). One pushes now; the other
    replays lines from two hours ago (its disk spool after an outage). Loki refuses lines more
    than max_chunk_age / 2 (1 h) behind a stream's newest; loki-ha.yaml's time sharding takes them."""
    labels = {schema.SERVICE_LABEL: f"ha-late-{new_correlation_id()[:12]}", schema.ENV_LABEL: "test"}
    now_ns = time.time_ns()
    old_ns = now_ns - 2 * 3600 * 10**9
    for ts_ns, line in ((now_ns, "replica 1, now"), (old_ns, "replica 2, two hours late")):
        answer = requests.post(
            loki_cluster.url + "/loki/api/v1/push",
            timeout=10,
            json={"streams": [{"stream": labels, "values": [[str(ts_ns), line]]}]},
        )
        assert answer.status_code == 204, (line, answer.status_code, answer.text)
    client = LokiQueryClient(LokiSettings(url=loki_cluster.url))
    selector = "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"

    def both_lines() -> list[str]:
        lines = [entry.line for entry in client.query_all(selector, old_ns - 10**9, now_ns + 10**9)]
        return lines if len(lines) == 2 else []

    lines = wait_until(both_lines, 20, "both lines queryable", interval=0.5)
    assert sorted(lines) == ["replica 1, now", "replica 2, two hours late"]
