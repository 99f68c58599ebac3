"""The compose file, Prometheus, Loki and Alertmanager configs: validated by the real tools where
they exist here (docker-compose 1.29, promtool 2.42, amtool 0.25) and checked against
docs/reference.md where no tool can (Loki, image contents)."""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from demo import stack_secrets
from demo.services import DEFAULT_PORTS as APP_SERVICES
from demo.stack_secrets import DEFAULT_PASSWORDS, PUBLIC_URL_VARIABLES
from fakes import free_port, serving
from tests.support import REPO
from tests.support.replicas import nginx_config_for
from tests.support.stack import TOOL_PACKAGES, load_yaml, require_tool, run
from trail.notify.server import HttpLimits

pytestmark = pytest.mark.stack

DOWNSTREAM = {
    "gateway": {"ORDERS_URL": "http://orders:8081"},
    "orders": {"PAYMENTS_URL": "http://payments:8082", "INVENTORY_URL": "http://inventory:8083"},
}
PUBLISHED = {
    "gateway": 8080,
    "grafana": 3000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "loki": 3100,
    "alert-receiver": 9095,
    "trail-web": 8090,
    "notifications": 8084,
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml("docker-compose.yml")


@pytest.mark.parametrize("tool", sorted(TOOL_PACKAGES))
def test_required_tools_are_installed(tool: str) -> None:
    require_tool(tool)  # raises naming the apt package: a skipped stack test proves nothing


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    exe = require_tool("docker-compose")
    run([exe, "-f", "docker-compose.yml", "config", "-q"], cwd=REPO)


def test_compose_has_every_service_and_no_version_key(compose: dict) -> None:
    assert "version" not in compose, "the version key is obsolete in the Compose spec"
    assert set(compose["services"]) == set(APP_SERVICES) | {
        "stack-secrets",
        "grafana-dashboards",
        "loadgen",
        "alert-receiver",
        "trail-web",
        "notifications",
        "redis",
        "loki",
        "prometheus",
        "alertmanager",
        "grafana",
    }


def test_images_are_pinned_exactly(compose: dict) -> None:
    expected = {
        "loki": r"grafana/loki:3\.7\.\d+",
        "prometheus": r"prom/prometheus:v3\.\d+\.\d+",
        "alertmanager": r"prom/alertmanager:v0\.\d+\.\d+",
        "grafana": r"grafana/grafana:1[23]\.\d+\.\d+",
        "redis": r"redis:7\.\d+\.\d+-alpine",
    }
    for name, pattern in expected.items():
        assert re.fullmatch(pattern, compose["services"][name]["image"]), compose["services"][name]["image"]
    for name in (*APP_SERVICES, "loadgen", "alert-receiver", "trail-web", "notifications", "stack-secrets"):
        svc = compose["services"][name]
        assert svc["build"] == "./app" and svc["image"] == "correlation-demo:local", name
    assert (REPO / "app").is_dir()


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_service_env_follows_the_contract(compose: dict, name: str) -> None:
    svc = compose["services"][name]
    env = svc["environment"]
    assert env["SERVICE_NAME"] == name and env["PORT"] == str(APP_SERVICES[name])
    assert env["LOKI_URL"] == "http://loki:3100" and env["DEPLOY_ENV"] == "demo"
    for key, url in DOWNSTREAM.get(name, {}).items():
        assert env[key] == url
    assert svc["command"] == ["gunicorn", "--config", "python:demo.gunicorn_conf", "demo.services:create_app()"]
    assert "/healthz" in " ".join(svc["healthcheck"]["test"]) and "PORT" in " ".join(svc["healthcheck"]["test"])


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    published = {
        name: int(str(p).split(":")[1]) for name, svc in compose["services"].items() for p in svc.get("ports", [])
    }
    assert published == PUBLISHED


def test_dependencies_wait_for_health(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long form with conditions"
        for dep, cond in deps.items():
            if dep in ("stack-secrets", "grafana-dashboards"):  # one-shots: done is ready
                assert cond == {"condition": "service_completed_successfully"}, name
                continue
            assert cond == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"


def test_healthchecks_use_tools_the_images_have(compose: dict) -> None:
    services = compose["services"]
    # Loki 3.7 is distroless: only its own binary can check it.
    assert services["loki"]["healthcheck"]["test"] == ["CMD", "/usr/bin/loki", "-health"]
    # prom/* are busybox-based (wget).
    for name, path in (("prometheus", "/-/ready"), ("alertmanager", "/-/ready")):
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "wget"] and test[-1].endswith(path), test
    # Grafana's image is Alpine (wget) or, in its -ubuntu variant, has curl: either will do.
    shell, command = services["grafana"]["healthcheck"]["test"]
    assert shell == "CMD-SHELL" and "wget" in command and "curl -f" in command and "/api/health" in command
    # The Python image has neither curl nor wget.
    for name in (*APP_SERVICES, "alert-receiver", "trail-web"):
        assert services[name]["healthcheck"]["test"][:3] == ["CMD", "python", "-c"], name


def test_mounted_files_exist(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_grafana_settings(compose: dict) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-admin}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SERVER_ROOT_URL"] == "${GRAFANA_URL:-http://localhost:3000}"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    # Grafana reads the dashboards grafana-dashboards wrote (grafana/dashboards, with TRAIL_WEB_URL).
    step = compose["services"]["grafana-dashboards"]
    source, target = step["command"][3:]
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in step["volumes"])}
    written = {dst: src for src, dst, *_ in (v.split("#")[0].strip().split(":") for v in grafana["volumes"])}
    container_dir, name = home.rsplit("/", 1)
    assert written[container_dir] == mounts[target], "Grafana must read what the one-shot wrote"
    assert (REPO / mounts[source] / name).is_file(), "the home dashboard must be in grafana/dashboards"
    provider = load_yaml("grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    assert provider["options"]["path"] == container_dir


def test_prometheus_gets_grafana_url_and_keeps_exemplars(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prom["command"]
    assert prom["command"][-1].startswith("--web.external-url="), "flags as the HA twin compares them"
    assert prom["environment"]["GRAFANA_URL"] == "${GRAFANA_URL:-http://localhost:3000}"
    assert "./alerts:/etc/prometheus/alerts:ro" in prom["volumes"]


def test_loadgen_and_receiver_run_the_demo_modules(compose: dict) -> None:
    loadgen = compose["services"]["loadgen"]
    assert loadgen["command"] == ["python", "-m", "demo.loadgen"]
    assert loadgen["environment"]["LOADGEN_GATEWAY_URL"] == "http://gateway:8080"
    assert loadgen["environment"]["LOADGEN_FAULT_URL"] == "http://payments:8082"


# --- prometheus/prometheus.yml -----------------------------------------------------------------


def repo_prometheus_config() -> dict:
    """prometheus.yml with container paths mapped to the repo, as compose mounts them."""
    config = load_yaml("prometheus/prometheus.yml")
    config["rule_files"] = [f.replace("/etc/prometheus/alerts", str(REPO / "alerts")) for f in config["rule_files"]]
    return config


def test_promtool_accepts_prometheus_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = repo_prometheus_config()
    # promtool 2.42 predates scrape_protocols (Prometheus 2.49); the image runs v3, which has it.
    assert config["global"].pop("scrape_protocols")[0] == "OpenMetricsText1.0.0"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    out = run([promtool, "check", "config", str(path)]).stdout
    assert "1 rule files found" in out and "SUCCESS" in out


def test_prometheus_scrapes_every_service_with_its_label() -> None:
    config = load_yaml("prometheus/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "demo-services"]
    assert job["honor_labels"] is True, "the app's own `service` label must not become exported_service"
    targets = {t: g["labels"]["service"] for g in job["static_configs"] for t in g["targets"]}
    assert targets == {f"{name}:{port}": name for name, port in APP_SERVICES.items()}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert config["global"]["external_labels"] == {
        "grafana_url": "${GRAFANA_URL}",
        "runbook_base_url": "${RUNBOOK_BASE_URL}",
        "trail_web_url": "${TRAIL_WEB_URL}",
    }


def test_rule_glob_matches_the_rule_files_only() -> None:
    (pattern,) = repo_prometheus_config()["rule_files"]
    matched = sorted(Path(p).name for p in glob.glob(pattern))
    assert matched == ["correlation-demo.rules.yml"], "alertmanager.yml and tests/ must not be loaded as rules"


# --- loki/loki.yaml ----------------------------------------------------------------------------


def test_loki_config_supports_structured_metadata_and_retention() -> None:
    loki = load_yaml("loki/loki.yaml")
    assert loki["server"]["http_listen_port"] == 3100, "`loki -health` probes :3100"
    (schema,) = loki["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    limits = loki["limits_config"]
    assert limits["allow_structured_metadata"] is True
    assert limits["ingestion_rate_mb"] > 4 and limits["ingestion_burst_size_mb"] > 6, "defaults are 4 and 6"
    assert limits["retention_period"] == "72h"
    # Replicas of a service share a stream: a spool replayed after an hour away must be accepted.
    assert limits["shard_streams"] == load_yaml("loki/loki-ha.yaml")["limits_config"]["shard_streams"]
    assert limits["shard_streams"]["time_sharding_enabled"] is True
    compactor = loki["compactor"]
    assert compactor["retention_enabled"] is True and compactor["delete_request_store"] == "filesystem"
    assert loki["auth_enabled"] is False


# --- alerts/alertmanager.yml -------------------------------------------------------------------


def test_amtool_accepts_alertmanager_config() -> None:
    amtool = require_tool("amtool")
    run([amtool, "check-config", str(REPO / "alerts/alertmanager.yml")])


def test_alertmanager_routes_everything_to_the_webhook() -> None:
    am = load_yaml("alerts/alertmanager.yml")
    route = am["route"]
    assert route["receiver"] == "demo-webhook" and "routes" not in route
    assert route["group_by"] == ["alertname", "service"]
    (receiver,) = am["receivers"]
    assert receiver["webhook_configs"][0]["send_resolved"] is True


# --- the stack's defaults are safe (docs/security.md) -------------------------------------------


def merged_compose(env: dict[str, str] | None = None, ha: bool = False) -> dict[str, Any]:
    """The compose file(s) as docker-compose resolves them, ``env`` given as the shell's."""
    files = ["-f", "docker-compose.yml", *(["-f", "docker-compose.ha.yml"] if ha else [])]
    shell = {k: v for k, v in os.environ.items() if k not in PUBLIC_URL_VARIABLES and k not in DEFAULT_PASSWORDS}
    out = run([require_tool("docker-compose"), *files, "config"], cwd=REPO, env={**shell, **(env or {})}).stdout
    services: dict[str, Any] = yaml.safe_load(out)["services"]
    return services


def mount_of(service: dict[str, Any], volume: str) -> str:
    """Where ``service`` mounts the named ``volume`` (read-only for everyone but stack-secrets)."""
    (target,) = [
        m["target"] if isinstance(m, dict) else m.split(":")[1]
        for m in service.get("volumes", [])
        if (m.get("source") if isinstance(m, dict) else m.split(":")[0]) == volume
    ]
    return str(target)


@pytest.mark.parametrize("ha", [False, True], ids=["single", "ha"])
def test_no_prometheus_can_be_stopped_over_http(ha: bool) -> None:
    """--web.enable-lifecycle would let anyone reaching :9090 POST /-/quit."""
    services = merged_compose(ha=ha)
    proms = [svc for name, svc in services.items() if svc.get("image", "").startswith("prom/prometheus:")]
    assert len(proms) == (2 if ha else 1)
    for prom in proms:
        assert not [flag for flag in prom["command"] if "lifecycle" in flag], prom["command"]


@pytest.mark.parametrize("ha", [False, True], ids=["single", "ha"])
def test_only_alertmanager_holds_the_notifiers_token(ha: bool) -> None:
    """The token stack-secrets writes is the file the notifier reads and every Alertmanager sends;
    no other service mounts it. Bodies stay under the notifier's cap on alerts."""
    services = merged_compose(ha=ha)
    secrets_dir = mount_of(services["stack-secrets"], "notify-secret")
    assert services["stack-secrets"]["command"][-4:-2] == ["--notify-dir", secrets_dir]
    receiver = services["alert-receiver"]
    token_file = receiver["environment"]["NOTIFY_AUTH_TOKEN_FILE"]
    assert token_file == mount_of(receiver, "notify-secret") + "/token"
    assert receiver["depends_on"]["stack-secrets"] == {"condition": "service_completed_successfully"}
    (webhook,) = [w for r in load_yaml("alerts/alertmanager.yml")["receivers"] for w in r["webhook_configs"]]
    credentials = webhook["http_config"]["authorization"]["credentials_file"]
    holders = sorted(name for name, svc in services.items() if "notify-secret" in str(svc.get("volumes", [])))
    assert holders == sorted(["stack-secrets", "alert-receiver", "alertmanager", *(["alertmanager-2"] if ha else [])])
    for name in holders:
        if name.startswith("alertmanager"):
            assert credentials == mount_of(services[name], "notify-secret") + "/token", name
    assert webhook["max_alerts"] == HttpLimits().max_alerts
    assert "NOTIFY_AUTH" not in receiver["environment"], "never opened by configuration"


@pytest.mark.parametrize("ha", [False, True], ids=["single", "ha"])
def test_the_fault_switch_wants_the_token_the_load_generator_sends(ha: bool) -> None:
    services = merged_compose(ha=ha)
    switches = [name for name, svc in services.items() if "SERVICE_NAME" in svc.get("environment", {})]
    assert {"gateway", "orders", "payments", "inventory", "notifications"} <= set(switches)
    fault_dir = mount_of(services["stack-secrets"], "fault-secret")
    assert services["stack-secrets"]["command"][-2:] == ["--fault-dir", fault_dir]
    for name in switches:
        assert services[name]["environment"]["FAULT_TOKEN_FILE"] == mount_of(services[name], "fault-secret") + "/token"
    loadgen = services["loadgen"]
    assert loadgen["environment"]["LOADGEN_FAULT_TOKEN_FILE"] == mount_of(loadgen, "fault-secret") + "/token"
    holders = {name for name, svc in services.items() if "fault-secret" in str(svc.get("volumes", []))}
    assert holders == {*switches, "loadgen", "stack-secrets"}


@pytest.mark.parametrize(
    ("env", "ha", "refused"),
    [
        ({}, False, []),
        ({}, True, []),
        ({"GRAFANA_URL": "https://grafana.example.com"}, False, ["GRAFANA_ADMIN_PASSWORD"]),
        ({"TRAIL_WEB_URL": "http://10.1.2.3:8090"}, True, ["GRAFANA_ADMIN_PASSWORD", "MINIO_ROOT_PASSWORD"]),
        ({"GRAFANA_URL": "https://g.test", "GRAFANA_ADMIN_PASSWORD": "admin"}, False, ["GRAFANA_ADMIN_PASSWORD"]),
        ({"GRAFANA_URL": "https://g.example.com", "GRAFANA_ADMIN_PASSWORD": "long-and-random"}, False, []),
        ({"PROMETHEUS_2_URL": "http://prom.test:9190", "GRAFANA_ADMIN_PASSWORD": "x"}, True, ["MINIO_ROOT_PASSWORD"]),
        ({"GRAFANA_URL": "http://127.0.0.1:3000"}, True, []),
    ],
)
def test_default_passwords_stop_the_stack_when_it_is_reached_from_elsewhere(
    env: dict[str, str], ha: bool, refused: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stack-secrets run with the environment compose gives it; Grafana (and MinIO) wait for it."""
    services = merged_compose(env, ha)
    for guarded in ("grafana", *(["minio"] if ha else [])):
        assert services[guarded]["depends_on"]["stack-secrets"] == {"condition": "service_completed_successfully"}
    given = services["stack-secrets"]["environment"]
    status = stack_secrets.main(["--notify-dir", str(tmp_path / "n"), "--fault-dir", str(tmp_path / "f")], env=given)
    err = capsys.readouterr().err
    assert status == (2 if refused else 0), err
    assert sorted(set(re.findall(r"set (\w+) \(docs", err))) == refused
    assert (tmp_path / "n/token").exists() == (not refused), "nothing is written when refused"


def test_tokens_are_generated_once_kept_and_taken_from_the_environment(tmp_path: Path) -> None:
    args = ["--notify-dir", str(tmp_path / "n"), "--fault-dir", str(tmp_path / "f")]
    assert stack_secrets.main(args, env={}) == 0
    first = {name: (tmp_path / name / "token").read_text() for name in ("n", "f")}
    assert first["n"] != first["f"] and all(len(token.strip()) >= 43 for token in first.values())
    assert stack_secrets.main(args, env={}) == 0
    assert {name: (tmp_path / name / "token").read_text() for name in ("n", "f")} == first, "kept across runs"
    assert stack_secrets.main(args, env={"NOTIFY_AUTH_TOKEN": "mine"}) == 0
    assert (tmp_path / "n/token").read_text() == "mine\n" and (tmp_path / "f/token").read_text() == first["f"]
    assert oct((tmp_path / "n/token").stat().st_mode & 0o777) == "0o644", "Alertmanager runs as another user"
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["token"], "no partial file left behind"


def test_loki_offers_no_log_deletion_api() -> None:
    """Retention does not need it, and Loki here has no auth: anyone could erase the trails."""
    for path in ("loki/loki.yaml", "loki/loki-ha.yaml"):
        config = load_yaml(path)
        assert config["limits_config"]["deletion_mode"] == "disabled", path
        assert config["compactor"]["retention_enabled"] is True, "retention still runs"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx: apt-get install nginx-light")
def test_nginx_in_front_of_loki_refuses_the_deletion_api(tmp_path: Path) -> None:
    """loki/nginx-ha.conf as Debian's nginx runs it (replicas at closed ports: nothing is proxied)."""
    listen = free_port()
    (tmp_path / "nginx.conf").write_text(nginx_config_for([free_port() for _ in range(3)], listen))
    cmd = [shutil.which("nginx") or "nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)]
    cmd += ["-e", str(tmp_path / "error.log"), "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"]
    with serving(cmd, f"http://127.0.0.1:{listen}", "/nginx-health", log=tmp_path / "nginx.log") as base:
        for method in ("POST", "PUT", "GET", "DELETE"):
            answer = requests.request(method, base + "/loki/api/v1/delete?query={a=%22b%22}&start=1", timeout=5)
            assert answer.status_code == 403 and "deletion API is off" in answer.text, method
        assert requests.get(base + "/loki/api/v1/labels", timeout=5).status_code == 502, "the rest is proxied"
