"""Helpers for the stack tests: tool lookup, Grafana Explore URLs, a small LogQL checker and a
throwaway real Prometheus.

Nothing here reaches beyond 127.0.0.1, and every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent

#: Tools the stack tests run, with the Debian package that provides each (make test installs them).
TOOL_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
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


def run(cmd: list[str], cwd: Path | None = None, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
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


# --- Grafana Explore URLs ---------------------------------------------------------------------

def explore_url(base: str, pane: str, expr: str, start: str, end: str, datasource: str = "loki") -> str:
    """The Explore deep link the rules and provisioning build (FACTS.md: panes JSON, range as
    strings). Written independently of the Go templates so tests can compare the two."""
    panes = {
        pane: {
            "datasource": datasource,
            "queries": [
                {
                    "refId": "A",
                    "datasource": {"type": "loki", "uid": datasource},
                    "editorMode": "code",
                    "queryType": "range",
                    "expr": expr,
                }
            ],
            "range": {"from": start, "to": end},
        }
    }
    encoded = urllib.parse.quote(json.dumps(panes, separators=(",", ":")), safe="")
    return f"{base}/explore?schemaVersion=1&orgId=1&panes={encoded}"


def parse_explore_url(url: str, datasource_uids: set[str]) -> dict[str, Any]:
    """Decode an Explore link and check its shape; returns the panes object."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path.endswith("/explore"), url
    query = urllib.parse.parse_qs(parsed.query, strict_parsing=True)
    assert query.get("schemaVersion") == ["1"], url
    assert "left" not in query, f"old left= form loses data: {url}"
    (panes_text,) = query["panes"]
    panes = json.loads(panes_text)
    assert isinstance(panes, dict) and panes, url
    for pane in panes.values():
        assert pane["datasource"] in datasource_uids, f"unknown datasource {pane['datasource']!r}"
        assert pane["queries"], url
        for q in pane["queries"]:
            assert q["refId"] and q["expr"], q
            assert q["datasource"]["uid"] in datasource_uids, q
        rng = pane["range"]
        assert isinstance(rng["from"], str) and isinstance(rng["to"], str), f"range must be strings: {rng}"
    return panes


def explore_exprs(panes: dict[str, Any]) -> list[str]:
    return [q["expr"] for pane in panes.values() for q in pane["queries"]]


# --- LogQL: a deliberately small checker ------------------------------------------------------
# It knows log queries only (selector + pipeline), which is all this repo writes. It checks what
# a typo usually breaks: balanced braces/quotes, matcher syntax, known stage names, and Loki's
# rule that a selector needs one matcher that cannot match the empty string.

