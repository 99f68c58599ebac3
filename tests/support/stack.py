"""The real Prometheus and Alertmanager (Debian's packages) on loopback, and the tools the stack
tests run. Nothing here reaches beyond 127.0.0.1, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fakes import free_port, serving
from tests.support import REPO

#: Tools the stack tests run, with the Debian package that provides each (make test installs them).
TOOL_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
    "chromium": "chromium",
}


def require_tool(name: str) -> str:
    """The path of a required command, or a loud error naming the apt package. Never a skip:
    a stack test that silently does not run is worse than one that fails."""
    path = shutil.which(name)
    if path is None:
        package = TOOL_PACKAGES.get(name, name)
        raise RuntimeError(
            f"`{name}` is not installed; the stack tests need it. Install it with "
            f"`apt-get install -y {package}` (make test does this)."
        )
    return path


def run(
    cmd: list[str], cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, failing with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def load_yaml(relpath: str) -> Any:
    return yaml.safe_load((REPO / relpath).read_text())


def load_json(relpath: str) -> Any:
    return json.loads((REPO / relpath).read_text())


# --- A real Prometheus on loopback ------------------------------------------------------------


def http_get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@contextmanager
def _serve(name: str, cmd: list[str], root: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server binary whose last ``--web.listen-address`` is in ``cmd``; wait for /-/ready."""
    address = [a for a in cmd if a.startswith("--web.listen-address=")][-1].split("=", 1)[1]
    with serving(cmd, f"http://{address}", "/-/ready", env=env, log=root / f"{name}.log", cwd=root) as base:
        yield base


@contextmanager
def prometheus_server(
    config: dict[str, Any],
    extra_files: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    features: tuple[str, ...] = (),
) -> Iterator[str]:
    """Start the real `prometheus` on 127.0.0.1 with `config`, yield its base URL, stop it."""
    binary = require_tool("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="prom-test-") as tmp:
        root = Path(tmp)
        for name, text in (extra_files or {}).items():
            (root / name).write_text(text)
        config_path = root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=" + ",".join(("exemplar-storage",) + features),
        ]
        with _serve("prometheus", cmd, root, env) as base:
            yield base


def instant_query(base: str, expr: str) -> dict[str, Any]:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = http_get_json(url)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]


# --- A real Alertmanager on loopback ----------------------------------------------------------


def local_alertmanager_config(webhook_url: str, token_file: Path) -> dict[str, Any]:
    """alerts/alertmanager.yml with only its one webhook's address and the path of the notifier's
    token (``credentials_file``, a volume in compose) changed."""
    config = load_yaml("alerts/alertmanager.yml")
    (webhook,) = [w for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urllib.parse.urlsplit(webhook["url"]).path == "/alerts", "the notifier listens on /alerts"
    webhook["url"] = webhook_url
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer" and authorization["credentials_file"].startswith("/etc/alertmanager/")
    authorization["credentials_file"] = str(token_file)
    return dict(config)


@contextmanager
def alertmanager_server(config: dict[str, Any]) -> Iterator[str]:
    """Start the real Alertmanager (Debian's `prometheus-alertmanager`) on 127.0.0.1 with
    `config`, clustering off and storage in a temp dir; yield its base URL, stop it."""
    binary = require_tool("prometheus-alertmanager")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="am-test-") as tmp:
        root = Path(tmp)
        config_path = root / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip: a single local instance
        ]
        with _serve("alertmanager", cmd, root) as base:
            yield base
