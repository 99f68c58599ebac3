"""The shippers P1 compares, each run the same way: emit ``lines`` demo-like records from one
thread inside a bound request context, then wait until the receiver has them.

A :class:`Target` is where the lines go: the loopback sinks (a validating fake Loki for Loki
pushes, a counting one for OTLP) or a real Loki (``LOKI_URL``), which cannot be asked how many
lines arrived: there "delivered" is what the shipper saw acknowledged (2xx).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.sinkproc import OTLP_LOGS_PATH, SinkProcess

LABELS = {"service_name": "bench", "env": "bench"}
DELIVERY_TIMEOUT = 180.0
PUSH_PATH = "/loki/api/v1/push"


@dataclass
class Target:
    """Loki's base URL; ``sink`` counts and checks Loki pushes, ``otlp_sink`` counts OTLP exports
    (both None for a real Loki)."""

    url: str
    sink: SinkProcess | None = None
    otlp_sink: SinkProcess | None = None

    @property
    def real(self) -> bool:
        return self.sink is None


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str | bytes] = []  # formatted lines, or entries (EntryListHandler)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class EntryListHandler(ListHandler):
    """The floor and the one step every line shipped to Loki's JSON push needs besides it: its
    entry ``["<ns>", "<line>", {metadata}]`` (orjson), into a list: no lock, no thread, no I/O."""

    def emit(self, record: logging.LogRecord) -> None:
        import orjson

        from correlation import schema

        line = self.format(record)
        attributes = vars(record)  # CorrelationFilter stamped the hop on the record
        metadata = {
            schema.CORRELATION_ID: attributes[schema.CORRELATION_ID],
            schema.REQUEST_ID: attributes[schema.REQUEST_ID],
            schema.LEVEL: "info",
        }
        self.lines.append(orjson.dumps([str(int(record.created * 1e9)), line, metadata]))


class NoOpHandler(logging.Handler):
    """The reference for the caller's cost: a bare ``logger.info`` that goes nowhere."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