_STRING = r'"(?:[^"\\]|\\.)*"|`[^`]*`'
_MATCHER = re.compile(rf'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*')
_LINE_FILTER = re.compile(rf'\s*(\|=|!=|\|~|!~)\s*({_STRING})\s*')
_LABEL_FILTER = re.compile(rf'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|==|=|>=|<=|>|<)\s*({_STRING}|[0-9.]+[a-z]*)\s*')
_IDENT_LIST = re.compile(r'\s*[A-Za-z_][A-Za-z0-9_]*(\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*\s*')
_PARSERS = {"json", "logfmt", "decolorize"}


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quotes."""
    parts, buf, quote = [], [], ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"`":
            quote = ch
            buf.append(ch)
        elif text.startswith(sep, i):
            parts.append("".join(buf))
            buf = []
            i += len(sep) - 1
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise ValueError(f"unterminated string in {text!r}")
    parts.append("".join(buf))
    return parts


def check_logql(expr: str) -> None:
    """Raise ValueError when `expr` is not a log query this checker understands."""
    text = expr.strip()
    if not text.startswith("{"):
        raise ValueError(f"log query must start with a stream selector: {expr!r}")
    close = _find_selector_end(text)
    selector, pipeline = text[1:close], text[close + 1 :]
    matchers = _split_top(selector, ",")
    if not matchers or not all(m.strip() for m in matchers):
        raise ValueError(f"empty matcher in {expr!r}")
    non_empty = False
    for m in matchers:
        found = _MATCHER.fullmatch(m)
        if not found:
            raise ValueError(f"bad matcher {m!r} in {expr!r}")
        op, value = found.group(2), found.group(3)[1:-1]
        if (op == "=" and value) or (op == "=~" and not re.fullmatch(value, "")):
            non_empty = True
    if not non_empty:
        raise ValueError(f"Loki needs a matcher that cannot match empty: {expr!r}")
    _check_pipeline(pipeline, expr)


def _find_selector_end(text: str) -> int:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == "\\" and quote == '"':
                continue
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"`":
            quote = ch
        elif ch == "}":
            return i
    raise ValueError(f"unbalanced braces or quotes: {text!r}")


def _check_pipeline(pipeline: str, expr: str) -> None:
    rest = pipeline
    while rest.strip():
        line_filter = _LINE_FILTER.match(rest)
        if line_filter:
            rest = rest[line_filter.end() :]
            continue
        if not rest.lstrip().startswith("|"):
            raise ValueError(f"expected a stage at {rest!r} in {expr!r}")
        rest = rest.lstrip()[1:]
        # A stage runs to the next top-level pipe (a `!=` line filter after a stage is not
        # supported: this repo never writes one).
        stage, rest = _next_stage(rest)
        _check_stage(stage.strip(), expr)


def _next_stage(text: str) -> tuple[str, str]:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "\"`":
            quote = ch
        elif ch == "|":
            return text[:i], text[i:]
    if quote:
        raise ValueError(f"unterminated string in {text!r}")
    return text, ""


def _check_stage(stage: str, expr: str) -> None:
    word = stage.split(None, 1)[0] if stage else ""
    args = stage[len(word) :].strip()
    if word in _PARSERS:
        if args and word != "decolorize":
            for param in _split_top(args, ","):
                if not re.fullmatch(rf'\s*[A-Za-z_][A-Za-z0-9_]*(\s*=\s*({_STRING}))?\s*', param):
                    raise ValueError(f"bad {word} parameter {param!r} in {expr!r}")
        return
    if word in ("keep", "drop"):
        if not _IDENT_LIST.fullmatch(args):
            raise ValueError(f"bad {word} list {args!r} in {expr!r}")
        return
    if word == "line_format":
        if not re.fullmatch(_STRING, args):
            raise ValueError(f"line_format needs one string: {expr!r}")
        return
    for condition in re.split(r"\s+(?:and|or)\s+|\s*,\s*", stage):
        if not _LABEL_FILTER.fullmatch(condition):
            raise ValueError(f"unknown stage {stage!r} in {expr!r}")


# --- Grafana variables in PromQL ---------------------------------------------------------------

_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$__auto": "1m",
}


def substitute_grafana_vars(expr: str, values: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables so Prometheus can run the expression."""
    out = expr
    for name, value in sorted(_GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        out = out.replace("${" + name[1:] + "}", value).replace(name, value)
    for name, value in (values or {}).items():
        out = out.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in out:
        raise AssertionError(f"unsubstituted Grafana variable in {out!r}")
    return out


# --- A real Prometheus on loopback ------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_until(predicate, deadline_seconds: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + deadline_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_seconds}s waiting for {what} (last error: {last_error})")


@contextmanager
def _serve(name: str, cmd: list[str], root: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server binary whose last ``--web.listen-address`` is in ``cmd``; wait for /-/ready."""
    log_path = root / f"{name}.log"
    address = [a for a in cmd if a.startswith("--web.listen-address=")][-1].split("=", 1)[1]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **(env or {})})
    base = f"http://{address}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{log_path.read_text()}")
            with urllib.request.urlopen(base + "/-/ready", timeout=2) as resp:
                return resp.status == 200

        wait_until(ready, 30, f"{name} /-/ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def prometheus_server(config: dict[str, Any], extra_files: dict[str, str] | None = None,
                      env: dict[str, str] | None = None, features: tuple[str, ...] = ()) -> Iterator[str]:
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


def provisioned_datasource_uids() -> set[str]:
    config = load_yaml("grafana/provisioning/datasources/datasources.yml")
    return {ds["uid"] for ds in config["datasources"]}


# --- A real Alertmanager on loopback ----------------------------------------------------------

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


# --- PromQL in the dashboards -----------------------------------------------------------------

def dashboard_promql_queries() -> Iterator[tuple[str, str]]:
    """(where, expr) for every Prometheus target and query variable in grafana/dashboards/*.json.
    Expressions still hold Grafana variables: run them through substitute_grafana_vars."""
    paths = sorted((REPO / "grafana/dashboards").glob("*.json"))
    assert paths, "grafana/dashboards/*.json is empty"
    for path in paths:
        dashboard = json.loads(path.read_text())
        uid = dashboard.get("uid", path.stem)
        for panel in dashboard["panels"]:
            for p in [panel, *panel.get("panels", [])]:  # collapsed rows hold their panels
                for target in p.get("targets", []):
                    if (target.get("datasource") or p.get("datasource") or {}).get("type") == "prometheus":
                        yield f"{uid}/{p['title']}/{target['refId']}", target["expr"]
        for var in dashboard.get("templating", {}).get("list", []):
            if var["type"] == "query":
                # label_values(metric, label) is Grafana's; the series it reads is PromQL.
                metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"]).groups()
                yield f"{uid}/${var['name']}", f"count by ({label}) ({metric})"
