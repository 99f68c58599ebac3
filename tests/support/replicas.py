"""Several processes of one component on loopback, for tests/stack/test_ha.py (docker-compose.ha.yml).

- :class:`Server`: a server process that can be SIGKILLed and started again, its output in a log.
- :func:`start_replica_chain`: the demo chain with two replicas of orders and of the gateway.
- :func:`start_loki_cluster`: loki/loki-ha.yaml as three real Loki processes behind Debian's nginx
  running loki/nginx-ha.conf; only addresses change, and a shared directory stands in for S3.

Everything listens on 127.0.0.1; every wait is a poll with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import requests

from correlation import schema
from correlation.ids import new_correlation_id
from demo.run_local import start_service, wait_healthy
from fakes import free_port, wait_until
from tests.support import REPO

#: How long a Loki replica may take to start and join the ring (WAL replay included).
LOKI_READY_SECONDS = 120.0


@dataclass
class Server:
    """A server process: started, SIGKILLed and started again at will; its output in ``log_path``."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        return self

    def assert_running(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            raise AssertionError(f"{self.name} exited ({code}); its log ends:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to the cluster."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_answering(self, url: str, timeout: float, what: str) -> None:
        """Poll ``url`` until it answers 200; fail at once if this process died."""

        def answering() -> bool:
            self.assert_running()
            return requests.get(url, timeout=2).status_code == 200

        wait_until(
            answering, timeout, f"{self.name}: {what}", interval=0.2, not_yet=(requests.RequestException, OSError)
        )


def metric_sum(base: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on ``base``/metrics, over those carrying ``labels``."""
    total = 0.0
    for line in requests.get(base + "/metrics", timeout=5).text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


# --- the demo chain with replicas -----------------------------------------------------------------


@dataclass
class ReplicaChain:
    """payments, inventory, and two replicas each of orders and the gateway. gateway-N calls
    orders-N: two requests sent to two replicas, as a load balancer or DNS round robin would."""

    processes: dict[str, subprocess.Popen[bytes]]
    urls: dict[str, str]
    logs: dict[str, Path]  # each process's stdout: the JSON lines it wrote

    def stop(self) -> dict[str, int]:
        """SIGTERM everything (each service flushes its lines to Loki); the exit codes."""
        for proc in self.processes.values():
            proc.send_signal(signal.SIGTERM)
        return {name: proc.wait(timeout=40) for name, proc in self.processes.items()}


def start_replica_chain(loki_url: str, log_dir: Path) -> ReplicaChain:
    env = {"LOKI_URL": loki_url, "LOKI_BATCH_MAX_WAIT_SECONDS": "0.2", "DEPLOY_ENV": "test"}
    names = ("payments", "inventory", "orders-1", "orders-2", "gateway-1", "gateway-2")
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    chain = ReplicaChain({}, urls, {})
    files: list[IO[bytes]] = []
    try:
        for name, url in urls.items():
            service, _, replica = name.partition("-")
            downstream = {"PAYMENTS_URL": urls["payments"], "INVENTORY_URL": urls["inventory"]}
            if service == "gateway":
                downstream = {"ORDERS_URL": urls[f"orders-{replica}"]}
            chain.logs[name] = log_dir / f"{name}.log"
            files.append(chain.logs[name].open("wb"))
            port = int(url.rsplit(":", 1)[1])
            chain.processes[name] = start_service(service, port, {**env, **downstream}, stdout=files[-1])
        for name, url in urls.items():
            wait_healthy(url, chain.processes[name], 30)
    except BaseException:
        for proc in chain.processes.values():
            proc.kill()
        raise
    finally:
        for file in files:
            file.close()
    return chain


def two_checkouts_with_one_id(chain: ReplicaChain) -> str:
    """One correlation ID through gateway-1 -> orders-1 and gateway-2 -> orders-2 (a client retrying
    with its own ID), then every service stops, which flushes its lines. Returns the ID."""
    cid = new_correlation_id()
    try:
        for gateway in ("gateway-1", "gateway-2"):
            answer = requests.post(
                chain.urls[gateway] + "/checkout", json={}, headers={schema.CORRELATION_HEADER: cid}, timeout=10
            )
            assert answer.status_code == 201 and answer.headers[schema.CORRELATION_HEADER] == cid, answer.text
    finally:
        codes = chain.stop()
    assert all(code == 0 for code in codes.values()), f"services did not stop cleanly: {codes}"
    return cid


def assert_tree_across_orders_replicas(document: dict[str, Any], chain: ReplicaChain) -> None:
    """``trail --json`` of two_checkouts_with_one_id: two gateway roots, each with its own orders
    hop (one per replica) and that hop's payments and inventory, nothing orphaned or open."""
    hops = {hop["request_id"]: hop for hop in document["hops"]}
    assert document["complete"], document["problems"]
    assert not any(hop["orphan"] or hop["open"] for hop in hops.values())
    roots = [hops[rid] for rid in document["roots"]]
    assert [hop["service"] for hop in roots] == ["gateway", "gateway"]
    orders = [hops[child] for root in roots for child in root["children"]]
    assert [hop["service"] for hop in orders] == ["orders", "orders"] and len(hops) == 8
    for hop in orders:
        assert sorted(hops[child]["service"] for child in hop["children"]) == ["inventory", "payments"]
        assert all(hops[child]["parent_request_id"] == hop["request_id"] for child in hop["children"])
    # Two replicas served the two orders hops: each hop's ID is in one replica's own output only.
    served = {name: chain.logs[name].read_text() for name in ("orders-1", "orders-2")}
    assert sorted(name for hop in orders for name, text in served.items() if hop["request_id"] in text) == [
        "orders-1",
        "orders-2",
    ]


# --- Loki in HA monolithic mode ---------------------------------------------------------------------


@dataclass
class LokiCluster:
    replicas: list[Server]
    http: list[str]  # each replica's own base URL
    url: str  # nginx, in front of them
    nginx: Server

    def ring(self, base: str) -> dict[str, str]:
        """The ingester ring as ``base`` sees it: id -> state (UNHEALTHY: heartbeat too old)."""
        body = requests.get(base + "/ring", headers={"Accept": "application/json"}, timeout=5).json()
        return {shard["id"]: shard["state"] for shard in body["shards"]}

    def ring_is(self, base: str, expected: dict[str, str]) -> bool:
        return self.ring(base) == expected

    def wait_ready(self, timeout: float = LOKI_READY_SECONDS) -> None:
        """Every replica answers /ready and sees three ACTIVE ingesters."""
        for server, base in zip(self.replicas, self.http, strict=True):
            server.wait_answering(base + "/ready", timeout, "/ready")
        expected = {server.name: "ACTIVE" for server in self.replicas}
        for base in self.http:
            wait_until(
                partial(self.ring_is, base, expected), timeout, f"{expected} in the ring of {base}", interval=0.5
            )


def nginx_config_for(http_ports: list[int], listen: int) -> str:
    """loki/nginx-ha.conf with only the addresses changed: the replicas' names to loopback ports."""
    text = (REPO / "loki/nginx-ha.conf").read_text()
    for i, port in enumerate(http_ports, start=1):
        assert f"loki-{i}:3100" in text
        text = text.replace(f"loki-{i}:3100", f"127.0.0.1:{port}")
    assert text.count("listen 3100;") == 1 and not re.search(r"loki-\d+:\d+", text), "an address left unchanged"
    return text.replace("listen 3100;", f"listen 127.0.0.1:{listen};")


def start_loki_cluster(loki_bin: str, nginx_bin: str, root: Path, started: list[Server]) -> LokiCluster:
    """Three Loki replicas from loki/loki-ha.yaml and nginx in front; each Server goes into
    ``started`` as soon as it runs (the caller stops them)."""
    store = root / "shared-store"  # stands in for the S3 bucket: every replica reads and writes it
    ports = [{"http": free_port(), "grpc": free_port(), "gossip": free_port()} for _ in range(3)]
    replicas = []
    for i, own in enumerate(ports, start=1):
        env = {
            "LOKI_INSTANCE_ID": f"loki-{i}",
            "LOKI_COMPACTOR_MODE": "main" if i == 1 else "worker",
            "LOKI_COMPACTOR_GRPC_ADDRESS": f"127.0.0.1:{ports[0]['grpc']}",
            "LOKI_MEMBERLIST_JOIN": ",".join(f"127.0.0.1:{p['gossip']}" for p in ports),
            "LOKI_INSTANCE_ADDR": "127.0.0.1",
            "LOKI_BIND_ADDR": "127.0.0.1",
            "LOKI_HTTP_PORT": str(own["http"]),
            "LOKI_GRPC_PORT": str(own["grpc"]),
            "LOKI_MEMBERLIST_PORT": str(own["gossip"]),
            "LOKI_DATA_DIR": str(root / f"loki-{i}"),
            "LOKI_OBJECT_STORE": "filesystem",
            "LOKI_FILESYSTEM_DIR": str(store),
        }
        cmd = [loki_bin, f"-config.file={REPO / 'loki/loki-ha.yaml'}", "-config.expand-env=true", "-target=all"]
        replicas.append(Server(f"loki-{i}", cmd, root / f"loki-{i}.log", env).start())
        started.append(replicas[-1])
    listen = free_port()
    (root / "nginx.conf").write_text(nginx_config_for([p["http"] for p in ports], listen))
    nginx_cmd = [nginx_bin, "-c", str(root / "nginx.conf"), "-p", str(root), "-e", str(root / "nginx-error.log")]
    nginx = Server("nginx", [*nginx_cmd, "-g", f"daemon off; pid {root / 'nginx.pid'};"], root / "nginx.log")
    started.append(nginx.start())
    cluster = LokiCluster(
        replicas, [f"http://127.0.0.1:{p['http']}" for p in ports], f"http://127.0.0.1:{listen}", nginx
    )
    nginx.wait_answering(cluster.url + "/nginx-health", 30, "/nginx-health")
    cluster.wait_ready()
    return cluster
