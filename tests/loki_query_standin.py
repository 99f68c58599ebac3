"""A loopback stand-in for Loki's ``GET /loki/api/v1/query_range`` (tests only).

It answers in Loki's documented format, ``{"status": "success", "data": {"resultType": "streams",
"result": [{"stream": {...}, "values": [["<ns>", "<line>"], ...]}], "stats": {...}}}``, and behaves
like Loki where the trail CLI depends on it:

- ``start`` inclusive, ``end`` exclusive, both Unix ns;
- ``limit`` counts entries across all streams; ``direction=forward`` gives the oldest entries,
  ``backward`` the newest (each stream's values in that order);
- one result per distinct label + structured-metadata set, metadata merged into ``stream``; with
  ``X-Loki-Response-Encoding-Flags: categorize-labels`` labels and metadata come apart and values
  get Loki's third element ``{"structuredMetadata": {...}}``;
- it understands the two query shapes the CLI sends (``| correlation_id="..."`` and the
  ``--last-error`` one) and answers anything else with 400 and a plain-text parse error.

It also accepts Loki's JSON push (``POST /loki/api/v1/push``), so the real-Loki test can be
rehearsed against it. Every query is recorded (query, start, end, limit, direction, headers). ``fail_with`` makes it
answer an error; ``closed_port_url()`` gives a URL where nothing listens.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

PATH = "/loki/api/v1/query_range"
PUSH_PATH = "/loki/api/v1/push"
_BY_ID = re.compile(r'^\{service_name=~"\.\+"\} \| correlation_id="([A-Za-z0-9._-]+)"$')
_LAST_ERROR = re.compile(
    r'^\{service_name(?:=~"\.\+"|="([A-Za-z0-9._-]+)")\} \|= "correlation\.access" '
    r'\| json logger="logger", status="status" \| logger="correlation\.access" \| status >= 500 \| __error__=""$'
)


@dataclass
class StoredEntry:
    ts_ns: int
    line: str
    labels: dict[str, str]
    metadata: dict[str, str]


@dataclass
class RecordedRequest:
    query: str
    start: int
    end: int
    limit: int
    direction: str
    headers: dict[str, str]


@dataclass
class LokiStandIn:
    """Holds pushed entries, serves them, remembers what it was asked."""

    entries: list[StoredEntry] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    #: (status, body, content type) to answer every query with, or None to answer normally.
    fail_with: tuple[int, str, str] | None = None
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def push(self, ts_ns: int, line: str | dict[str, Any], *, service: str | None = None,
             correlation_id: str | None = None, env: str = "test", **metadata: str) -> None:
        """Store a line the way our shipper pushes it (labels service_name/env, metadata)."""
        if isinstance(line, dict):
            service = service or line.get("service")
            correlation_id = correlation_id or line.get("correlation_id")
            for key in ("request_id", "level"):
                if isinstance(line.get(key), str):
                    metadata.setdefault(key, line[key].lower() if key == "level" else line[key])
            line = json.dumps(line)
        meta = dict(metadata)
        if correlation_id:
            meta["correlation_id"] = correlation_id
        self.entries.append(StoredEntry(ts_ns, line, {"service_name": service or "unknown_service", "env": env}, meta))

    # -- answering ---------------------------------------------------------------------------
    def _matches(self, query: str) -> Any:
        by_id = _BY_ID.match(query)
        if by_id:
            return lambda e: e.metadata.get("correlation_id") == by_id.group(1)
        last_error = _LAST_ERROR.match(query)
        if last_error:
            service = last_error.group(1)

            def failed_access_line(e: StoredEntry) -> bool:
                try:
                    fields = json.loads(e.line)
                    status = float(fields["status"])
                except (ValueError, KeyError, TypeError):
                    return False
                return (fields.get("logger") == "correlation.access" and status >= 500
                        and (service is None or e.labels["service_name"] == service))

            return failed_access_line
        return None

    def answer(self, params: dict[str, str], headers: dict[str, str]) -> tuple[int, str, str]:
        """(status, body, content type) for one query_range request."""
        query = params.get("query", "")
        start, end = int(params.get("start", "0")), int(params.get("end", str(2**63 - 1)))
        limit, direction = int(params.get("limit", "100")), params.get("direction", "backward")
        self.requests.append(RecordedRequest(query, start, end, limit, direction, headers))
        if self.fail_with:
            return self.fail_with
        match = self._matches(query)
        if match is None:
            return 400, "parse error at line 1, col 1: syntax error: unexpected IDENTIFIER\n", "text/plain; charset=utf-8"
        hits = [e for e in self.entries if start <= e.ts_ns < end and match(e)]
        # Loki's merge is global across streams: the limit keeps the oldest/newest overall.
        hits.sort(key=lambda e: e.ts_ns, reverse=direction == "backward")
        hits = hits[:limit]
        categorize = "categorize-labels" in headers.get("x-loki-response-encoding-flags", "")
        streams: dict[str, dict[str, Any]] = {}
        for e in hits:
            if categorize:
                stream, value = e.labels, [str(e.ts_ns), e.line, {"structuredMetadata": e.metadata} if e.metadata else {}]
            else:
                stream, value = {**e.labels, **e.metadata}, [str(e.ts_ns), e.line]
            key = json.dumps(stream, sort_keys=True)
            streams.setdefault(key, {"stream": stream, "values": []})["values"].append(value)
        body = {
            "status": "success",
            "data": {
                "resultType": "streams",
                "result": list(streams.values()),
                "stats": {"summary": {"totalEntriesReturned": len(hits), "execTime": 0.001}},
            },
        }
        if categorize:
            body["data"]["encodingFlags"] = ["categorize-labels"]
        return 200, json.dumps(body), "application/json; charset=UTF-8"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "LokiStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urlsplit(self.path)
                if parts.path != PATH:
                    status, body, ctype = 404, "404 page not found\n", "text/plain; charset=utf-8"
                else:
                    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    status, body, ctype = standin.answer(params, headers)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                # Loki's JSON push, so the real-Loki test can be rehearsed against the stand-in.
                if urlsplit(self.path).path != PUSH_PATH:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                for stream in body["streams"]:
                    for value in stream["values"]:
                        meta = value[2] if len(value) > 2 else {}
                        standin.entries.append(StoredEntry(int(value[0]), value[1], dict(stream["stream"]), dict(meta)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def loki(monkeypatch: pytest.MonkeyPatch):
    """A running stand-in with LOKI_URL pointing at it and no other LOKI_* settings."""
    for name in ("LOKI_TENANT", "LOKI_USERNAME", "LOKI_PASSWORD", "LOKI_BEARER_TOKEN", "LOKI_TLS_VERIFY", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    standin = LokiStandIn().start()
    monkeypatch.setenv("LOKI_URL", standin.url)
    yield standin
    standin.stop()


# -- sample log lines, shaped as README.md, Reference says our services write them ------------------
def rfc3339(ts_ns: int) -> str:
    moment = datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ns // 1000 % 1_000_000:06d}Z"


def log_line(cid: str, rid: str, parent: str | None, service: str, ts_ns: int, message: str,
             level: str = "INFO", logger: str | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
    """(Loki timestamp, JSON line) for an application line of one hop."""
    line = {"time": rfc3339(ts_ns), "level": level, "logger": logger or f"demo.{service}", "message": message,
            "service": service, "correlation_id": cid, "request_id": rid, "parent_request_id": parent, **extra}
    return ts_ns, line


def access_line(cid: str, rid: str, parent: str | None, service: str, start_ns: int, duration_ms: float,
                method: str, route: str, status: int, caller: str | None = None) -> tuple[int, dict[str, Any]]:
    """The hop's access line: written at the END of the request, so its time is start + duration."""
    end_ns = start_ns + int(duration_ms * 1_000_000)
    return log_line(cid, rid, parent, service, end_ns, f"{method} {route} {status}",
                    level="ERROR" if status >= 500 else "INFO", logger="correlation.access",
                    method=method, route=route, path=route, status=status, duration_ms=duration_ms, caller=caller)


