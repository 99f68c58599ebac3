"""Trail lookup: how long does finding one request's lines in a real Loki take?

Only with env LOKI_URL (and the usual LOKI_* auth settings) pointing at a real Loki, e.g. the
compose stack's; otherwise it prints "skipped" and only checks its own helpers.

Pushes BENCH_TRAIL_LINES (1,000,000) demo-like lines: 200k requests x 5 lines over 4 service
streams (labels service_name, env="bench-trail"), spread over the last 55 minutes, with structured
metadata correlation_id / request_id / level, through Loki's push API in 1 MiB batches (429 and
5xx retried). Then times ``LokiQueryClient.query_all`` of one request's trail
(``{service_name=~".+"} | correlation_id="ID"``) over the last hour, and over the window the
trail lookup derives from the ID's own time (``trail.window.id_window``: MARGIN_SECONDS before,
the longest request plus the margin after). Loki indexes neither, so the time scales with the window.
Next to them, the same lookup through trail-web (``GET /t/ID``, the HTML page and ``?format=json``),
served by gunicorn as docker-compose.yml runs it: what a click on an exemplar or log field costs.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.table import median, print_table, targets_table

NAME = "trail"
TITLE = "Trail lookup in a real Loki"
NS = 1_000_000_000
MS = 1_000_000
BATCH_BYTES = 1024 * 1024
SERVICES = ("gateway", "orders", "payments", "inventory")
LABEL_ENV = "bench-trail"
TARGET_MS = 150.0
#: The trail page, served: Loki's lookup plus the page's own work.
TRAIL_WEB_TARGET_MS = 250.0
#: trail-web as docker-compose.yml runs it (service trail-web); the address comes from TRAIL_WEB_BIND.
TRAIL_WEB_COMMAND = ("-m", "gunicorn", "--config", "python:trail.web.gunicorn_conf", "trail.web.app:create_app()")
GZIP = True  # pushes gzip-compressed, as our shipper sends them


def seeded_correlation_id(ms: int, rng: random.Random) -> str:
    """Our UUIDv7 layout (correlation.ids) with reproducible random bits, so a run can find its ID."""
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)
    return f"{value:032x}"


#: One checkout in this many fails at payments (its access line answers 500 with an ``error_type``,
#: two types taking turns): what the notifier's failure count finds.
FAIL_EVERY = 100
ERROR_TYPES = ("demo.faults.InjectedFault", "builtins.ValueError")


def request_lines(index: int, ts_ns: int, rng: random.Random) -> tuple[str, list[tuple[str, int, str, dict[str, str]]]]:
    """One checkout's 5 lines as (service, ts_ns, line, metadata); the ID carries ``ts_ns``. Every
    :data:`FAIL_EVERY`-th (from the 37th) fails at payments."""
    cid = seeded_correlation_id(ts_ns // MS, rng)
    rids = {s: f"{rng.getrandbits(64):016x}" for s in SERVICES}
    parents = {"gateway": None, "orders": rids["gateway"], "payments": rids["orders"], "inventory": rids["orders"]}
    failing = index % FAIL_EVERY == 37

    def access(method: str, route: str, ms: float, caller: str | None) -> dict[str, Any]:
        fields = {"method": method, "route": route, "path": route, "status": 201, "duration_ms": ms, "caller": caller}
        if failing and route == "/payments":
            kind = ERROR_TYPES[index // FAIL_EVERY % len(ERROR_TYPES)]
            fields.update(status=500, origin="self", error_type=kind)
        return fields

    # One line of the app and one access line per hop, as the demo writes them: the trail the CLI
    # rebuilds from these is complete, so it stays in the narrow window (no widening).
    plan = [
        ("gateway", 0, "demo", "checkout started with 1 item(s)", {}),
        ("payments", 5, "correlation.access", "POST /payments 201 1.0ms", access("POST", "/payments", 1.0, "orders")),
        (
            "inventory",
            6,
            "correlation.access",
            "POST /reservations 201 1.0ms",
            access("POST", "/reservations", 1.0, "orders"),
        ),
        ("orders", 8, "correlation.access", "POST /orders 201 6.0ms", access("POST", "/orders", 6.0, "gateway")),
        ("gateway", 9, "correlation.access", "POST /checkout 201 9.0ms", access("POST", "/checkout", 9.0, None)),
    ]
    out = []
    for service, offset_ms, logger, message, extra in plan:
        t = ts_ns + offset_ms * MS
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // NS)) + f".{(t // 1000) % 1_000_000:06d}Z",
            "level": "INFO",
            "logger": logger,
            "message": message,
            "service": service,
            "correlation_id": cid,
            "request_id": rids[service],
            "parent_request_id": parents[service],
            **extra,
        }
        metadata = {"correlation_id": cid, "request_id": rids[service], "level": "info"}
        if line.get("status") == 500:
            line["level"] = "ERROR"
            metadata.update(level="error", error_type=line["error_type"])
        out.append((service, t, json.dumps(line), metadata))
    return cid, out


def batches(requests: int, start_ns: int, end_ns: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Push bodies of about BATCH_BYTES each, all 4 streams, in time order."""
    rng = random.Random(seed)
    step = (end_ns - start_ns) // max(1, requests)
    values: dict[str, list[list[Any]]] = {s: [] for s in SERVICES}
    size = 0
    for i in range(requests):
        _, lines = request_lines(i, start_ns + i * step, rng)
        for service, ts, line, metadata in lines:
            values[service].append([str(ts), line, metadata])
            size += len(line) + 120
        if size >= BATCH_BYTES:
            yield _body(values)
            values = {s: [] for s in SERVICES}
            size = 0
    if size:
        yield _body(values)


