"""structlog events become the library's lines: on stdout and in Loki with the correlation ID in
structured metadata (``configure_structlog``), or in structlog's own output (``add_correlation``)."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from correlation import context, schema
from correlation.integrations.structlog import configure_structlog
from fakes import FakeLoki
from tests.support.frontends import SERVICE, doc_example, flask_app, library_logging, unique_keys

pytestmark = pytest.mark.unit  # the import test says process


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_a_structlog_line_reaches_loki_and_stdout_as_the_librarys_own(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        configure_structlog([structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name])
        log = structlog.get_logger("shop.checkout")
        structlog.contextvars.bind_contextvars(tenant="acme")
        hop = context.Hop.start(parent_request_id="feedfacefeedface")
        with context.bound(hop):
            # `name` and `args` are LogRecord attributes (logging's extra= refuses them); `time`
            # is a key the line takes from the record.
            log.info("order placed", order_id=42, total=9.5, name="bob", args=[1, 2], time="noon")
        entry = installed.loki_entry("order placed")
        stdout = installed.stdout_line("order placed")

    assert entry.metadata == {"correlation_id": hop.correlation_id, "request_id": hop.request_id, "level": "info"}
    assert entry.line == stdout, "stdout and Loki carry the same line"
    line = unique_keys(entry.line)
    assert (line[schema.LEVEL], line[schema.LOGGER], line[schema.SERVICE]) == ("INFO", "shop.checkout", SERVICE)
    assert (line[schema.CORRELATION_ID], line[schema.REQUEST_ID], line[schema.PARENT_REQUEST_ID]) == (
        hop.correlation_id,
        hop.request_id,
        "feedfacefeedface",
    )
    fields = {key: value for key, value in line.items() if key not in schema.LINE_KEYS}
    assert fields == {"order_id": 42, "total": 9.5, "name": "bob", "args": [1, 2], "time_": "noon", "tenant": "acme"}
    assert "event" not in line, "the event is the message, not a field besides it"


def test_positional_arguments_levels_and_the_exception(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        configure_structlog()
        log = structlog.get_logger("shop.pay")
        with context.bound() as hop:
            log.warning("paid %s of %d", "half", 2)
            try:
                raise ZeroDivisionError("no stock")
            except ZeroDivisionError:
                log.exception("charge failed", attempt=3)
        log.debug("below the root's level")  # setup_logging's INFO
        warning = installed.loki_entry("paid half of 2")
        error = installed.loki_entry("charge failed")
        assert not [line for line in installed.stdout_lines() if "below the root" in line]

    assert warning.metadata["level"] == "warning" and warning.metadata["correlation_id"] == hop.correlation_id
    line = unique_keys(error.line)
    assert line[schema.LEVEL] == "ERROR" and error.metadata["level"] == "error" and line["attempt"] == 3
    assert "Traceback" in line[schema.EXCEPTION] and "ZeroDivisionError: no stock" in line[schema.EXCEPTION]
    assert "exc_info" not in line


def test_outside_a_hop_the_fields_are_null_as_for_logging_lines(loki_sink: FakeLoki) -> None:
    with library_logging(loki_sink) as installed:
        configure_structlog()
        structlog.get_logger("shop.cron").info("nightly run", batch=7)
        entry = installed.loki_entry("nightly run")

    assert entry.metadata == {"level": "info"}, "no correlation_id metadata outside a request"
    line = unique_keys(entry.line)
    assert line[schema.CORRELATION_ID] is None and line[schema.REQUEST_ID] is None and line["batch"] == 7


def test_a_line_logged_in_a_flask_request_carries_the_requests_id(loki_sink: FakeLoki) -> None:
    def view() -> str:
        structlog.get_logger("shop.view").info("in the view", sku="X-1")
        return "ok"

    with library_logging(loki_sink) as installed:
        configure_structlog()
        response = flask_app(view).test_client().get("/order", headers={"X-Correlation-ID": "cid-structlog-1"})
        entry = installed.loki_entry("in the view")

    assert response.headers["X-Correlation-ID"] == "cid-structlog-1"
    assert entry.metadata["correlation_id"] == "cid-structlog-1" and entry.json["sku"] == "X-1"


def test_add_correlation_puts_the_fields_in_structlogs_own_output() -> None:
    out = io.StringIO()
    exec(compile(doc_example("structlog", 1), "docs/integrations.md", "exec"), {})  # noqa: S102 - our doc's example
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))  # the rest of the docs' configuration kept
    log = structlog.get_logger()
    with context.bound() as hop:
        log.info("inside", order_id=1)
        log.info("given", correlation_id="mine")
    log.info("outside")
    inside, given, outside = (json.loads(line) for line in out.getvalue().splitlines())

    assert (inside["correlation_id"], inside["request_id"], inside["parent_request_id"]) == (
        hop.correlation_id,
        hop.request_id,
        None,
    )
    assert inside["service"] == context.service() and inside["order_id"] == 1 and inside["level"] == "info"
    assert given["correlation_id"] == "mine", "a value passed explicitly wins"
    assert outside["correlation_id"] is None and outside["request_id"] is None


def test_the_docs_example_runs_and_its_line_reaches_loki(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOKI_BATCH_MAX_WAIT_SECONDS", "0.05")
    example = doc_example("structlog")
    assert len(example.strip().splitlines()) <= 12, "the example stays about ten lines"
    with library_logging(loki):  # undoes what the example's setup_logging installs
        exec(compile(example, "docs/integrations.md", "exec"), {})  # noqa: S102 - our own doc's example
        entry = loki.wait_for(lambda entries: any(e.json["message"] == "order placed" for e in entries))[-1]
    assert entry.json["order_id"] == 42 and entry.json["service"] == "orders"
    assert entry.metadata["correlation_id"] == entry.json["correlation_id"] is not None
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["order_id"] for line in printed if line["message"] == "order placed"] == [42], "and on stdout"


def test_without_structlog_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "structlog", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "correlation.integrations.structlog")
    with pytest.raises(ImportError, match=r"pip install 'correlation-trail\[structlog\]'"):
        importlib.import_module("correlation.integrations.structlog")


@pytest.mark.process
def test_importing_the_library_imports_neither_structlog_nor_loguru() -> None:
    code = (
        "import sys, correlation, correlation.integrations, correlation.setup, correlation.loki;"
        "print(sorted(name for name in ('structlog', 'loguru') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
