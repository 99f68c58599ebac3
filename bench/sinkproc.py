"""The tests' fake Loki (``fakes.FakeLoki``), run in its own process as a push sink.

In its own process the sink's JSON decoding and validation do not compete for the GIL with the
code being measured (on a real deployment Loki runs elsewhere too). The parent talks to it over a
pipe (JSON lines on stdin/stdout): ``stats()``, ``reset()``, ``set_lenient()``; entries are counted and then discarded.
With ``default="count"`` it is not the fake but a bare receiver that counts entries and answers 204.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

#: The repository root: ``python -m bench`` runs from there, so ``fakes`` imports as a package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _approx_push_bytes(entries: list[Any]) -> int:
    """Decoded JSON size of a push, roughly (what Loki's 4 MB gRPC limit counts)."""
    return sum(len(e.line.encode()) + 24 + sum(len(k) + len(v) + 6 for k, v in e.metadata.items()) for e in entries)


#: An entry's start in a push body: ``["<unix ns>",``. Inside a line every ``"`` is escaped, so
#: this cannot occur there: counting it counts entries without decoding the JSON.
_ENTRY_START = re.compile(rb'\["\d+",')


#: Loki's OTLP logs endpoint (OTLP/HTTP, protobuf).
OTLP_LOGS_PATH = "/otlp/v1/logs"


def _otlp_records(body: bytes) -> int:
    """Log records in an OTLP/HTTP ``ExportLogsServiceRequest`` (the bench extra's protobufs)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(body)
    return sum(len(scope.log_records) for resource in request.resource_logs for scope in resource.scope_logs)


def _serve_counting(send: Any) -> None:
    """The child, counting only: every push answered 204 after counting its entries. What a
    benchmark of the sender's side wants (P2): the sink's own CPU is the machine's too."""
    from fakes import LoopbackServer, QuietHandler

    lock = threading.Lock()
    totals = {"entries": 0, "pushes": 0, "max_push_entries": 0, "max_push_bytes": 0}

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Loki does

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.read_body()
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path.startswith(OTLP_LOGS_PATH):
                count = _otlp_records(body)
            else:
                count = len(_ENTRY_START.findall(body))
            with lock:
                totals["entries"] += count
                totals["pushes"] += 1
                totals["max_push_entries"] = max(totals["max_push_entries"], count)
                totals["max_push_bytes"] = max(totals["max_push_bytes"], len(body))
            self.reply(204)

    with LoopbackServer(Handler) as server:
        send(server.url)
        for raw in sys.stdin:
            command, _ = json.loads(raw)
            if command == "stop":
                break
            with lock:
                if command == "reset":
                    totals.update(dict.fromkeys(totals, 0))
                reply = {**totals, "violations": 0, "first_violation": "", "requests": totals["pushes"]}
            send(reply)
        send({"stopped": True})
    os._exit(0)


def _serve(default: Any, lenient: bool) -> None:
    """The child: start the sink, print its URL, answer one JSON line per command line on stdin."""
    from fakes import FakeLoki

    out = sys.stdout
    # Clients that give up on a stalled push make the server print BrokenPipe tracebacks: not news.
    sys.stderr = sys.stdout = open(os.devnull, "w")

    def send(obj: Any) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    if default == "count":
        _serve_counting(send)
    with FakeLoki(default=default, lenient=lenient) as sink:
        send(sink.url)
        totals = {"entries": 0, "pushes": 0, "max_push_entries": 0, "max_push_bytes": 0}
        requests = 0  # every request received since start (stalled ones too); not reset
        for raw in sys.stdin:
            command, arg = json.loads(raw)
            if command == "stop":
                break
            pushes, received = sink.drain()  # counted, then let go: memory stays flat
            requests += received
            for push in pushes:
                n = len(push.entries)
                totals["entries"] += n
                totals["pushes"] += 1
                totals["max_push_entries"] = max(totals["max_push_entries"], n)
                totals["max_push_bytes"] = max(totals["max_push_bytes"], _approx_push_bytes(push.entries))
            if command == "reset":
                sink.violations.clear()
                totals = dict.fromkeys(totals, 0)
            elif command == "lenient":
                sink.lenient = bool(arg)
            reply = {
                **totals,
                "violations": len(sink.violations),
                "first_violation": sink.violations[0] if sink.violations else "",
                "requests": requests,
            }
            send(reply)
        send({"stopped": True})
    os._exit(0)  # stalled handler threads may still be waiting


class SinkProcess:
    """``with SinkProcess() as sink:`` gives ``sink.url``; ``default="stall"`` makes it hang pushes;
    ``default="count"`` only counts entries, of Loki pushes and of OTLP/HTTP log exports at
    :data:`OTLP_LOGS_PATH` (no validation: the cheapest receiver, for P2 and P1's OTel baseline)."""

    def __init__(self, default: Any = 204, lenient: bool = False) -> None:
        self._args = [json.dumps(default), "1" if lenient else "0"]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SinkProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sinkproc", *self._args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        line = self._proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the Loki sink process did not start")
        self.url = json.loads(line)
        return self

    def __exit__(self, *exc: Any) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            self._ask("stop")
        except (OSError, ValueError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _ask(self, command: str, arg: Any = None) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps([command, arg]) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> dict[str, Any]:
        return self._ask("reset")

    def set_lenient(self, lenient: bool) -> dict[str, Any]:
        return self._ask("lenient", lenient)

    def wait_entries(self, count: int, timeout: float) -> tuple[dict[str, Any], float]:
        """Poll until ``count`` entries arrived (or timeout); the stats and the time they did."""
        deadline = time.perf_counter() + timeout
        while True:
            stats = self.stats()
            now = time.perf_counter()
            if stats["entries"] >= count or now >= deadline:
                return stats, now
            time.sleep(0.01)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]), sys.argv[2] == "1")
