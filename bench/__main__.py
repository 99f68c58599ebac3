"""``python -m bench [NAME ...]``: the default set (about 8 minutes), ``all`` (the default set and
every framework, worker and scale benchmark, well over half an hour), or those named."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback

#: name -> module, in the order they run.
BENCHMARKS = {
    "p1": "bench.p1_shipping",
    "p2": "bench.p2_request",
    "p2asgi": "bench.p2_asgi",
    "p2w": "bench.p2_workers",
    "p2django": "bench.p2_django",
    "p3": "bench.p3_stalled",
    "memory": "bench.memory",
    "trail": "bench.trail_lookup",
    "p5scale": "bench.p5_scale",
    "attribution": "bench.attribution",
    "attribution-asgi": "bench.attribution_asgi",
    "workers": "bench.workers",
    "frontends": "bench.frontends",
}
#: What ``python -m bench`` runs when no name is given: the shipper, the Flask request path, a
#: stalled Loki, memory, the trail lookup and the workers' scrape (about 8 minutes on 2 cores).
DEFAULT = ["p1", "p2", "p3", "memory", "trail", "workers"]
#: ``python -m bench all``: the default set, then the other frameworks, several workers and one
#: request at scale (p5scale needs LOKI_BIN); the attributions and frontends only by name.
ALL = [*DEFAULT, "p2asgi", "p2w", "p2django", "p5scale"]


def main(argv: list[str]) -> int:
    names = ALL if argv == ["all"] else argv or DEFAULT
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m bench [all | {' '.join(BENCHMARKS)}]", file=sys.stderr)
        return 2 if unknown else 0
    print(
        f"bench: {', '.join(names)} | Python {platform.python_version()} | {os.cpu_count()} CPUs | "
        f"load {os.getloadavg()[0]:.2f} | {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
        flush=True,
    )
    failed = []
    for name in names:
        started = time.monotonic()
        try:
            importlib.import_module(BENCHMARKS[name]).run()
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"[{name} took {time.monotonic() - started:.0f} s]\n", flush=True)
    if failed:
        print(f"bench: failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
