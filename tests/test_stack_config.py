"""The compose file, Prometheus, Loki and Alertmanager configs: validated by the real tools where
they exist here (docker-compose 1.29, promtool 2.42, amtool 0.25) and checked against
README.md, Reference where no tool can (Loki, image contents)."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest
import yaml

from demo.services import DEFAULT_PORTS as APP_SERVICES
from tests.support.stack import REPO, TOOL_PACKAGES, load_yaml, require_tool, run

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
    for name in (*APP_SERVICES, "loadgen", "alert-receiver", "trail-web", "notifications"):
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
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in grafana["volumes"]) if src.startswith("./")}
    container_dir, name = home.rsplit("/", 1)
    assert (REPO / mounts[container_dir] / name).is_file(), "home dashboard path must be a mounted file"
    provider = load_yaml("grafana/provisioning/dashboards/dashboards.yml")["providers"][0]
    assert provider["options"]["path"] == container_dir


def test_prometheus_gets_grafana_url_and_keeps_exemplars(compose: dict) -> None:
    prom = compose["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prom["command"]
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
