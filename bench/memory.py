"""Memory: with Loki down, does the shipper stay within LOKI_BUFFER_MAX_BYTES?

A child process ships BENCH_MEMORY_LINES (1,000,000) demo-like lines (a new request context
every 5 lines) to a closed loopback port with LOKI_BUFFER_MAX_BYTES = 32 MiB, then reports its
peak RSS (VmHWM) and the shipper's counters. A baseline child imports the same modules and does
nothing. Pass: peak <= baseline + buffer bound + 16 MiB, and buffer_full accounts for every line
that is neither buffered nor in the one batch the sender is retrying.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from bench.table import mark, print_table, targets_table

NAME = "memory"
TITLE = "Memory with Loki down"
MiB = 1024 * 1024
SLACK_MIB = 16


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB


def _child(mode: str, lines: int, bound: int) -> dict[str, Any]:
    import logging
    import socket
    import time

    from correlation import context
    from correlation.loki.handler import LokiHandler
    from correlation.settings import LokiSettings

    result: dict[str, Any] = {"mode": mode}
    if mode == "idle":
        result["hwm_kib"] = _status_kib("VmHWM")
        return result

    # A port nobody listens on, so every push is refused. Not fakes.closed_port_url: the
    # measured child imports nothing but the library, or the baseline would not compare.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = LokiSettings.from_env({"LOKI_URL": f"http://127.0.0.1:{port}", "LOKI_BUFFER_MAX_BYTES": str(bound)})
    handler = LokiHandler(settings, labels={"service_name": "bench", "env": "bench"})
    log = logging.getLogger("bench.memory")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    for i in range(0, lines, 5):
        token = context.bind(context.Hop.start(None, None))
        for j in range(i, min(i + 5, lines)):
            log.info(
                "order %s: charged %d cents to card ending %s (attempt %d)", f"ord-{j:08d}", 1299 + j % 500, "4242", 1
            )
        context.reset(token)
    result["emit_s"] = time.perf_counter() - started
    time.sleep(0.5)  # let the sender take its batch
    stats = handler.stats.snapshot()
    buffered_lines, buffered_bytes = handler.buffered()
    unfinished = getattr(handler.buffer, "_unfinished", None)
    result.update(
        hwm_kib=_status_kib("VmHWM"),
        rss_kib=_status_kib("VmRSS"),
        rss_before_kib=rss_before,
        lines=lines,
        sent=stats.sent_lines,
        dropped=dict(stats.dropped),
        retries=dict(stats.retries),
        buffered_lines=buffered_lines,
        buffered_bytes=buffered_bytes,
        in_flight=None if unfinished is None else unfinished - buffered_lines,
    )
    return result


def _run_child(mode: str, lines: int, bound: int) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", mode, str(lines), str(bound)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> None:
    lines = int(os.environ.get("BENCH_MEMORY_LINES", "1000000"))
    bound = int(os.environ.get("BENCH_MEMORY_BUFFER", str(32 * MiB)))
    idle = _run_child("idle", lines, bound)
    ship = _run_child("ship", lines, bound)
    base_mib, peak_mib = idle["hwm_kib"] / 1024, ship["hwm_kib"] / 1024
    limit_mib = base_mib + bound / MiB + SLACK_MIB
    growth = (ship["rss_kib"] - ship["rss_before_kib"]) * 1024
    held = ship["buffered_lines"] + (ship["in_flight"] or 0)
    per_line = growth / held if held else float("nan")
    counted = ship["buffered_bytes"] / ship["buffered_lines"] if ship["buffered_lines"] else float("nan")
    print_table(
        f"{TITLE} ({lines:,} lines, LOKI_BUFFER_MAX_BYTES={bound // MiB} MiB, port closed)",
        ["process", "peak RSS MiB", "vs baseline MiB", "limit MiB", "result"],
        [
            ["baseline: imports only", base_mib, "-", "-", "-"],
            ["shipping, Loki down", peak_mib, peak_mib - base_mib, limit_mib, mark(peak_mib <= limit_mib)],
        ],
        [
            f"limit = baseline + buffer bound + {SLACK_MIB} MiB; emit took {ship['emit_s']:.1f} s "
            f"({ship['emit_s'] / lines * 1e6:.1f} us/line)",
            f"RSS grew {growth / MiB:.1f} MiB for {held:,} lines held: {per_line:,.0f} bytes per line in memory, "
            f"{counted:,.0f} bytes per line counted against the bound",
        ],
    )

    dropped = ship["dropped"]
    other_drops = sum(v for k, v in dropped.items() if k != "buffer_full")
    full = dropped.get("buffer_full", 0)
    in_flight = ship["in_flight"]
    accounted = full + ship["buffered_lines"] + (in_flight or 0) + ship["sent"] + other_drops
    rows = [["emitted", lines], ["dropped: buffer_full", full]]
    rows += [[f"dropped: {k}", v] for k, v in sorted(dropped.items()) if k != "buffer_full" and v]
    rows += [
        ["buffered (waiting)", ship["buffered_lines"]],
        ["in flight (batch being retried)", in_flight],
        ["sent", ship["sent"]],
        ["accounted", accounted],
    ]
    print_table(
        f"{TITLE}: where the lines went (handler.stats)", ["lines", "count"], rows, [f"retries: {ship['retries']}"]
    )
    targets_table(
        f"{TITLE}: targets",
        [
            ("peak RSS MiB", peak_mib, base_mib, f"<= base + {bound // MiB} + {SLACK_MIB} MiB", peak_mib <= limit_mib),
            ("lines accounted for", accounted, lines, "== emitted", accounted == lines and other_drops == 0),
        ],
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))), flush=True)
        os._exit(0)  # no close(): it would wait the flush timeout for a Loki that is down
    sys.exit("usage: python -m bench memory")
