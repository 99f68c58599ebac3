"""P3 stalled Loki: does a Loki that accepts pushes and never answers slow the requests down?

The real demo chain (gateway -> orders -> payments/inventory, gunicorn, ``demo.run_local``) is
started twice: shipping to a healthy sink, and to a sink that stalls every push (accepts the
connection, reads the body, never answers within the run). Both run at once; ``POST /checkout``
is driven at a fixed concurrency for BENCH_P3_SECONDS (10) per round, rounds interleaved.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections import defaultdict
from typing import Any

from bench.load import LoadResult, have_wrk, run_load
from bench.sinkproc import SinkProcess
from bench.table import median, print_table, targets_table
from fakes import free_port

NAME = "p3"
TITLE = "P3 stalled Loki"
CONCURRENCY = 8


def _shipper_state(urls: dict[str, str]) -> dict[str, Any]:
    """Sum the loki_shipper_* series over the chain's services (from their /metrics)."""
    totals: defaultdict[str, float] = defaultdict(float)
    for url in urls.values():
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            m = re.match(r"(loki_shipper_\w+?)(?:_total)?(\{[^}]*\})? ([\d.e+-]+)$", line)
            if not m or line.startswith("#"):
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            reason = re.search(r'reason="([^"]+)"', labels)
            totals[name + (f"[{reason.group(1)}]" if reason else "")] += value
    return dict(totals)


def run() -> None:
    from demo.run_local import start_chain
    from demo.services import SERVICES

    seconds = float(os.environ.get("BENCH_P3_SECONDS", "10"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    results: dict[str, list[LoadResult]] = {"healthy": [], "stalled": []}
    state: dict[str, Any] = {}
    with SinkProcess() as healthy, SinkProcess(default="stall") as stalled:
        sinks = {"healthy": healthy, "stalled": stalled}
        chains = {}
        try:
            for name, sink in sinks.items():
                env = {"LOKI_URL": sink.url, "DEPLOY_ENV": "bench"}
                chains[name] = start_chain({s: free_port() for s in SERVICES}, env, stdout=subprocess.DEVNULL)
            urls = {name: chain.urls["gateway"] + "/checkout" for name, chain in chains.items()}
            for url in urls.values():  # warm-up
                run_load(url, connections=CONCURRENCY, seconds=2, method="POST", body="{}")
            for r in range(rounds):
                order = ["healthy", "stalled"] if r % 2 == 0 else ["stalled", "healthy"]
                for name in order:
                    results[name].append(
                        run_load(urls[name], connections=CONCURRENCY, seconds=seconds, method="POST", body="{}")
                    )
            for name, chain in chains.items():
                state[name] = _shipper_state(chain.urls)
        finally:
            codes = {name: chain.stop() for name, chain in chains.items()}
        sink_stats = {name: sink.stats() for name, sink in sinks.items()}

    def med(name: str, field: str) -> float:
        return median(getattr(r, field) for r in results[name])

    rows = []
    for name, rs in results.items():
        s = state.get(name, {})
        rows.append(
            [
                name,
                med(name, "rps"),
                med(name, "p50_ms"),
                med(name, "p99_ms"),
                " / ".join(f"{r.p99_ms:.0f}" for r in rs),
                sum(r.errors for r in rs),
                int(s.get("loki_shipper_sent_lines", 0)),
                int(s.get("loki_shipper_buffered_lines", 0)),
                int(sum(v for k, v in s.items() if k.startswith("loki_shipper_dropped_lines"))),
            ]
        )
    notes = [
        f"median of {rounds} interleaved rounds of {seconds:g} s, POST /checkout at {CONCURRENCY} connections "
        f"({results['healthy'][0].tool}{'' if have_wrk() else ', Python fallback'})",
        "sent/buffered/dropped: loki_shipper_* summed over the 4 services' /metrics after the last round",
        f"sink pushes answered: healthy {sink_stats['healthy']['pushes']:,}, "
        f"stalled {sink_stats['stalled']['pushes']:,} "
        f"(requests received by the stalled sink: {sink_stats['stalled']['requests']:,})",
        f"exit codes at stop: {codes}",
    ]
    retries = {
        k.replace("loki_shipper_", ""): int(v)
        for k, v in state.get("stalled", {}).items()
        if ("retries" in k or "dropped" in k) and v
    }
    if retries:
        notes.append(f"stalled chain shipper counters (non-zero): {retries}")
    print_table(
        TITLE + " (demo chain, POST /checkout)",
        [
            "Loki",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99 per round",
            "errors",
            "sent lines",
            "buffered lines",
            "dropped lines",
        ],
        rows,
        notes,
    )
    p99_s, p99_h = med("stalled", "p99_ms"), med("healthy", "p99_ms")
    errors = sum(r.errors for rs in results.values() for r in rs)
    targets_table(
        f"{TITLE}: targets",
        [
            ("p99 ms stalled / healthy", p99_s, p99_h, "<= 1.10x", p99_s <= 1.10 * p99_h),
            ("errors (both chains, all rounds)", errors, None, "== 0", errors == 0),
        ],
    )
