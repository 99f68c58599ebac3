"""The request path's fast paths write exactly what the general paths write.

- ``correlation.log.jsonline``: orjson for plain values, the standard library otherwise, the same
  content either way (lone surrogates, NaN, big ints, enums, dates: the standard library's).
- ``correlation.log.records.new_record``: the record ``makeRecord`` would make.
- ``correlation.log.access``: the access line handed straight to the library's handlers is the line
  ``logging`` + ``JsonFormatter`` would make, and ``logging`` is used whenever anyone else
  (a handler, a filter, a record factory, a patched Logger) would see the record.
- ``StdoutHandler`` queues without its lock: no line lost or doubled between threads or forks.
- the in-flight gauge, read at scrape time.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import io
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import flask
import pytest
from hypothesis import given
from hypothesis import strategies as st

from correlation import Correlation, Settings, context, schema
from correlation.log import access, jsonline, records
from correlation.log.formatter import LINE_ATTR, JsonFormatter
from correlation.log.stdout import StdoutHandler
from correlation.loki.handler import LokiHandler
from fakes import closed_port_url, wait_until

pytestmark = pytest.mark.unit

_stdlib = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


def _same(a: Any, b: Any) -> bool:
    """JSON content equality, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


plain_values = st.one_of(
    st.text(),  # lone surrogates included
    st.integers(),  # past 64 bits included
    st.floats(),  # NaN and infinities included
    st.booleans(),
    st.none(),
)


@given(st.dictionaries(st.text(), plain_values, max_size=12))
def test_a_line_holds_what_the_standard_library_writes(entry: dict[str, Any]) -> None:
    assert _same(json.loads(jsonline.line(entry)), json.loads(_stdlib(entry)))


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Meters(float):
    pass


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        2**70,
        "caf\u00e9 \udcff",
        Colour.RED,
        Level.HIGH,
        Meters(1.5),
        Point(1),
        datetime.datetime(2026, 11, 25, 14, 0),
        datetime.date(2026, 11, 25),
        uuid.UUID(int=7),
        b"bytes",
        object(),
        {"nested": Colour.RED},
        [1, float("nan")],
        (1, 2),
        {1: "int key"},
    ],  # fmt: skip
)
def test_values_orjson_writes_differently_take_the_standard_librarys_path(value: Any) -> None:
    entry = {"message": "m", "value": value}
    assert jsonline.line(entry) == _stdlib(entry)


def test_plain_line_falls_back_where_orjson_refuses() -> None:
    for value in ("lone \udcff", 2**64, b"raw", Meters(2.0)):
        entry = {"value": value}
        assert jsonline.plain_line(entry) == _stdlib(entry)


@given(st.text(), st.dictionaries(st.sampled_from(["correlation_id", "request_id", "level"]), st.text()))
def test_a_push_entry_is_ascii_and_holds_its_values(text: str, metadata: dict[str, str]) -> None:
    fragment = jsonline.ascii_entry("1764079200000000000", text, metadata)
    assert fragment.isascii()
    assert json.loads(fragment) == (
        ["1764079200000000000", text, metadata] if metadata else ["1764079200000000000", text]
    )


# -- records ---------------------------------------------------------------------------------------


def test_new_record_is_the_record_make_record_makes() -> None:
    logger = logging.getLogger("test.hot_path.records")
    fields = {schema.METHOD: "GET", schema.STATUS: 200}
    fast = records.new_record(logger, logging.WARNING, __file__, "%s %d", ("GET", 200), fields).__dict__
    slow = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, "%s %d", ("GET", 200), None, extra=fields)
    assert list(fast) == list(slow.__dict__)
    timed = {"created", "msecs", "relativeCreated"}
    assert {k: v for k, v in fast.items() if k not in timed} == {
        k: v for k, v in slow.__dict__.items() if k not in timed
    }
    assert abs(fast["created"] - slow.created) < 1 and abs(fast["relativeCreated"] - slow.relativeCreated) < 1000


def test_an_applications_record_factory_makes_the_record() -> None:
    original = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        record.host = "h1"
        return record

    logging.setLogRecordFactory(factory)
    try:
        record = records.new_record(logging.getLogger("test.hot_path.factory"), logging.INFO, __file__, "m", (), {})
    finally:
        logging.setLogRecordFactory(original)
    assert vars(record)["host"] == "h1"


# -- the access line -----------------------------------------------------------------------------


