"""Load generator for the demo: steady ``POST /checkout`` traffic to the gateway, and optionally
error spikes that make the alerts fire.

    python -m demo.loadgen --rate 5                     # steady traffic until stopped
    python -m demo.loadgen --scenario spike             # plus: payments fails 50% now and then
    python -m demo.loadgen --duration 60 --rate 20      # bounded run

Scenario ``spike``: after ``--spike-after`` seconds of calm, ``POST /admin/faults
{"error_rate": R}`` to the fault target (default payments), hold it ``--spike-seconds``, reset it to
0 and start over; the target is reset to 0 at start and on exit. Every flag has an environment
variable (``LOADGEN_*``, see ``--help``) so the compose file can set them.

Requests are paced at ``--rate`` per second by a small worker pool; when every worker is busy
(a slow gateway) a tick is skipped and counted rather than queued, so the load never piles up.
A progress line every ``--progress-every`` seconds shows counts and the last failed request's
correlation ID (from the response header), ready for ``trail <id>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

import requests

from demo.services import DEFAULT_PORTS
from demo.spike import FaultSwitch, spike_active

SCENARIOS = ("steady", "spike")
CHECKOUT_BODY = {"items": [{"sku": "demo-widget", "quantity": 1}]}
#: A fault target that does not answer is retried this often, not at every tick.


@dataclass(frozen=True)
class LoadSettings:
    gateway_url: str = "http://localhost:8080"
    rate: float = 5.0
    duration: float = 0.0  # 0: until stopped
    progress_every: float = 10.0
    scenario: str = "steady"
    fault_service: str = "payments"
    fault_url: str = "http://localhost:8082"
    spike_after: float = 120.0
    spike_seconds: float = 240.0
    spike_error_rate: float = 0.5
    timeout: float = 5.0
    workers: int = 8
    correlation_header: str = "X-Correlation-ID"
    #: The fault target's FAULT_TOKEN (environment only, never a flag: flags show in `ps`).
    fault_token: str = field(default="", repr=False)
    fault_token_file: str = ""


@dataclass
class Stats:
    """Counters shared by the workers; read them with ``snapshot``."""

    sent: int = 0
    ok: int = 0
    server_errors: int = 0
    client_errors: int = 0
    failed: int = 0  # no answer: connection refused, timeout
    skipped: int = 0  # every worker busy at a tick
    last_failed_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, correlation_id: str = "") -> None:
        with self._lock:
            self.sent += 1
            if status is None:
                self.failed += 1
            elif status >= 500:
                self.server_errors += 1
            elif status >= 400:
                self.client_errors += 1
            else:
                self.ok += 1
            if (status is None or status >= 500) and correlation_id:
                self.last_failed_id = correlation_id

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def snapshot(self) -> dict[str, int | str]:
        with self._lock:
            return {
                k: getattr(self, k)
                for k in ("sent", "ok", "server_errors", "client_errors", "failed", "skipped", "last_failed_id")
            }


def _env(env: Mapping[str, str], name: str, default: object) -> str:
    return env.get(f"LOADGEN_{name}", "").strip() or str(default)


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> LoadSettings:
    d = LoadSettings()
    p = argparse.ArgumentParser(
        prog="python -m demo.loadgen",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--gateway-url", default=_env(env, "GATEWAY_URL", d.gateway_url), help="env LOADGEN_GATEWAY_URL")
    p.add_argument("--rate", type=float, default=_env(env, "RATE", d.rate), help="checkouts per second (LOADGEN_RATE)")
    p.add_argument(
        "--duration",
        type=float,
        default=_env(env, "DURATION", d.duration),
        help="seconds, 0 = until stopped (LOADGEN_DURATION)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=_env(env, "PROGRESS_SECONDS", d.progress_every),
        help="seconds between progress lines (LOADGEN_PROGRESS_SECONDS)",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default=_env(env, "SCENARIO", d.scenario), help="LOADGEN_SCENARIO")
    p.add_argument(
        "--fault-service",
        choices=sorted(DEFAULT_PORTS),
        default=_env(env, "FAULT_SERVICE", d.fault_service),
        help="service the spike breaks (LOADGEN_FAULT_SERVICE)",
    )
    p.add_argument(
        "--fault-url",
        default=env.get("LOADGEN_FAULT_URL", "").strip() or None,
        help="base URL of that service (LOADGEN_FAULT_URL; default http://localhost:<its port>)",
    )
    p.add_argument(
        "--spike-after",
        type=float,
        default=_env(env, "SPIKE_AFTER", d.spike_after),
        help="calm seconds before each spike (LOADGEN_SPIKE_AFTER)",
    )
    p.add_argument(
        "--spike-seconds",
        type=float,
        default=_env(env, "SPIKE_SECONDS", d.spike_seconds),
        help="length of each spike (LOADGEN_SPIKE_SECONDS)",
    )
    p.add_argument(
        "--spike-error-rate",
        type=float,
        default=_env(env, "SPIKE_ERROR_RATE", d.spike_error_rate),
        help="error_rate during a spike (LOADGEN_SPIKE_ERROR_RATE)",
    )
    p.add_argument(
        "--timeout", type=float, default=_env(env, "TIMEOUT", d.timeout), help="per request, seconds (LOADGEN_TIMEOUT)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_env(env, "WORKERS", d.workers),
        help="requests in flight at most (LOADGEN_WORKERS)",
    )
    a = p.parse_args(argv)
    if a.rate <= 0 or a.workers < 1 or a.duration < 0 or a.progress_every <= 0 or a.timeout <= 0:
        p.error("--rate, --progress-every and --timeout must be > 0, --workers >= 1, --duration >= 0")
    if not 0.0 <= a.spike_error_rate <= 1.0 or a.spike_after < 0 or a.spike_seconds <= 0:
        p.error("--spike-error-rate must be within 0..1, --spike-after >= 0, --spike-seconds > 0")
    return LoadSettings(
        gateway_url=a.gateway_url.rstrip("/"),
        rate=a.rate,
        duration=a.duration,
        progress_every=a.progress_every,
        scenario=a.scenario,
        fault_service=a.fault_service,
        fault_url=a.fault_url or f"http://localhost:{DEFAULT_PORTS[a.fault_service]}",
        spike_after=a.spike_after,
        spike_seconds=a.spike_seconds,
        spike_error_rate=a.spike_error_rate,
        timeout=a.timeout,
        workers=a.workers,
        correlation_header=env.get("CORRELATION_HEADER", "").strip() or d.correlation_header,
        fault_token=env.get("LOADGEN_FAULT_TOKEN", "").strip(),
        fault_token_file=env.get("LOADGEN_FAULT_TOKEN_FILE", "").strip(),
    )


def run(settings: LoadSettings, out: TextIO = sys.stdout, stop: threading.Event | None = None) -> Stats:
    """Send traffic until ``settings.duration`` passes or ``stop`` is set; returns the counts."""
    stop = stop or threading.Event()
    stats = Stats()
    local = threading.local()  # one Session (connection pool) per worker thread
    slots = threading.BoundedSemaphore(settings.workers)
    checkout_url = settings.gateway_url + "/checkout"

    def checkout() -> None:
        try:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            resp = session.post(checkout_url, json=CHECKOUT_BODY, timeout=settings.timeout)
            stats.record(resp.status_code, resp.headers.get(settings.correlation_header, ""))
        except requests.RequestException:
            stats.record(None)
        finally:
            slots.release()

    faults = (
        FaultSwitch(
            settings.fault_url,
            settings.fault_service,
            settings.timeout,
            out,
            token=settings.fault_token,
            token_file=settings.fault_token_file,
        )
        if settings.scenario == "spike"
        else None
    )
    start = time.monotonic()
    deadline = start + settings.duration if settings.duration else float("inf")
    interval = 1.0 / settings.rate
    next_send, next_progress, ticks = start, start + settings.progress_every, 0
    print(
        f"loadgen: {settings.rate:g}/s to {checkout_url}, scenario {settings.scenario}"
        + (f", duration {settings.duration:g}s" if settings.duration else ""),
        file=out,
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="loadgen") as pool:
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if faults is not None:
                on = spike_active(now - start, settings.spike_after, settings.spike_seconds)
                faults.set(settings.spike_error_rate if on else 0.0)
            if now >= next_progress:
                _progress(out, now - start, stats, settings, faults)
                next_progress += settings.progress_every
            if now >= next_send:
                if slots.acquire(blocking=False):
                    pool.submit(checkout)
                else:
                    stats.skip()
                ticks += 1
                next_send = start + ticks * interval
                continue
            # Pacing, not synchronisation: wake at the next send, or at once when stopped.
            stop.wait(min(next_send, next_progress, deadline) - now)
    # The pool has drained (each request is bounded by --timeout): leave the target healthy.
    if faults is not None:
        faults.set(0.0, force=True)
    _progress(out, time.monotonic() - start, stats, settings, faults, final=True)
    return stats


def _progress(
    out: TextIO, elapsed: float, stats: Stats, settings: LoadSettings, faults: FaultSwitch | None, final: bool = False
) -> None:
    s = stats.snapshot()
    line = (
        f"loadgen {'done' if final else 'at'} {elapsed:.1f}s: sent={s['sent']} ok={s['ok']} "
        f"5xx={s['server_errors']} 4xx={s['client_errors']} no_answer={s['failed']} skipped={s['skipped']} "
        f"rate={int(s['sent']) / elapsed if elapsed > 0 else 0.0:.1f}/s"
    )
    if faults is not None:
        line += f" {settings.fault_service}.error_rate={faults.applied}"
    if s["last_failed_id"]:
        line += f" last_failed={s['last_failed_id']}"
    print(line, file=out, flush=True)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    stop = threading.Event()
    # SIGTERM (docker stop) and Ctrl-C end the run cleanly: faults reset, summary printed.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(settings, stop=stop)


if __name__ == "__main__":
    main()