def _body(values: dict[str, list[list[Any]]]) -> dict[str, Any]:
    return {"streams": [{"stream": {"service_name": s, "env": LABEL_ENV}, "values": v} for s, v in values.items() if v]}


def target_request(requests: int, start_ns: int, end_ns: int, seed: int = 7) -> tuple[str, int]:
    """The correlation ID and time of the middle request ``batches`` generates (same seed)."""
    rng = random.Random(seed)
    step = (end_ns - start_ns) // max(1, requests)
    cid = ""
    for i in range(requests // 2 + 1):
        cid, _ = request_lines(i, start_ns + i * step, rng)
    return cid, start_ns + (requests // 2) * step


def id_window(correlation_id: str) -> tuple[int, int]:
    """The window the trail lookup queries first for one of our IDs (trail.window.id_window)."""
    from trail.window import id_window as trail_id_window

    window = trail_id_window(correlation_id)
    assert window is not None, f"{correlation_id} carries no time"
    return window.start_ns, window.end_ns


def _push(session: Any, settings: Any, body: dict[str, Any]) -> int:
    """POST one batch, retrying 429/5xx/connection errors (0.5 s doubling, 10 tries). Retries made."""
    import requests

    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **settings.auth_headers()}
    if GZIP:
        data = gzip.compress(data, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    delay = 0.5
    for attempt in range(10):
        try:
            r = session.post(
                settings.push_url,
                data=data,
                headers=headers,
                auth=settings.basic_auth,
                verify=settings.tls_verify,
                timeout=30,
            )
            if r.status_code // 100 == 2:
                return attempt
            if r.status_code != 429 and r.status_code < 500:
                raise RuntimeError(f"Loki refused a push: HTTP {r.status_code}: {r.text[:300]}")
        except requests.ConnectionError:
            pass
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, 8.0)
    raise RuntimeError("Loki kept refusing a push after 10 tries")


def self_check() -> str:
    """Helpers on a small sample: bodies pass the sink's validation, the ID window covers the lines."""
    from tests.fakes import validate_push

    now = time.time_ns()
    start, end = now - 3300 * NS, now - 60 * NS
    bodies = list(batches(3000, start, end))
    entries = [e for b in bodies for e in validate_push(b)]
    assert len(entries) == 15_000, len(entries)
    assert all(len(json.dumps(b)) < 2 * BATCH_BYTES for b in bodies)
    cid, ts = target_request(3000, start, end)
    from correlation.ids import time_ms_of

    assert time_ms_of(cid) == ts // MS, (cid, ts)
    mine = [e for e in entries if e.metadata["correlation_id"] == cid]
    assert len(mine) == 5 and {e.labels["service_name"] for e in mine} == set(SERVICES)
    lo, hi = id_window(cid)
    assert all(lo <= e.timestamp_ns < hi for e in mine) and hi - lo < 60 * NS
    window_s = (hi - lo) / NS
    return f"helpers self-check ok: {len(bodies)} push bodies for 15,000 lines, all valid; ID window {window_s:.0f} s"


@contextmanager
def trail_web() -> Iterator[str]:
    """trail-web under gunicorn on a free loopback port, reading the same Loki (LOKI_*); its base URL."""
    from tests.fakes import free_port, serving

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving([sys.executable, *TRAIL_WEB_COMMAND], base, "/healthz", env={"TRAIL_WEB_BIND": f"127.0.0.1:{port}"}):
        yield base


def run() -> None:
    if not os.environ.get("LOKI_URL", "").strip():
        print("skipped: set LOKI_URL to a real Loki")
        print(f"  ({self_check()})\n", flush=True)
        return
    import requests

    from correlation.settings import LokiSettings
    from trail.logql import trail_query
    from trail.loki_query import LokiQueryClient
    from trail.lookup import lookup_trail
    from trail.window import Window

    lines = int(os.environ.get("BENCH_TRAIL_LINES", "1000000"))
    repeats = int(os.environ.get("BENCH_TRAIL_REPEATS", "7"))
    settings = LokiSettings.from_env()
    reqs = lines // 5
    now = time.time_ns()
    start, end = now - 3300 * NS, now - 30 * NS
    session = requests.Session()
    pushed = retries = 0
    t0 = time.perf_counter()
    for body in batches(reqs, start, end):
        retries += _push(session, settings, body)
        pushed += sum(len(s["values"]) for s in body["streams"])
    push_s = time.perf_counter() - t0
    cid, _ = target_request(reqs, start, end)
    query = trail_query(cid)
    client = LokiQueryClient(settings)
    hour = Window.last(3600)
    # What `trail ID` does: None = let it derive the window from the ID (and widen if it must).
    lookups: dict[str, Window | None] = {"last 1 h": hour, "ID-derived": None}
    times: dict[str, list[float]] = {k: [] for k in lookups}
    found: dict[str, tuple[int, int, bool]] = {}
    # The same lookup through trail-web: its page (what a click opens) and its JSON document.
    pages = {"ID-derived, trail-web page": "", "ID-derived, trail-web JSON": "?format=json"}
    times.update({k: [] for k in pages})
    with trail_web() as base:
        for _ in range(repeats):
            for name, explicit in lookups.items():
                t = time.perf_counter()
                result = lookup_trail(client, cid, explicit)
                times[name].append((time.perf_counter() - t) * 1000)
                found[name] = (len(result.entries), len(result.windows), result.trail.complete)
            for name, suffix in pages.items():
                t = time.perf_counter()
                answer = session.get(f"{base}/t/{cid}{suffix}", timeout=30)
                times[name].append((time.perf_counter() - t) * 1000)
                found[name] = _served(answer, suffix)
    counted = _time_failure_counts(client, repeats)
    rows = [
        [name, found[name][1], median(times[name]), min(times[name]), found[name][0], "yes" if found[name][2] else "NO"]
        for name in [*lookups, *pages]
    ]
    expected_failed = len(range(37, reqs, FAIL_EVERY))
    for name, (count_times, failed) in counted.items():
        rows.append([name, 2, median(count_times), min(count_times), failed, "-"])
    print_table(
        f"{TITLE} ({pushed:,} lines pushed in {push_s:.0f} s, {retries} retried pushes)",
        ["window", "queries", "median ms", "min ms", "lines found", "complete trail"],
        rows,
        [
            f"query: {query}",
            f"median of {repeats} interleaved runs of trail.lookup.lookup_trail (what `trail ID` runs) and "
            "of GET /t/ID on trail-web (gunicorn, as in compose); expected 5 lines "
            "(the first query may include Loki warming up)",
            "failure count: trail.failures.count_failures at payments (what each notification adds, beside the "
            f"trail; one range query by error_type + one instant count), {repeats} runs; 'lines found' = failed "
            f"requests counted (pushed over the hour: {expected_failed})",
        ],
    )
    narrow, wide = median(times["ID-derived"]), median(times["last 1 h"])
    ok = found["ID-derived"][0] == 5 and found["ID-derived"][2] and found["ID-derived"][1] == 1
    page = median(times["ID-derived, trail-web page"])
    page_ok = found["ID-derived, trail-web page"] == found["ID-derived"]
    targets_table(
        f"{TITLE}: targets",
        [
            (
                "ID-derived window, ms (vs 1 h)",
                narrow,
                wide,
                f"< {TARGET_MS:.0f} ms, full trail",
                narrow < TARGET_MS and ok,
            ),
            (
                "notifier's failure count over 1 h, ms (vs trail lookup 1 h)",
                median(counted[COUNT_HOUR][0]),
                wide,
                f"< {COUNT_TARGET_MS:.0f} ms (notifier's Loki budget), all counted",
                median(counted[COUNT_HOUR][0]) < COUNT_TARGET_MS and counted[COUNT_HOUR][1] >= expected_failed,
            ),
            (
                "trail-web page served, ms (vs CLI lookup)",
                page,
                narrow,
                f"< {TRAIL_WEB_TARGET_MS:.0f} ms, full trail",
                page < TRAIL_WEB_TARGET_MS and ok and page_ok,
            ),
        ],
    )


COUNT_HOUR = "failure count (notifier), last 1 h"
#: The notifier's Loki budget (trail.notify.finding.DEFAULT_BUDGET_SECONDS): the count must fit in it.
COUNT_TARGET_MS = 3000.0


def _time_failure_counts(client: Any, repeats: int) -> dict[str, tuple[list[float], int]]:
    """Times of the notifier's failure count at payments over its default window (15 min before
    the alert) and over the whole hour, and the failed requests each counted."""
    from trail.failures import count_failures
    from trail.window import Window

    out: dict[str, tuple[list[float], int]] = {}
    for name, seconds in (("failure count (notifier), last 15 min", 900), (COUNT_HOUR, 3600)):
        times, failed = [], 0
        for _ in range(repeats):
            t = time.perf_counter()
            failed = count_failures(client, "payments", Window.last(seconds)).failed
            times.append((time.perf_counter() - t) * 1000)
        out[name] = (times, failed)
    return out


def _served(answer: Any, suffix: str) -> tuple[int, int, bool]:
    """(lines, windows searched, complete) of a trail-web answer; the page's from its JSON twin's
    shape: 200 and one waterfall row per hop."""
    if answer.status_code != 200:
        return (0, 0, False)
    if suffix:
        document = answer.json()
        lines = sum(len(hop["lines"]) for hop in document["hops"]) + len(document["unknown_lines"])
        return (lines, 2 if document["widened"] else 1, document["complete"])
    html = answer.text
    widened = "so the window was widened once" in html
    lines = int(html.split(" lines, started ", 1)[0].rsplit(" ", 1)[-1]) if " lines, started " in html else 0
    return (lines, 2 if widened else 1, 'class="problems"' not in html)