@pytest.fixture
def access_logger() -> Iterator[tuple[logging.Logger, io.StringIO, LokiHandler]]:
    """A logger with the library's two handlers only, as ``setup_logging`` leaves the root."""
    logger = logging.getLogger(f"test.hot_path.access.{os.urandom(4).hex()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    formatter = JsonFormatter()
    stdout = StdoutHandler(stream, flush_interval=3600)
    loki = LokiHandler(url=closed_port_url(), labels={"service_name": "s", "env": "e"}, registry=None)
    for handler in (stdout, loki):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    yield logger, stream, loki
    for attached in list(logger.handlers):
        logger.removeHandler(attached)
    loki.buffer.drain()
    loki.close_within(0.1)
    stdout.close()


FIELDS = {
    schema.METHOD: "GET", schema.ROUTE: "/items/<int:item>", schema.PATH: "/items/\u00e9", schema.STATUS: 502,
    schema.DURATION_MS: 12.5, schema.CALLER: None, schema.ORIGIN: schema.ORIGIN_DOWNSTREAM,
    schema.FAILED_DOWNSTREAM: "payments", schema.CLIENT_CORRELATION_ID: "client-1",
}  # fmt: skip
ARGS = ("GET", "/items/\u00e9", 502, 12.5, " note")


def _only_ours(logger: logging.Logger) -> None:
    """Take pytest's capture handlers off (it puts them on non-propagating loggers too): they
    would rightly send every line through logging."""
    logger.handlers[:] = [h for h in logger.handlers if isinstance(h, StdoutHandler | LokiHandler)]


def _write(logger: logging.Logger, hop: context.Hop) -> None:
    with context.bound(hop):
        access.report_hop(logging.ERROR, __file__, "%s %s %d %.1fms%s", ARGS, hop, None, dict(FIELDS), logger)


def _as_logging_writes_it(logger: logging.Logger, hop: context.Hop) -> str:
    """The line of the same record made by makeRecord and formatted by the generic formatter."""
    with context.bound(hop):
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s %s %d %.1fms%s", ARGS, None,
                                   extra=dict(FIELDS))  # fmt: skip
        return JsonFormatter().format(record)


def test_the_direct_line_is_the_line_logging_would_write(access_logger: Any) -> None:
    logger, stream, loki = access_logger
    _only_ours(logger)
    assert access._only_line_handlers(logger, logging.ERROR) == logger.handlers  # noqa: SLF001
    hop = context.Hop.start(parent_request_id="parent01")
    _write(logger, hop)
    logger.handlers[0].flush()
    line = stream.getvalue().splitlines()[-1]
    direct, general = json.loads(line), json.loads(_as_logging_writes_it(logger, hop))
    assert list(direct) == list(general), "the same keys in the same order"
    assert direct.pop(schema.TIME)[:16] == general.pop(schema.TIME)[:16], "made within the same minute"
    assert direct == general
    shipped, metadata = loki.buffer._entries[-1].decode()  # noqa: SLF001
    assert shipped == line
    assert metadata == {"correlation_id": hop.correlation_id, "request_id": hop.request_id,
                        "client_correlation_id": "client-1", "level": "error"}  # fmt: skip


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        # Any, not LogRecord: the tests read the access line's fields (``extra=``), which LogRecord's
        # type does not declare.
        self.records: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_anyone_else_on_the_way_gets_the_record_through_logging(access_logger: Any) -> None:
    logger, stream, _ = access_logger
    collect = _Collect()
    logger.addHandler(collect)
    hop = context.Hop.start()
    _write(logger, hop)
    assert access._only_line_handlers(logger, logging.ERROR) is None  # noqa: SLF001
    (record,) = collect.records
    assert record.status == 502 and record.correlation_id == hop.correlation_id and record.service == context.service()
    made = record.__dict__.pop(LINE_ATTR)
    assert made == JsonFormatter().format(record), "the line made with the record is the formatter's"
    logger.handlers[0].flush()
    assert stream.getvalue().splitlines()[-1] == made


def test_a_handler_above_the_level_does_not_see_it_either_way(access_logger: Any) -> None:
    logger, _, _ = access_logger
    _only_ours(logger)
    collect = _Collect()
    collect.setLevel(logging.CRITICAL)
    logger.addHandler(collect)
    assert access._only_line_handlers(logger, logging.ERROR) is not None  # noqa: SLF001
    assert access._only_line_handlers(logger, logging.CRITICAL) is None  # noqa: SLF001


