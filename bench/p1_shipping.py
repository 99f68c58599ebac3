"""P1 shipping throughput: lines/s from one process into the same receiver, ours and its peers.

Variants (bench/p1_variants.py; all but the reference with CorrelationFilter, inside a bound
request context, one demo-like line each):
- reference: a bare ``logger.info`` into a handler that does nothing (the caller-cost target);
- floor: stdlib logging + JsonFormatter into a list (no shipping at all);
- floor + entry: the same, and each line's Loki push entry made (orjson) into a list: the least
  any shipper to Loki's JSON push pays on the caller, with no lock, thread or I/O;
- ours: correlation.loki.LokiHandler (defaults: 1 MiB / 1 s batches, gzip, 64 MiB buffer);
- python-logging-loki 0.3.1 (one POST per record on the calling thread, so it gets fewer lines);
- loki-logger-handler 1.1.2 (defaults, structured metadata on; its thread sends the whole
  queue each flush; we set its flush event once the lines are emitted, as a flush would);
- the OpenTelemetry logs SDK (LoggingHandler + BatchLogRecordProcessor with a queue that holds
  the run, OTLP/HTTP with gzip into Loki's ``/otlp/v1/logs``).

"caller" is the emit loop: what the logging thread pays. "delivered" runs from the first emit
until the receiver has acknowledged every line. The receivers: a validating fake Loki for Loki
pushes and a counting one for OTLP, each in its own process; with ``LOKI_URL`` set, the same run
again against that real Loki (ours, python-logging-loki, OpenTelemetry; delivered = what the
shipper saw acknowledged, since Loki cannot be asked).
"""

from __future__ import annotations

import os
from typing import Any

from bench.p1_variants import VARIANTS, Target
from bench.sinkproc import SinkProcess
from bench.table import fmt, fmt_ratio, median, print_table, targets_table

NAME = "p1"
TITLE = "P1 shipping throughput"
CALLER_TARGET = 2.0  # ours' caller cost per line <= this x a bare logger.info into a no-op handler


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _measure(target: Target, keys: list[str], counts: dict[str, int], rounds: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    for key in keys:  # warm-up: imports, connections, code paths
        VARIANTS[key][1](target, min(2_000, counts[key]))
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            results[key].append(VARIANTS[key][1](target, counts[key]))
    return results


def run() -> None:
    lines = _int_env("BENCH_LINES", 200_000)
    pll_lines = _int_env("BENCH_PLL_LINES", 2_000)
    rounds = _int_env("BENCH_ROUNDS", 3)
    keys = list(VARIANTS)
    counts = {key: pll_lines if key == "pll" else lines for key in keys}
    with SinkProcess() as sink, SinkProcess(default="count") as otlp:
        results = _measure(Target(sink.url, sink, otlp), keys, counts, rounds)
    _report(f"{TITLE}, loopback sinks (BENCH_LINES={lines:,})", results, counts, rounds, real=False)
    loki_url = os.environ.get("LOKI_URL", "").strip().rstrip("/")
    if loki_url:
        real_lines = _int_env("BENCH_REAL_LOKI_LINES", 20_000)
        real_keys = ["noop", "ours", "pll", "otel"]  # loki-logger-handler's deliveries cannot be seen there
        real_counts = {key: pll_lines if key == "pll" else real_lines for key in real_keys}
        real = _measure(Target(loki_url), real_keys, real_counts, rounds)
        _report(f"{TITLE}, real Loki at {loki_url} (BENCH_REAL_LOKI_LINES={real_lines:,})", real, real_counts, rounds,
                real=True)  # fmt: skip
    else:
        print("  real Loki: skipped (set LOKI_URL to run P1 against one too)\n")


def _report(
    title: str, results: dict[str, list[dict[str, Any]]], counts: dict[str, int], rounds: int, real: bool
) -> None:
    def med(key: str, field: str) -> float:
        return median(r[field] for r in results[key])

    shipped = [key for key in results if key not in ("noop", "floor", "floor_entry")]
    rows = []
    for key in results:
        rs, ships = results[key], key in shipped
        rows.append([
            VARIANTS[key][0], counts[key], med(key, "caller_us"), med(key, "emit_lps"),
            med(key, "delivered_lps") if ships else "-",
            f"{min(r['delivered'] for r in rs):,}/{counts[key]:,}" if ships else "-",
            fmt(med(key, "pushes")) if ships and not real else "-",
            f"{max(r['max_push_mb'] for r in rs):.1f}" if ships and not real else "-",
            fmt_ratio(med(key, "caller_us") / med("noop", "caller_us")),
        ])  # fmt: skip
    notes = [f"median of {rounds} interleaved rounds; delivered = acknowledged (2xx), the worst round shown"]
    if not real:
        notes.append("Loki pushes to fakes.FakeLoki (it checks Loki's format), OTLP to a counting sink")
        notes.append("loki-logger-handler's streams carry extra keys Loki ignores: the sink ran lenient for it")
        big = max(r["max_push_mb"] for r in results["llh"])
        if big > 4.0:
            notes.append(f"loki-logger-handler sent a {big:.0f} MB push: a real Loki refuses > 4 MB with a 500 "
                         "(docs/loki-facts.md), so those lines would be lost there")  # fmt: skip
    for key in results:
        refused = sum(r["violations"] for r in results[key])
        if refused:
            first = next(r["first_violation"] for r in results[key] if r["first_violation"])
            notes.append(f"{key}: {refused} pushes refused by the sink: {first[:120]}")
    dropped = [r.get("dropped") for r in results["ours"] if r.get("dropped")]
    if dropped:
        notes.append(f"ours dropped lines: {dropped}")
    print_table(
        title,
        ["variant", "lines", "caller us/line", "emit lines/s", "delivered lines/s", "delivered", "pushes",
         "largest push MB", "caller vs reference"],
        rows,
        notes,
    )  # fmt: skip
    ours, noop = med("ours", "delivered_lps"), med("noop", "caller_us")
    checks: list[tuple[Any, ...]] = [
        ("caller us/line: ours / bare logger.info", med("ours", "caller_us"), noop, f"<= {CALLER_TARGET:.0f}x",
         med("ours", "caller_us") <= CALLER_TARGET * noop),
        ("delivered: ours / python-logging-loki", ours, med("pll", "delivered_lps"), ">= 100x",
         ours >= 100 * med("pll", "delivered_lps")),
        ("delivered: ours / OpenTelemetry SDK", ours, med("otel", "delivered_lps"), ">= 3x",
         ours >= 3 * med("otel", "delivered_lps")),
    ]  # fmt: skip
    if "llh" in results:
        checks.append(("delivered: ours / loki-logger-handler", ours, med("llh", "delivered_lps"), ">= 2x",
                       ours >= 2 * med("llh", "delivered_lps")))  # fmt: skip
    targets_table(f"{title}: targets", checks)
