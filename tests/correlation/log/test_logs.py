"""Log records: the filter copies the hop, the formatter writes one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from correlation import context
from correlation.log.formatter import CorrelationFilter, JsonFormatter
from correlation.log.stdout import StdoutHandler
from correlation.loki.handler import LokiHandler
from correlation.settings import ConfigError, LokiSettings, Settings
from correlation.setup import setup_logging

pytestmark = pytest.mark.unit


def _format(record: logging.LogRecord, service: str = "svc") -> dict:
    context.set_service(service)
    CorrelationFilter().filter(record)
    return json.loads(JsonFormatter().format(record))


def _record(msg: str = "hello %s", args: tuple = ("there",), **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": "demo.x", "levelno": logging.INFO, "levelname": "INFO", "msg": msg, "args": args}
    )
    record.__dict__.update(extra)
    return record


def test_fields_inside_a_request() -> None:
    hop = context.Hop.start(parent_request_id="parent01")
    with context.bound(hop):
        line = _format(_record())
    assert line["message"] == "hello there" and line["level"] == "INFO" and line["logger"] == "demo.x"
    assert line["service"] == "svc"
    assert (line["correlation_id"], line["request_id"], line["parent_request_id"]) == (
        hop.correlation_id,
        hop.request_id,
        "parent01",
    )
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-11-25T14:25:20.123456Z")


def test_fields_outside_a_request_are_null() -> None:
    line = _format(_record())
    assert line["correlation_id"] is None and line["request_id"] is None


def test_extras_are_written_and_values_passed_explicitly_win() -> None:
    with context.bound():
        line = _format(_record(status=502, duration_ms=1.5, correlation_id="given", service="other"))
    assert line["status"] == 502 and line["duration_ms"] == 1.5
    assert line["correlation_id"] == "given" and line["service"] == "other"


def test_exception_and_unserialisable_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record(exc_info=sys.exc_info(), thing=object())
    line = _format(record)
    assert "ValueError: boom" in line["exception"] and "Traceback" in line["exception"]
    assert line["thing"].startswith("<object object")


def test_each_record_is_one_line_even_with_newlines() -> None:
    text = JsonFormatter().format(_record("a\nb\r\nc", ()))
    assert "\n" not in text and json.loads(text)["message"] == "a\nb\r\nc"


def test_setup_logging_installs_stdout_and_loki_once() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    stream = io.StringIO()
    settings = Settings(service="svc", loki=LokiSettings(url="http://127.0.0.1:9"))
    try:
        setup_logging(settings, stream=stream)
        handlers = setup_logging(settings, stream=stream)  # again: replaces, does not add
        ours = [h for h in root.handlers if h not in before]
        assert ours == handlers and len(handlers) == 2
        assert isinstance(handlers[1], LokiHandler) and handlers[1].labels == {"service_name": "svc", "env": "local"}
        with context.bound() as hop:
            logging.getLogger("t").warning("to stdout")
        handlers[0].flush()
        assert json.loads(stream.getvalue().splitlines()[-1])["correlation_id"] == hop.correlation_id
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            if isinstance(handler, LokiHandler):
                handler.buffer.drain()  # nothing listens at that URL: do not wait to flush
            handler.close()


def test_no_loki_handler_without_url() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        handlers = setup_logging(Settings(service="svc"), stream=io.StringIO())
        assert [type(h) for h in handlers] == [StdoutHandler]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def test_stdout_lines_are_written_in_batches_and_soon() -> None:
    class Stream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Stream.writes += 1
            return super().write(text)

    stream = Stream()
    handler = StdoutHandler(stream, flush_interval=0.05)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.stdout")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for n in range(200):
            logger.warning("line %d", n)
        assert Stream.writes < 20, "not one write per line"
        deadline = time.monotonic() + 5
        while len(stream.getvalue().splitlines()) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
        assert lines == [f"line {n}" for n in range(200)], "the timer writes the tail without a next line"
        logger.warning("last")
        handler.close()
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "last", "close writes what waits"
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_record_is_formatted_once_for_all_handlers() -> None:
    formatter = JsonFormatter()
    record = _record()
    CorrelationFilter().filter(record)
    first = formatter.format(record)
    record.msg = "changed"
    assert JsonFormatter().format(record) is first


def test_loki_only_when_stdout_is_off() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    settings = Settings.from_env({"LOKI_URL": "http://127.0.0.1:9", "LOG_STDOUT": "false"}, service="svc")
    try:
        handlers = setup_logging(settings)
        assert [type(h) for h in handlers] == [LokiHandler]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            if isinstance(handler, LokiHandler):
                handler.buffer.drain()
            handler.close()


def test_handlers_without_the_filter_still_carry_the_context() -> None:
    context.set_service("svc-nofilter")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())  # no CorrelationFilter attached
    log = logging.getLogger("test.nofilter")
    log.addHandler(handler)
    log.propagate = False
    try:
        with context.bound() as hop:
            log.warning("inside")
    finally:
        log.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert (line["correlation_id"], line["service"]) == (hop.correlation_id, "svc-nofilter")


def test_dictconfig_after_setup_logging_says_the_loki_handler_is_gone(capfd: pytest.CaptureFixture[str]) -> None:
    import logging.config

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        setup_logging(
            Settings(service="svc", loki=LokiSettings(url="http://127.0.0.1:9", flush_timeout_seconds=0.2)),
            stream=io.StringIO(),
        )
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        assert "closed by a logging reconfiguration" in capfd.readouterr().err
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.handlers[:] = before
        root.setLevel(level)


def test_setup_logging_keeps_handlers_a_dictconfig_attached() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    configured = StdoutHandler(io.StringIO())
    root.addHandler(configured)
    try:
        handlers = setup_logging(Settings(service="svc"), stream=io.StringIO())
        assert handlers == [] and configured in root.handlers, "no second stdout handler"
    finally:
        root.removeHandler(configured)
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"url": "http://loki:3100", "batch_max_bytes": -1}, "batch_max_bytes="),
        ({"url": "http://loki:3100", "bach_max_bytes": 10}, "unknown Loki option"),
        ({"url": "ftp://loki"}, "url="),
    ],
)
def test_plain_handler_options_are_checked_like_the_environment(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LokiHandler(registry=None, **options)


def test_plain_handler_options_build_the_settings() -> None:
    handler = LokiHandler(
        url="http://loki:3100",
        batch_max_bytes=2048,
        tls_verify=False,
        registry=None,
        labels={"service_name": "a", "env": "b"},
    )
    try:
        assert (handler.settings.url, handler.settings.batch_max_bytes, handler.settings.tls_verify) == (
            "http://loki:3100",
            2048,
            False,
        )
    finally:
        handler.close()
