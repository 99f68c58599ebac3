"""Front ends: the per-line cost of a structlog and a loguru line through the library's handlers,
beside a plain ``logging`` line, in one run.

Each variant writes ``BENCH_FRONTEND_LINES`` lines (an order ID and an amount as fields) inside a
bound hop through the handlers ``setup_logging`` installs: stdout JSON (into /dev/null) and Loki
(the buffer only: a closed loopback port, the buffer emptied after each round, so the sender's
retries cost nothing measured). Variants are interleaved over ``BENCH_ROUNDS`` rounds; the table
shows the median microseconds per line and the ratio to ``logging``. No target: the figures say
what a structlog or loguru line costs on top, for a team choosing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from bench.table import fmt_ratio, median, print_table

NAME = "frontends"
TITLE = "Per-line cost: logging, structlog and loguru through the library's handlers"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _variants() -> dict[str, Callable[[int], None]]:
    import structlog
    from loguru import logger

    from correlation.integrations.loguru import LoggingSink, add_correlation
    from correlation.integrations.structlog import configure_structlog

    configure_structlog()
    structlog.configure(cache_logger_on_first_use=True)
    structured = structlog.get_logger("bench.frontends.structlog")
    logger.remove()
    logger.configure(patcher=add_correlation)
    logger.add(LoggingSink(), level="INFO")
    plain = logging.getLogger("bench.frontends.logging")

    def with_logging(lines: int) -> None:
        for n in range(lines):
            plain.info("order placed", extra={"order_id": n, "total": 9.5})

    def with_structlog(lines: int) -> None:
        for n in range(lines):
            structured.info("order placed", order_id=n, total=9.5)

    def with_loguru(lines: int) -> None:
        for n in range(lines):
            logger.bind(order_id=n, total=9.5).info("order placed")

    return {"logging (extra=)": with_logging, "structlog": with_structlog, "loguru": with_loguru}


def run() -> None:
    from correlation import context
    from correlation.loki.handler import LokiHandler
    from correlation.settings import LokiSettings, Settings
    from correlation.setup import setup_logging

    lines = int(os.environ.get("BENCH_FRONTEND_LINES", "20000"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    loki = LokiSettings(url=f"http://127.0.0.1:{_closed_port()}", backoff_min_seconds=30.0)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end, after the handlers
    root = logging.getLogger()
    before = list(root.handlers)
    handlers = setup_logging(Settings(service="bench", env="bench", loki=loki), stream=devnull)
    try:
        variants = _variants()
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, write in variants.items():
                with context.bound():
                    started = time.perf_counter()
                    write(lines)
                    timings[name].append((time.perf_counter() - started) / lines * 1e6)
                for handler in handlers:
                    if isinstance(handler, LokiHandler):
                        handler.buffer.drain()  # Loki is down on purpose: only the emit is measured
                    else:
                        handler.flush()
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler._installed_by_correlation = False  # type: ignore[attr-defined]  # noqa: SLF001 - ours, not a reconfiguration
            if isinstance(handler, LokiHandler):
                handler.buffer.drain()
                handler.close_within(0.5)
            else:
                handler.close()
        devnull.close()
    base = median(timings["logging (extra=)"])
    rows = [[name, median(values), min(values), fmt_ratio(median(values) / base)] for name, values in timings.items()]
    print_table(
        f"{TITLE} ({lines:,} lines x {rounds} rounds)",
        ["front end", "median us/line", "best us/line", "vs logging"],
        rows,
        ["stdout JSON into /dev/null and the Loki handler's buffer (Loki down: nothing sent while measured)"],
    )