@pytest.mark.parametrize(
    "change", ["logger filter", "handler filter", "formatter", "subclass", "factory", "logger class", "patched"]
)
def test_what_sends_the_line_through_logging(access_logger: Any, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    logger, stream, _ = access_logger
    _only_ours(logger)
    assert access._only_line_handlers(logger, logging.INFO) is not None  # noqa: SLF001
    if change == "logger filter":
        logger.addFilter(lambda record: True)
    elif change == "handler filter":
        logger.handlers[0].addFilter(lambda record: True)
    elif change == "formatter":
        logger.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    elif change == "subclass":
        logger.addHandler(type("MyStdout", (StdoutHandler,), {})(io.StringIO()))
    elif change == "factory":
        monkeypatch.setattr(logging, "_logRecordFactory", lambda *a, **k: logging.LogRecord(*a, **k))
    elif change == "logger class":  # an application's Logger subclass may add attributes in makeRecord
        monkeypatch.setattr(logger, "__class__", type("MyLogger", (logging.Logger,), {"makeRecord": _make_record}))
    else:
        monkeypatch.setattr(logging.Logger, "callHandlers", lambda self, record: None)
    assert access._only_line_handlers(logger, logging.INFO) is None  # noqa: SLF001


def _make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
    return logging.Logger.makeRecord(self, *args, **kwargs)


def test_the_direct_line_does_not_depend_on_how_records_are_made(
    access_logger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No record is made on the direct path, so records' own fast path (off where LogRecord has
    attributes it does not set, as Python 3.12's taskName) must not turn it off."""
    logger, _, _ = access_logger
    _only_ours(logger)
    monkeypatch.setattr(records, "_FAST_RECORDS", False)
    assert not records.fast_records_apply(logger)
    assert access._only_line_handlers(logger, logging.INFO) == logger.handlers  # noqa: SLF001


# -- StdoutHandler -------------------------------------------------------------------------------


def test_stdout_lines_from_many_threads_are_written_once_each_in_order() -> None:
    stream = io.StringIO()
    handler = StdoutHandler(stream, flush_interval=0.001, max_pending=2_000)
    logger = logging.getLogger(f"test.hot_path.stdout.{os.urandom(4).hex()}")
    logger.propagate = False
    logger.addHandler(handler)

    def log(thread: int) -> None:
        for n in range(500):
            logger.warning("%d %d", thread, n)

    threads = [threading.Thread(target=log, args=(t,)) for t in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        handler.close()
    finally:
        logger.removeHandler(handler)
    messages = [json.loads(line)["message"].split() for line in stream.getvalue().splitlines()]
    assert len(messages) == 6 * 500
    for t in range(6):
        assert [int(n) for thread, n in messages if int(thread) == t] == list(range(500)), "each thread's, in order"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_write_the_parents_queued_lines() -> None:
    stream = io.StringIO()
    handler = StdoutHandler(stream, flush_interval=3600)
    logger = logging.getLogger(f"test.hot_path.fork.{os.urandom(4).hex()}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("queued by the parent")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: log its own line, flush, report what it wrote
            logger.warning("the child's")
            handler.flush()
            os.write(write, stream.getvalue().encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            child = pipe.read().decode()
        os.waitpid(pid, 0)
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert [json.loads(line)["message"] for line in child.splitlines()] == ["the child's"]
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["queued by the parent"]


# -- the in-flight gauge ---------------------------------------------------------------------------


def test_the_in_flight_gauge_counts_requests_being_handled() -> None:
    service = f"inflight{os.urandom(3).hex()}"
    app = flask.Flask(service)
    entered, release = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> str:
        entered.set()
        release.wait(10)
        return "ok"

    Correlation(app, Settings(service=service), propagate_requests=False)
    client = app.test_client()

    def gauge() -> str:
        text = client.get("/metrics").get_data(as_text=True)
        return next(
            line
            for line in text.splitlines()
            if line.startswith(f'http_server_requests_in_flight{{service="{service}"}}')
        )

    worker = threading.Thread(target=lambda: app.test_client().get("/slow"))
    worker.start()
    try:
        assert entered.wait(10)
        assert gauge().endswith(" 1.0")
    finally:
        release.set()
        worker.join(10)
    wait_until(lambda: gauge().endswith(" 0.0"), 5, "the gauge back to 0")


# -- the generic formatter's shortcuts -------------------------------------------------------------


def _generic(record: logging.LogRecord) -> dict[str, Any]:
    return json.loads(JsonFormatter().format(record))


def test_extras_are_found_after_another_formatter_added_its_attributes() -> None:
    record = logging.makeLogRecord({"name": "app", "levelno": 20, "levelname": "INFO", "msg": "m", "args": ()})
    logging.Formatter("%(asctime)s %(message)s").format(record)  # sets record.message and record.asctime
    record.order = "o-1"
    line = _generic(record)
    assert line["order"] == "o-1" and "asctime" not in line and line["message"] == "m"


def test_context_values_of_other_types_keep_the_standard_librarys_form() -> None:
    record = logging.makeLogRecord({"name": "app", "levelno": 20, "levelname": "INFO", "msg": "m", "args": ()})
    record.correlation_id = Colour.RED  # extra= may put anything there
    assert _generic(record)["correlation_id"] == "Colour.RED"
