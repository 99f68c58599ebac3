"""A fresh single-binary Loki for one benchmark run: the stack's loki/loki.yaml, with its own
loopback ports and data directory (``LOKI_BIN`` names the binary; nothing else is touched).

Also reads what the benchmark reports about it: its CPU time (/proc), resident memory, and a few
of its own metrics (streams and chunks in memory, chunks created).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fakes import free_port

CONFIG = Path(__file__).resolve().parent.parent / "loki" / "loki.yaml"
READY_SECONDS = 90.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class LokiProcess:
    """One running Loki: its URL, process and data directory."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metric(self, name: str) -> float:
        """The sum of every series of one of Loki's own metrics (0 when it has none)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
        return sum(float(value) for value in pattern.findall(text))


def config_text(http_port: int, grpc_port: int, directory: Path) -> str:
    """loki/loki.yaml with this run's ports and data directory."""
    text = CONFIG.read_text()
    text = text.replace("http_listen_port: 3100", f"http_listen_port: {http_port}")
    text = text.replace("grpc_listen_port: 9096", f"grpc_listen_port: {grpc_port}")
    text = re.sub(r"(?m)(: )/loki\b", rf"\g<1>{directory}", text)
    if "http_listen_address" not in text:
        text = text.replace(
            "server:\n", "server:\n  http_listen_address: 127.0.0.1\n  grpc_listen_address: 127.0.0.1\n", 1
        )
    return text


@contextmanager
def running_loki(binary: str, directory: Path) -> Iterator[LokiProcess]:
    """Loki from ``binary`` on free loopback ports with its data under ``directory``, ready;
    stopped (and its data left for the caller to remove) at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = free_port(), free_port()
    config = directory / "loki.yaml"
    config.write_text(config_text(http_port, grpc_port, directory))
    log = (directory / "loki.log").open("wb")
    process = subprocess.Popen([binary, f"-config.file={config}"], stdout=log, stderr=subprocess.STDOUT)
    loki = LokiProcess(f"http://127.0.0.1:{http_port}", process, directory)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Loki exited with {process.returncode}: see {directory / 'loki.log'}")
            try:
                with urllib.request.urlopen(f"{loki.url}/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Loki not ready after {READY_SECONDS:.0f} s: see {directory / 'loki.log'}")
            time.sleep(0.5)
        yield loki
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
