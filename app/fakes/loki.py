"""``FakeLoki``: one loopback stand-in for Loki's push API and its ``query_range`` API.

Lines pushed by the real shipper are stored and can be queried back by ``trail``, as with a real
Loki. Lines can also be stored directly with :meth:`FakeLoki.push` (the way our shipper would
have pushed them) to stage a trail.

Push (``POST /loki/api/v1/push``): every push is checked against Loki's format
(:mod:`fakes.loki_push`); a malformed one is answered 400 and recorded in ``violations``,
and the fixtures fail a test that leaves any. For fault tests it answers a scripted sequence:
``script`` holds one answer per push, then ``default`` answers: a status (204/200 accept; 429,
5xx, 400, ... refuse), ``(status, body text)``, ``"stall"`` (hold the request until
:meth:`release_stalled` or 60 s, then 503) or ``"reset"`` (drop the connection).

Query (``GET /loki/api/v1/query_range``): a LogQL subset evaluated over the stored entries
(:mod:`fakes.loki_query`); instant metric queries (``GET /loki/api/v1/query``): a smaller
subset (:mod:`fakes.loki_metric`), also over ``query_range`` as a matrix; ``fail_with``
makes every query answer an error instead.

Every request, push or query, is recorded in ``requests`` in arrival order.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from correlation import schema
from correlation.ids import shard_of
from fakes.loki_metric import instant_result, instant_time, matrix_result, parse_metric_query
from fakes.loki_push import Push, PushedEntry, decode_push
from fakes.loki_query import QueryError, parse_query, query_range_result
from fakes.loopback import LoopbackServer, QuietHandler

PUSH_PATH = "/loki/api/v1/push"
QUERY_RANGE_PATH = "/loki/api/v1/query_range"
QUERY_PATH = "/loki/api/v1/query"
STALL_SECONDS = 60.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received. For a query, ``params`` are its query-string parameters."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]  # names lowercased
    #: ``time.monotonic()`` at arrival: the gaps between pushes show the sender's backoff.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def query(self) -> str:
        return self.params.get("query", "")

    @property
    def start(self) -> int:
        return int(self.params.get("start", "0"))

    @property
    def end(self) -> int:
        return int(self.params.get("end", str(2**63 - 1)))

    @property
    def limit(self) -> int:
        return int(self.params.get("limit", "100"))

    @property
    def direction(self) -> str:
        return self.params.get("direction", "backward")


class FakeLoki:
    """``with FakeLoki() as loki:``; ``loki.url`` is the base URL to give as ``LOKI_URL``."""

    def __init__(
        self,
        *,
        script: list[Any] | None = None,
        default: Any = 204,
        lenient: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        #: Accepted pushes, in order (staged lines from :meth:`push` count as one push each).
        self.pushes: list[Push] = []
        #: Why each malformed push was refused.
        self.violations: list[str] = []
        #: Every request received (push or query), in order.
        self.requests: list[RecordedRequest] = []
        #: Scripted answers to pushes, consumed one per push; then ``default`` answers.
        self.script: list[Any] = list(script or [])
        self.default: Any = default
        #: Accept unknown keys in push bodies, as Loki does (for third-party clients in benchmarks).
        self.lenient = lenient
        #: (status, body, content type) to answer every query with, or None to answer normally.
        self.fail_with: tuple[int, str, str] | None = None
        self._lock = threading.Condition()
        self._release = threading.Event()
        self._server = LoopbackServer(self._handler_class(), tls=tls)
        self.url = self._server.url

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeLoki:
        self._server.start()
        return self

    def stop(self) -> None:
        self._release.set()  # stalled requests end, so the server can stop
        self._server.stop()

    def __enter__(self) -> FakeLoki:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- staging and reading ----------------------------------------------------------------------

    def push(
        self,
        ts_ns: int,
        line: str | dict[str, Any],
        *,
        service: str | None = None,
        correlation_id: str | None = None,
        env: str = "test",
        **metadata: str,
    ) -> None:
        """Store one line the way our shipper pushes it: labels from ``schema.STREAM_LABELS``,
        metadata from ``schema.METADATA_FIELDS`` (and the optional ones the line has). A dict line
        gives its own service, ID, request ID and level (lowercased, as the shipper sends it)
        unless they are passed. A line with an ID is in its shard's stream, as the shipper puts it
        (:meth:`push_unsharded`: as shippers before the shard label wrote it)."""
        self._stage(ts_ns, line, service, correlation_id, env, metadata, sharded=True)

    def push_unsharded(
        self,
        ts_ns: int,
        line: str | dict[str, Any],
        *,
        service: str | None = None,
        correlation_id: str | None = None,
        env: str = "test",
        **metadata: str,
    ) -> None:
        """:meth:`push`, in the stream without a ``shard`` label: a line shipped before it existed."""
        self._stage(ts_ns, line, service, correlation_id, env, metadata, sharded=False)

    def _stage(
        self,
        ts_ns: int,
        line: str | dict[str, Any],
        service: str | None,
        correlation_id: str | None,
        env: str,
        metadata: dict[str, str],
        *,
        sharded: bool,
    ) -> None:
        if isinstance(line, dict):
            service = service or line.get(schema.SERVICE)
            correlation_id = correlation_id or line.get(schema.CORRELATION_ID)
            for key in (*schema.METADATA_FIELDS, *schema.OPTIONAL_METADATA_FIELDS):
                value = line.get(key)
                if key != schema.CORRELATION_ID and isinstance(value, str):
                    metadata.setdefault(key, value.lower() if key == schema.LEVEL else value)
            line = json.dumps(line)
        if correlation_id:
            metadata[schema.CORRELATION_ID] = correlation_id
        labels = {schema.SERVICE_LABEL: service or "unknown_service", schema.ENV_LABEL: env}
        if correlation_id and sharded:
            labels[schema.SHARD_LABEL] = shard_of(correlation_id)
        with self._lock:
            self.pushes.append(Push({}, [PushedEntry(labels, ts_ns, line, dict(metadata))]))
            self._lock.notify_all()

    @property
    def entries(self) -> list[PushedEntry]:
        """Every stored entry, in arrival order."""
        with self._lock:
            return [e for p in self.pushes for e in p.entries]

    @property
    def queries(self) -> list[RecordedRequest]:
        """The ``query_range`` requests for log lines received, in order (metric ones: :attr:`metric_queries`)."""
        with self._lock:
            return [r for r in self.requests if r.path == QUERY_RANGE_PATH and r.query.lstrip().startswith("{")]

    @property
    def metric_queries(self) -> list[RecordedRequest]:
        """The metric queries received (instant and over a range), in order."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path == QUERY_PATH or (r.path == QUERY_RANGE_PATH and not r.query.lstrip().startswith("{"))
            ]

    def wait_for(self, predicate: Callable[[list[PushedEntry]], bool], timeout: float = 10.0) -> list[PushedEntry]:
        """Wait until ``predicate(entries)`` holds and return the entries; AssertionError on timeout.
        Woken by each accepted push, so no polling delay."""
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

    def drain(self) -> tuple[list[Push], int]:
        """Remove and return the accepted pushes, and count the requests received, since the last
        drain: a long-running sink (bench/sinkproc.py) keeps counts, not everything it was sent."""
        with self._lock:
            pushes, self.pushes = self.pushes, []
            requests = len(self.requests)
            self.requests.clear()
        return pushes, requests

    def release_stalled(self) -> None:
        """Let stalled pushes finish (answered 503); later "stall" answers do not stall."""
        self._release.set()

    # -- serving ---------------------------------------------------------------------------------

    def _handler_class(self) -> type[QuietHandler]:
        fake = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Loki; the shipper reuses connections

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._on_push(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._on_query(self)

        return Handler

    def _record(self, request: QuietHandler, params: dict[str, str]) -> RecordedRequest:
        headers = {k.lower(): v for k, v in request.headers.items()}
        recorded = RecordedRequest(request.command, urlsplit(request.path).path, params, headers)
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _on_push(self, request: QuietHandler) -> None:
        raw = request.read_body()
        recorded = self._record(request, {})
        with self._lock:
            answer = self.script.pop(0) if self.script else self.default
        if answer == "reset":
            request.close_connection = True
            request.connection.shutdown(2)
            return
        if answer == "stall":
            self._release.wait(STALL_SECONDS)
            answer = 503
        if urlsplit(request.path).path != PUSH_PATH:
            return request.reply(404, "404 page not found\n")
        if isinstance(answer, tuple):
            return request.reply(answer[0], answer[1])
        if answer not in (200, 204):
            return request.reply(int(answer), f"scripted answer {answer}")
        try:
            entries = decode_push(recorded.headers, raw, lenient=self.lenient)
        except ValueError as exc:
            with self._lock:
                self.violations.append(str(exc))
            return request.reply(400, str(exc))
        with self._lock:
            self.pushes.append(Push(recorded.headers, entries))
            self._lock.notify_all()
        request.reply(answer)

    def _on_query(self, request: QuietHandler) -> None:
        parts = urlsplit(request.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        recorded = self._record(request, params)
        if parts.path not in (QUERY_RANGE_PATH, QUERY_PATH):
            return request.reply(404, "404 page not found\n")
        if self.fail_with:
            status, body, content_type = self.fail_with
            return request.reply(status, body, content_type)
        if parts.path == QUERY_PATH:
            try:
                answer = instant_result(self.entries, parse_metric_query(recorded.query), instant_time(params))
            except QueryError as exc:
                return request.reply(400, f"{exc}\n")
            return request.reply(200, json.dumps(answer), "application/json; charset=UTF-8")
        if not recorded.query.lstrip().startswith("{"):  # a metric query over a range: a matrix
            try:
                answer = matrix_result(self.entries, parse_metric_query(recorded.query), params)
            except QueryError as exc:
                return request.reply(400, f"{exc}\n")
            return request.reply(200, json.dumps(answer), "application/json; charset=UTF-8")
        try:
            query = parse_query(recorded.query)
        except QueryError as exc:
            return request.reply(400, f"{exc}\n")
        categorize = "categorize-labels" in recorded.headers.get("x-loki-response-encoding-flags", "")
        result = query_range_result(
            self.entries, query, recorded.start, recorded.end, recorded.limit, recorded.direction, categorize
        )
        request.reply(200, json.dumps(result), "application/json; charset=UTF-8")
