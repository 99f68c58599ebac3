"""``error_type``: a failed request's exception type on its access line and in its Loki entry's
structured metadata, bounded, and on no other request's line."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from itertools import count

import flask
import pytest
from werkzeug.exceptions import InternalServerError

from correlation import Correlation, Settings, schema
from correlation.error_type import MAX_ERROR_TYPE_CHARS, error_type
from correlation.integrations.flask import Correlation as _Correlation
from fakes import FakeLoki
from tests.support.shipper import make_handler

pytestmark = pytest.mark.process

_names = count()


class PaymentDeclined(Exception):
    """A failure the app turns into its own 5xx answer."""


def test_the_name_is_the_one_a_traceback_prints() -> None:
    assert error_type(ValueError) == "ValueError"
    assert error_type(PaymentDeclined) == "tests.correlation.test_error_type.PaymentDeclined"
    assert error_type(InternalServerError) == "werkzeug.exceptions.InternalServerError"
    # The last row of the traceback in the line's `exception` starts with the same name.
    row = traceback.format_exception_only(PaymentDeclined("card declined"))[-1]
    assert row.startswith(error_type(PaymentDeclined) + ": ")

    def local() -> type[Exception]:
        class Inner(Exception):
            pass

        return Inner

    assert (
        error_type(local())
        == "tests.correlation.test_error_type.test_the_name_is_the_one_a_traceback_prints._locals_.local._locals_.Inner"
    )


def test_a_hostile_class_name_is_cut_and_limited_to_its_charset() -> None:
    made = type("Boom\u202e} | drop" + "x" * 500, (Exception,), {"__module__": "évil mod"})
    name = error_type(made)
    assert len(name) == MAX_ERROR_TYPE_CHARS
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")
    assert name.startswith("_vil_mod.Boom_____drop")


@pytest.fixture
def shop(loki_sink: FakeLoki) -> Iterator[flask.testing.FlaskClient]:
    """A Flask app whose access lines go only to a Loki handler (the direct path)."""
    service = f"shop{next(_names)}"
    app = flask.Flask(service)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/missing")
    def missing() -> str:
        flask.abort(404)

    @app.get("/declined")
    def declined() -> str:
        raise PaymentDeclined("card declined")

    @app.get("/boom")
    def boom() -> str:
        raise ZeroDivisionError("unhandled")

    @app.get("/handled-then-ok")
    def handled_then_ok() -> tuple[str, int]:
        try:
            raise KeyError("looked for it")
        except KeyError:
            return "fine", 200

    @app.errorhandler(PaymentDeclined)
    def declined_answer(exc: PaymentDeclined) -> tuple[str, int]:
        return "declined", 502

    _Correlation(app, Settings(service=service), propagate_requests=False)
    access = logging.getLogger(schema.ACCESS_LOGGER)
    handler = make_handler(loki_sink)
    old = access.propagate, access.level
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    try:
        yield app.test_client()
    finally:
        access.removeHandler(handler)
        access.propagate, _ = old
        access.setLevel(old[1])
        handler.close()


def test_a_failed_request_carries_its_exception_type_on_its_line_and_in_metadata(
    shop: flask.testing.FlaskClient, loki_sink: FakeLoki
) -> None:
    statuses = {
        path: shop.get(path).status_code for path in ("/ok", "/missing", "/handled-then-ok", "/declined", "/boom")
    }
    assert statuses == {"/ok": 200, "/missing": 404, "/handled-then-ok": 200, "/declined": 502, "/boom": 500}
    entries = loki_sink.wait_for(lambda e: len(e) == 5)
    by_path = {e.json[schema.PATH]: e for e in entries}
    # Handled by the app's own error handler (its 502) or by no one (Flask's 500): the type either way.
    assert by_path["/declined"].json[schema.ERROR_TYPE] == "tests.correlation.test_error_type.PaymentDeclined"
    assert by_path["/declined"].metadata[schema.ERROR_TYPE] == "tests.correlation.test_error_type.PaymentDeclined"
    assert by_path["/boom"].json[schema.ERROR_TYPE] == "ZeroDivisionError"
    assert by_path["/boom"].metadata == {
        schema.CORRELATION_ID: by_path["/boom"].json[schema.CORRELATION_ID],
        schema.REQUEST_ID: by_path["/boom"].json[schema.REQUEST_ID],
        schema.LEVEL: "error",
        schema.ERROR_TYPE: "ZeroDivisionError",
    }
    # A request that did not fail has none, even when something raised on its way (a 404, a handled error).
    for path in ("/ok", "/missing", "/handled-then-ok"):
        assert schema.ERROR_TYPE not in by_path[path].json, path
        assert schema.ERROR_TYPE not in by_path[path].metadata, path


def test_through_logging_too(
    shop: flask.testing.FlaskClient, loki_sink: FakeLoki, caplog: pytest.LogCaptureFixture
) -> None:
    """Another handler on the way (caplog): the line goes through ``logging``, with the same key."""
    access = logging.getLogger(schema.ACCESS_LOGGER)
    access.addHandler(caplog.handler)
    try:
        assert shop.get("/boom").status_code == 500
    finally:
        access.removeHandler(caplog.handler)
    (entry,) = loki_sink.wait_for(lambda e: len(e) == 1)
    assert entry.json[schema.ERROR_TYPE] == entry.metadata[schema.ERROR_TYPE] == "ZeroDivisionError"
    (record,) = [r for r in caplog.records if r.name == schema.ACCESS_LOGGER]
    assert getattr(record, schema.ERROR_TYPE) == "ZeroDivisionError"


def test_only_error_lines_give_the_metadata(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    """An application's INFO line with an ``error_type`` extra keeps it in the line, not in metadata."""
    logger.addHandler(make_handler(loki_sink))
    logger.info("retrying", extra={schema.ERROR_TYPE: "ValueError"})
    logger.error("gave up", extra={schema.ERROR_TYPE: "ValueError"})
    entries = {e.json["message"]: e for e in loki_sink.wait_for(lambda e: len(e) == 2)}
    assert schema.ERROR_TYPE not in entries["retrying"].metadata
    assert entries["gave up"].metadata[schema.ERROR_TYPE] == "ValueError"


def test_the_public_extension_is_the_one_tested() -> None:
    assert Correlation is _Correlation