def _logger(handler: logging.Handler, *, json_lines: bool = True, correlation: bool = True) -> logging.Logger:
    from correlation.log.formatter import CorrelationFilter, JsonFormatter

    log = logging.getLogger("bench.p1")
    for old in list(log.handlers):
        log.removeHandler(old)
    log.propagate = False
    log.setLevel(logging.INFO)
    if correlation:
        handler.addFilter(CorrelationFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    return log


def _emit(log: logging.Logger, lines: int) -> float:
    """Emit ``lines`` demo-like records inside a request context; seconds taken."""
    from correlation import context

    token = context.bind(context.Hop.start(None, None))
    try:
        info = log.info
        started = time.perf_counter()
        for i in range(lines):
            info("order %s: charged %d cents to card ending %s (attempt %d)", f"ord-{i:08d}", 1299 + i % 500, "4242", 1)
        return time.perf_counter() - started
    finally:
        context.reset(token)


def _result(
    lines: int, emit_s: float, delivered: int, delivered_s: float, stats: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "lines": lines,
        "caller_us": emit_s / lines * 1e6,
        "emit_lps": lines / emit_s,
        "delivered": delivered,
        "delivered_lps": delivered / delivered_s if delivered_s > 0 and delivered else 0.0,
        "pushes": stats["pushes"] if stats else None,
        "max_push_mb": stats["max_push_bytes"] / 1e6 if stats else None,
        "violations": stats["violations"] if stats else 0,
        "first_violation": stats["first_violation"] if stats else "",
    }


def run_noop(target: Target, lines: int) -> dict[str, Any]:  # noqa: ARG001 - every variant's signature
    log = _logger(NoOpHandler(), json_lines=False, correlation=False)
    emit_s = _emit(log, lines)
    return _result(lines, emit_s, lines, emit_s, None)


def _into_list(handler: ListHandler, lines: int) -> dict[str, Any]:
    emit_s = _emit(_logger(handler), lines)
    assert len(handler.lines) == lines
    return _result(lines, emit_s, lines, emit_s, None)


def run_floor(target: Target, lines: int) -> dict[str, Any]:  # noqa: ARG001 - every variant's signature
    return _into_list(ListHandler(), lines)


def run_floor_entry(target: Target, lines: int) -> dict[str, Any]:  # noqa: ARG001 - every variant's signature
    return _into_list(EntryListHandler(), lines)


def run_ours(target: Target, lines: int) -> dict[str, Any]:
    from correlation.loki.handler import LokiHandler
    from correlation.settings import LokiSettings

    if target.sink:
        target.sink.reset()
    handler = LokiHandler(LokiSettings(url=target.url), labels=LABELS, registry=None)
    log = _logger(handler)
    started = time.perf_counter()
    emit_s = _emit(log, lines)
    handler.flush(timeout=DELIVERY_TIMEOUT)
    done = time.perf_counter()
    stats = target.sink.stats() if target.sink else None
    shipper = handler.stats.snapshot()
    log.removeHandler(handler)
    handler.close()
    delivered = stats["entries"] if stats else shipper.sent_lines
    result = _result(lines, emit_s, delivered, done - started, stats)
    result["dropped"] = dict(shipper.dropped)
    return result


def run_python_logging_loki(target: Target, lines: int) -> dict[str, Any]:
    import logging_loki

    if target.sink:
        target.sink.reset()
    handler = logging_loki.LokiHandler(url=target.url + PUSH_PATH, tags=dict(LABELS), version="1")
    failed = [0]
    handler.handleError = lambda record: failed.__setitem__(0, failed[0] + 1)
    log = _logger(handler)
    emit_s = _emit(log, lines)  # synchronous: a line is delivered (or failed) when its call returns
    stats = target.sink.stats() if target.sink else None
    log.removeHandler(handler)
    handler.close()
    handler.emitter.close()
    return _result(lines, emit_s, stats["entries"] if stats else lines - failed[0], emit_s, stats)


def run_loki_logger_handler(target: Target, lines: int) -> dict[str, Any]:
    from loki_logger_handler.loki_logger_handler import LokiLoggerHandler

    sink = target.sink
    assert sink is not None, "its deliveries can only be counted at a sink"
    sink.reset()
    sink.set_lenient(True)  # its streams carry extra keys (message_in_json_format, loki_metadata)
    try:
        handler = LokiLoggerHandler(
            url=target.url + PUSH_PATH,
            labels=dict(LABELS),
            enable_structured_loki_metadata=True,
            loki_metadata_keys=["correlation_id", "request_id"],
        )
        log = _logger(handler, json_lines=False)  # it formats records with its own LoggerFormatter
        started = time.perf_counter()
        emit_s = _emit(log, lines)
        handler.flush_event.set()  # what a flush() would do; its own timer is 10 s
        stats, done = sink.wait_entries(lines, DELIVERY_TIMEOUT)
        log.removeHandler(handler)
    finally:
        sink.set_lenient(False)
    return _result(lines, emit_s, stats["entries"], done - started, stats)


def run_opentelemetry(target: Target, lines: int) -> dict[str, Any]:
    """The OpenTelemetry logs SDK as its docs set it up for Python logging, tuned for throughput:
    a queue that holds the whole run (the default 2,048 drops lines a fast caller emits), large
    batches, gzip like ours, OTLP/HTTP into Loki's ``/otlp/v1/logs``."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
    from opentelemetry.sdk.resources import Resource

    sink = target.otlp_sink
    if sink:
        sink.reset()
    base = sink.url if sink else target.url
    exporter = OTLPLogExporter(endpoint=base + OTLP_LOGS_PATH, compression=Compression.Gzip, timeout=30)
    acknowledged = [0]
    export = exporter.export

    def counted(batch: Any) -> LogRecordExportResult:
        result = export(batch)
        if result == LogRecordExportResult.SUCCESS:
            acknowledged[0] += len(batch)
        return result

    # With the `bench` extra installed the SDK's types make this a method assignment; without it
    # (make test) the SDK is untyped and the ignore is unused: both are fine.
    exporter.export = counted  # type: ignore[method-assign, unused-ignore]
    provider = LoggerProvider(resource=Resource.create({"service.name": LABELS["service_name"]}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter, max_queue_size=max(lines, 8192), max_export_batch_size=4096, schedule_delay_millis=1000
        )
    )
    log = _logger(LoggingHandler(logger_provider=provider), json_lines=False)
    started = time.perf_counter()
    emit_s = _emit(log, lines)
    provider.force_flush(int(DELIVERY_TIMEOUT * 1000))
    done = time.perf_counter()
    stats = sink.stats() if sink else None
    provider.shutdown()
    return _result(lines, emit_s, stats["entries"] if stats else acknowledged[0], done - started, stats)


Runner = Callable[[Target, int], dict[str, Any]]
#: key -> (label, runner), in the order they run.
VARIANTS: dict[str, tuple[str, Runner]] = {
    "noop": ("reference: bare logger.info -> no-op handler", run_noop),
    "floor": ("floor: + CorrelationFilter + JsonFormatter -> list", run_floor),
    "floor_entry": ("floor + the Loki entry (orjson) -> list", run_floor_entry),
    "ours": ("ours: correlation LokiHandler", run_ours),
    "pll": ("python-logging-loki 0.3.1", run_python_logging_loki),
    "llh": ("loki-logger-handler 1.1.2", run_loki_logger_handler),
    "otel": ("OpenTelemetry logs SDK 1.45.2 (OTLP/HTTP)", run_opentelemetry),
}