#: Request IDs of the sample checkout: gateway -> orders -> (payments, inventory).
GATEWAY, ORDERS, PAYMENTS, INVENTORY = "a000000000000001", "b000000000000002", "c000000000000003", "d000000000000004"


def checkout_lines(cid: str, t0_ns: int, *, payments_status: int = 500) -> list[tuple[int, dict[str, Any]]]:
    """A whole POST /checkout: four hops, two lines of their own each plus the access line."""
    ms = 1_000_000
    payments_failed = payments_status >= 500
    lines = [
        log_line(cid, GATEWAY, None, "gateway", t0_ns + 1 * ms, "checkout started"),
        log_line(cid, GATEWAY, None, "gateway", t0_ns + 2 * ms, "calling orders"),
        log_line(cid, ORDERS, GATEWAY, "orders", t0_ns + 4 * ms, "creating order", order_id="o-17"),
        log_line(cid, ORDERS, GATEWAY, "orders", t0_ns + 5 * ms, "calling payments"),
        log_line(cid, PAYMENTS, ORDERS, "payments", t0_ns + 7 * ms, "charging card"),
        log_line(cid, PAYMENTS, ORDERS, "payments", t0_ns + 9 * ms,
                 "card processor timed out" if payments_failed else "charged",
                 level="ERROR" if payments_failed else "INFO",
                 **({"exception": "Traceback (most recent call last):\n  ...\nTimeoutError: processor"}
                    if payments_failed else {})),
        access_line(cid, PAYMENTS, ORDERS, "payments", t0_ns + 6 * ms, 12.0, "POST", "/payments",
                    payments_status, caller="orders"),
        log_line(cid, INVENTORY, ORDERS, "inventory", t0_ns + 21 * ms, "reserving stock"),
        access_line(cid, INVENTORY, ORDERS, "inventory", t0_ns + 20 * ms, 8.0, "POST", "/reservations", 201,
                    caller="orders"),
        access_line(cid, ORDERS, GATEWAY, "orders", t0_ns + 3 * ms, 30.0, "POST", "/orders",
                    502 if payments_failed else 201, caller="gateway"),
        access_line(cid, GATEWAY, None, "gateway", t0_ns, 40.0, "POST", "/checkout",
                    502 if payments_failed else 201),
    ]
    return sorted(lines, key=lambda pair: pair[0])


def push_all(standin: LokiStandIn, lines: list[tuple[int, dict[str, Any]]]) -> None:
    for ts_ns, line in lines:
        standin.push(ts_ns, line)
