"""Synthetic chain traffic for the P5 scale benchmark: 5 services, one JSON access line per hop,
pushed into a real Loki with exactly the library's stream labels and structured metadata
(``correlation_id``, ``request_id``, ``level``): with the ``shard`` stream label as the shipper
writes it (:func:`correlation.ids.shard_of`), or without it, as the shipper wrote lines before
issue 26.

Each request is a checkout: gateway -> orders -> payments, inventory, notifications, five access
lines within 10 ms, the ID a UUIDv7 of the request's own millisecond (reproducible random bits,
so the benchmark can name requests in the middle of the span without keeping them).
"""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench.trail_lookup import seeded_correlation_id
from correlation import schema
from correlation.ids import shard_of

NS = 1_000_000_000
MS = 1_000_000
SERVICES = ("gateway", "orders", "payments", "inventory", "notifications")
#: (service, ms after the request's start, method, route, duration ms, caller) of each hop's access
#: line, in the order they are written (a callee finishes first).
HOPS = (
    ("payments", 5, "POST", "/payments", 1.0, "orders"),
    ("inventory", 6, "POST", "/reservations", 1.0, "orders"),
    ("notifications", 7, "POST", "/notify", 0.5, "orders"),
    ("orders", 8, "POST", "/orders", 6.0, "gateway"),
    ("gateway", 9, "POST", "/checkout", 9.0, None),
)
PARENT = {"gateway": None, "orders": "gateway", "payments": "orders", "inventory": "orders", "notifications": "orders"}
LINES_PER_REQUEST = len(HOPS)
ENV = "bench-p5"
BATCH_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Span:
    """``lines_per_minute`` of line time from ``start_ns`` for ``seconds``."""

    lines_per_minute: int
    start_ns: int
    seconds: float = 60.0

    @property
    def requests(self) -> int:
        return max(1, round(self.lines_per_minute * self.seconds / 60 / LINES_PER_REQUEST))

    @property
    def step_ns(self) -> int:
        return int(self.seconds * NS) // self.requests

    def request_start(self, index: int) -> int:
        return self.start_ns + index * self.step_ns


def _time_text(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns // NS)) + f".{(ts_ns // 1000) % 1_000_000:06d}Z"


def request_lines(ts_ns: int, rng: random.Random) -> tuple[str, list[tuple[str, int, bytes, dict[str, str]]]]:
    """One checkout: its ID and its lines as (service, ts_ns, JSON line, structured metadata)."""
    cid = seeded_correlation_id(ts_ns // MS, rng)
    rids = {s: f"{rng.getrandbits(64):016x}" for s in SERVICES}
    out = []
    for service, offset_ms, method, route, duration, caller in HOPS:
        t = ts_ns + offset_ms * MS
        parent = PARENT[service]
        line = {
            "time": _time_text(t),
            "level": "INFO",
            "logger": "correlation.access",
            "message": f"{method} {route} 201 {duration}ms",
            "service": service,
            "correlation_id": cid,
            "request_id": rids[service],
            "parent_request_id": rids[parent] if parent else None,
            "method": method,
            "route": route,
            "path": route,
            "status": 201,
            "duration_ms": duration,
            "caller": caller,
        }
        out.append(
            (service, t, orjson.dumps(line), {"correlation_id": cid, "request_id": rids[service], "level": "info"})
        )
    return cid, out


def ids_at(span: Span, fractions: tuple[float, ...], seed: int = 7) -> list[tuple[str, int]]:
    """The IDs and start times of the requests at these fractions of the span (same seed as pushed)."""
    wanted = {min(span.requests - 1, int(span.requests * f)): f for f in fractions}
    rng = random.Random(seed)
    found = []
    for index in range(max(wanted) + 1):
        cid, _ = request_lines(span.request_start(index), rng)
        if index in wanted:
            found.append((cid, span.request_start(index)))
    return found


def bodies(span: Span, *, sharded: bool, seed: int = 7) -> Iterator[bytes]:
    """gzip-compressed push bodies of about BATCH_BYTES of lines each, every stream in time order."""
    rng = random.Random(seed)
    values: dict[tuple[str, str], list[bytes]] = {}
    size = 0
    for index in range(span.requests):
        cid, lines = request_lines(span.request_start(index), rng)
        shard = shard_of(cid) if sharded else ""
        for service, ts, line, metadata in lines:
            values.setdefault((service, shard), []).append(orjson.dumps([str(ts), line.decode(), metadata]))
            size += len(line) + 110
        if size >= BATCH_BYTES:
            yield _body(values)
            values, size = {}, 0
    if values:
        yield _body(values)


def _body(values: dict[tuple[str, str], list[bytes]]) -> bytes:
    streams = []
    for (service, shard), entries in values.items():
        labels: dict[str, Any] = {schema.SERVICE_LABEL: service, schema.ENV_LABEL: ENV}
        if shard:
            labels[schema.SHARD_LABEL] = shard
        streams.append(b'{"stream":' + orjson.dumps(labels) + b',"values":[' + b",".join(entries) + b"]}")
    return gzip.compress(b'{"streams":[' + b",".join(streams) + b"]}", compresslevel=1)


def push_all(url: str, span: Span, *, sharded: bool) -> tuple[int, int]:
    """Push the span's lines into Loki at ``url``; (pushes, retried pushes). 429 and 5xx are retried."""
    import requests

    session = requests.Session()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    pushes = retries = 0
    for body in bodies(span, sharded=sharded):
        delay = 0.25
        for _attempt in range(12):
            answer = session.post(f"{url}/loki/api/v1/push", data=body, headers=headers, timeout=60)
            if answer.status_code // 100 == 2:
                break
            if answer.status_code != 429 and answer.status_code < 500:
                raise RuntimeError(f"Loki refused a push: HTTP {answer.status_code}: {answer.text[:300]}")
            retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 4.0)
        else:
            raise RuntimeError("Loki kept refusing a push after 12 tries")
        pushes += 1
    return pushes, retries
