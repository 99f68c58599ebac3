"""loguru messages become the library's lines: the patcher binds the caller's hop, the sink hands
each message to the handlers (stdout JSON, Loki with the correlation ID in structured metadata)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from correlation import context, schema
from correlation.integrations.loguru import LoggingSink, add_correlation
from fakes import FakeLoki
from tests.support.frontends import SERVICE, doc_example, flask_app, library_logging, unique_keys
from tests.support.shipper import make_handler

pytestmark = pytest.mark.unit


def _no_patcher(record: Any) -> None:
    """What the tests leave as loguru's global patcher: loguru can replace one, not unset it."""


@pytest.fixture(autouse=True)
def loguru_sinks() -> Iterator[None]:
    logger.remove()  # loguru's stderr sink and any a test left
    yield
    logger.remove()
    logger.configure(patcher=_no_patcher)


def test_a_loguru_line_reaches_loki_and_stdout_as_the_librarys_own(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        logger.configure(patcher=add_correlation)
        logger.add(LoggingSink(), level="DEBUG")
        hop = context.Hop.start(parent_request_id="feedfacefeedface")
        with context.bound(hop):
            # `name` is a LogRecord attribute, `message` a key the line takes from the record.
            logger.bind(order_id=42, name="bob", message="raw").info("order {} placed", "A-1", total=9.5)
            logger.success("paid")
        entry = installed.loki_entry("order A-1 placed")
        stdout = installed.stdout_line("order A-1 placed")
        success = installed.loki_entry("paid")

    assert entry.metadata == {"correlation_id": hop.correlation_id, "request_id": hop.request_id, "level": "info"}
    assert entry.line == stdout, "stdout and Loki carry the same line"
    line = unique_keys(entry.line)
    assert (line[schema.LEVEL], line[schema.LOGGER], line[schema.SERVICE]) == ("INFO", __name__, SERVICE)
    assert (line[schema.CORRELATION_ID], line[schema.REQUEST_ID], line[schema.PARENT_REQUEST_ID]) == (
        hop.correlation_id,
        hop.request_id,
        "feedfacefeedface",
    )
    fields = {key: value for key, value in line.items() if key not in schema.LINE_KEYS}
    assert fields == {"order_id": 42, "name": "bob", "message_": "raw", "total": 9.5}
    assert success.json[schema.LEVEL] == "SUCCESS" and success.metadata["level"] == "success"


def test_the_exception_and_the_call_site_are_carried(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        logger.add(LoggingSink())  # no patcher: the sink runs in the caller's thread, in its hop
        with context.bound() as hop:
            try:
                raise ZeroDivisionError("no stock")
            except ZeroDivisionError:
                logger.exception("charge failed")
        entry = installed.loki_entry("charge failed")

    line = unique_keys(entry.line)
    assert line[schema.LEVEL] == "ERROR" and entry.metadata["correlation_id"] == hop.correlation_id
    assert "Traceback" in line[schema.EXCEPTION] and "ZeroDivisionError: no stock" in line[schema.EXCEPTION]
    assert 'raise ZeroDivisionError("no stock")' in line[schema.EXCEPTION], "with the frames"


def test_outside_a_hop_the_fields_are_null_as_for_logging_lines(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        logger.configure(patcher=add_correlation)
        logger.add(LoggingSink())
        logger.info("nightly run")
        logger.debug("below the root's level")  # setup_logging's INFO applies to loguru's lines too
        entry = installed.loki_entry("nightly run")
        assert not [line for line in installed.stdout_lines() if "below the root" in line]

    assert entry.metadata == {"level": "info"}, "no correlation_id metadata outside a request"
    assert entry.json[schema.CORRELATION_ID] is None and entry.json[schema.SERVICE] == SERVICE


def test_with_enqueue_the_id_is_the_one_bound_at_the_call(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        logger.configure(patcher=add_correlation)
        logger.add(LoggingSink(), enqueue=True)
        with context.bound() as hop:
            logger.info("queued")
        logger.complete()  # the sink ran on loguru's thread, after the hop ended
        entry = installed.loki_entry("queued")

    assert entry.metadata["correlation_id"] == hop.correlation_id
    assert entry.json[schema.REQUEST_ID] == hop.request_id


def test_with_enqueue_and_no_patcher_the_fields_are_null_and_it_says_so(
    loki_sink: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    with library_logging(loki_sink) as installed:
        logger.add(LoggingSink(), enqueue=True)
        with context.bound():
            logger.info("queued without patcher")
            logger.info("again")
        logger.complete()
        entry = installed.loki_entry("queued without patcher")
        installed.loki_entry("again")

    assert entry.json[schema.CORRELATION_ID] is None and "correlation_id" not in entry.metadata
    assert capsys.readouterr().err.count("add_correlation") == 1, "said once, on stderr"


def test_a_line_logged_in_a_flask_request_carries_the_requests_id(loki_sink: FakeLoki) -> None:
    def view() -> str:
        logger.bind(sku="X-1").info("in the view")
        return "ok"

    with library_logging(loki_sink) as installed:
        logger.configure(patcher=add_correlation)
        logger.add(LoggingSink())
        response = flask_app(view).test_client().get("/order", headers={"X-Correlation-ID": "cid-loguru-1"})
        entry = installed.loki_entry("in the view")

    assert response.headers["X-Correlation-ID"] == "cid-loguru-1"
    assert entry.metadata["correlation_id"] == "cid-loguru-1" and entry.json["sku"] == "X-1"


def test_a_sink_straight_into_the_loki_handler(loki_sink: FakeLoki) -> None:
    handler = make_handler(loki_sink)
    try:
        logger.configure(patcher=add_correlation)
        logger.add(LoggingSink(handler))
        with context.bound() as hop:
            logger.warning("straight")
        (entry,) = loki_sink.wait_for(lambda entries: len(entries) == 1)
    finally:
        handler.close()
    assert entry.metadata == {"correlation_id": hop.correlation_id, "request_id": hop.request_id, "level": "warning"}
    assert entry.json[schema.MESSAGE] == "straight"


def test_a_failing_handler_never_reaches_the_caller_nor_loki(
    loki_sink: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            raise OSError("disk gone")

    loki = make_handler(loki_sink)
    try:
        logger.add(LoggingSink(Broken(), loki), catch=False)  # loguru would not catch it for us
        logger.info("still shipped")
        (entry,) = loki_sink.wait_for(lambda entries: len(entries) >= 1)
        loki.flush()
    finally:
        loki.close()
    assert entry.json[schema.MESSAGE] == "still shipped", "the other handlers still get the line"
    assert [e.json[schema.MESSAGE] for e in loki_sink.entries] == ["still shipped"], "the error is not a line"
    err = capsys.readouterr().err
    assert "correlation: the loguru sink could not write" in err and "disk gone" in err


def test_the_docs_example_runs_and_its_line_reaches_loki(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOKI_BATCH_MAX_WAIT_SECONDS", "0.05")
    example = doc_example("loguru")
    assert len(example.strip().splitlines()) <= 12, "the example stays about ten lines"
    with library_logging(loki):  # undoes what the example's setup_logging installs
        exec(compile(example, "docs/integrations.md", "exec"), {})  # noqa: S102 - our own doc's example
        entry = loki.wait_for(lambda entries: any(e.json["message"] == "order A-1 placed" for e in entries))[-1]
    assert entry.json["order_id"] == 42 and entry.json["service"] == "orders"
    assert entry.metadata["correlation_id"] == entry.json["correlation_id"] is not None
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["order_id"] for line in printed if line["message"] == "order A-1 placed"] == [42], "and on stdout"


def test_without_loguru_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "loguru", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "correlation.integrations.loguru")
    with pytest.raises(ImportError, match=r"pip install 'correlation-trail\[loguru\]'"):
        importlib.import_module("correlation.integrations.loguru")


def test_the_sink_keeps_the_callers_thread() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.add(LoggingSink(Keep()), enqueue=True)
    logger.info("from the caller")
    logger.complete()
    (record,) = records
    assert record.thread == threading.get_ident() and record.threadName == threading.current_thread().name
