"""A loopback stand-in for Loki's push API that checks every push against Loki's documented format.

It accepts ``POST /loki/api/v1/push`` with ``Content-Type: application/json`` (optionally gzip
or deflate encoded), validates the body the way Loki would (stream labels, timestamps as strings
of nanoseconds, lines, flat string structured metadata, label limits, line size), stores the
accepted entries and answers 204. A malformed push is answered 400 and recorded in
``violations``: tests assert there are none.

It can also misbehave on request, for fault tests: answer a scripted sequence of statuses,
stall (accept and never answer), or reset connections.
"""

from __future__ import annotations

import gzip
import json
import re
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MAX_LABELS_PER_STREAM = 15
MAX_LINE_BYTES = 256 * 1024
MAX_FUTURE_NS = 10 * 60 * 1_000_000_000


@dataclass(frozen=True)
class PushedEntry:
    labels: dict[str, str]
    timestamp_ns: int
    line: str
    metadata: dict[str, str]

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.line)


@dataclass
class Push:
    headers: dict[str, str]  # names lowercased
    entries: list[PushedEntry]


def validate_push(body: dict[str, Any], now_ns: int | None = None, *, allow_extra_keys: bool = False) -> list[PushedEntry]:
    """The entries of a push body, or ValueError naming the first way it breaks Loki's format.

    ``allow_extra_keys``: accept unknown keys next to ``streams`` and next to ``stream``/``values``
    (Loki's JSON decoder ignores them; some third-party clients send them). Off by default.
    """
    now_ns = now_ns or time.time_ns()
    if not isinstance(body, dict) or not (set(body) == {"streams"} or (allow_extra_keys and "streams" in body)):
        raise ValueError(f"top level must be exactly {{'streams': [...]}}, got keys {sorted(body) if isinstance(body, dict) else type(body)}")
    streams = body["streams"]
    if not isinstance(streams, list) or not streams:
        raise ValueError("streams must be a non-empty list (Loki answers 422 otherwise)")
    entries = []
    for stream in streams:
        if not isinstance(stream, dict) or not (
            set(stream) == {"stream", "values"} or (allow_extra_keys and {"stream", "values"} <= set(stream))
        ):
            raise ValueError(f"a stream must have exactly 'stream' and 'values', got {sorted(stream)}")
        labels = stream["stream"]
        if not isinstance(labels, dict) or not labels:
            raise ValueError("stream labels must be a non-empty object")
        if len(labels) > MAX_LABELS_PER_STREAM:
            raise ValueError(f"{len(labels)} labels: Loki allows {MAX_LABELS_PER_STREAM}")
        for name, value in labels.items():
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"invalid label name {name!r}")
            if not isinstance(value, str) or not value:
                raise ValueError(f"label {name} must be a non-empty string")
        values = stream["values"]
        if not isinstance(values, list) or not values:
            raise ValueError("values must be a non-empty list")
        for value in values:
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise ValueError(f"an entry must be [ts, line] or [ts, line, metadata], got {value!r:.200}")
            ts, line = value[0], value[1]
            if not isinstance(ts, str) or not ts.isdigit():
                raise ValueError(f"timestamp must be a string of Unix nanoseconds, got {ts!r}")
            if int(ts) > now_ns + MAX_FUTURE_NS:
                raise ValueError(f"timestamp {ts} is too far in the future")
            if not isinstance(line, str):
                raise ValueError("line must be a string")
            if len(line.encode()) > MAX_LINE_BYTES:
                raise ValueError(f"line of {len(line.encode())} bytes exceeds {MAX_LINE_BYTES}")
            metadata = value[2] if len(value) == 3 else {}
            if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and LABEL_NAME.fullmatch(k) and isinstance(v, str) for k, v in metadata.items()
            ):
                raise ValueError(f"structured metadata must be a flat object of strings, got {metadata!r:.200}")
            entries.append(PushedEntry(dict(labels), int(ts), line, dict(metadata)))
    return entries


@dataclass
class LokiSink:
    """Run with ``with LokiSink() as sink:``; ``sink.url`` is the base URL to give as LOKI_URL."""

    pushes: list[Push] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Scripted answers, consumed one per push: a status, (status, body text), "stall" or "reset".
    script: list[Any] = field(default_factory=list)
    #: Answer given once the script is used up.
    default: Any = 204
    #: Accept unknown keys in the body and stream objects, as Loki does (for third-party clients
    #: in benchmarks). Off by default: our own shipper must send exactly Loki's documented shape.
    lenient: bool = False
    #: Serve HTTPS with this context (the URL then names host ``localhost``).
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._release = threading.Event()
        self.requests = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                sink._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
            self.url = f"https://localhost:{port}"

    def __enter__(self) -> "LokiSink":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- reading what arrived ------------------------------------------------------------------

    @property
    def entries(self) -> list[PushedEntry]:
        with self._lock:
            return [e for p in self.pushes for e in p.entries]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[PushedEntry]:
        """Poll until ``predicate(entries)`` is true; return the entries. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entries = [e for p in self.pushes for e in p.entries]
                if predicate(entries):
                    return entries
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout} s; {len(entries)} entries arrived")
                self._lock.wait(min(remaining, 0.2))

    def release_stalled(self) -> None:
        """Let stalled requests finish (answered 503)."""
        self._release.set()

    # -- serving ---------------------------------------------------------------------------

    def _next_answer(self) -> Any:
        with self._lock:
            self.requests += 1
            return self.script.pop(0) if self.script else self.default

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length", "0"))
        raw = request.rfile.read(length)
        answer = self._next_answer()
        if answer == "reset":
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if answer == "stall":
            self._release.wait(60)
            answer = 503
        if request.path != "/loki/api/v1/push":
            return self._reply(request, 404, "404 page not found")
        if isinstance(answer, tuple):
            return self._reply(request, answer[0], answer[1])
        if answer != 204 and answer != 200:
            return self._reply(request, int(answer), f"scripted answer {answer}")
        try:
            entries = self._decode(request, raw, self.lenient)
        except ValueError as exc:
            with self._lock:
                self.violations.append(str(exc))
            return self._reply(request, 400, str(exc))
        with self._lock:
            self.pushes.append(Push({k.lower(): v for k, v in request.headers.items()}, entries))
            self._lock.notify_all()
        self._reply(request, answer, "")

    @staticmethod
    def _decode(request: BaseHTTPRequestHandler, raw: bytes, lenient: bool = False) -> list[PushedEntry]:
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() != "application/json":
            raise ValueError(f"Content-Type {content_type!r}: Loki would read this as snappy protobuf")
        encoding = request.headers.get("Content-Encoding", "")
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "deflate":
                raw = zlib.decompress(raw)
            elif encoding:
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            body = json.loads(raw)
        except (OSError, zlib.error, json.JSONDecodeError) as exc:
            raise ValueError(f"undecodable body: {exc}") from None
        return validate_push(body, allow_extra_keys=lenient)

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, status: int, text: str) -> None:
        data = text.encode()
        request.send_response(status)
        request.send_header("Content-Type", "text/plain; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if data:
            request.wfile.write(data)
