"""bench/floor.py, the yardstick of the request-path attribution, does the work the library does:
the same access line (keys and order), the ID and service on the response, an ID in our layout."""

from __future__ import annotations

import io
import json
import logging

import flask
import pytest

from bench import floor
from correlation import Correlation, Settings, ids, schema
from correlation.log.formatter import JsonFormatter

pytestmark = pytest.mark.unit

_COMPARED = ("level", "logger", "route", "status", "service", "method", "path", "parent_request_id", "caller")


def _ping(name: str) -> flask.Flask:
    app = flask.Flask(name)
    app.add_url_rule("/ping", "ping", lambda: "ok")
    return app


def _library_line() -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger(schema.ACCESS_LOGGER)
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        library = _ping("library")
        Correlation(library, Settings(service=floor.SERVICE), propagate_requests=False)
        library.test_client().get("/ping")
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)
    (line,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    return line


def test_the_floor_writes_the_librarys_access_line(capsys: pytest.CaptureFixture[str]) -> None:
    client = floor.install(_ping("floor")).test_client()
    responses = [client.get("/ping") for _ in range(200)]  # its stdout is written by 64 KiB
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines, "the floor wrote no line"
    ours = _library_line()
    assert list(lines[0]) == list(ours), "the same keys in the same order"
    assert {k: lines[0][k] for k in _COMPARED} == {k: ours[k] for k in _COMPARED}
    assert lines[0]["time"][:11] == ours["time"][:11] and lines[0]["time"].endswith("Z")
    headers = responses[0].headers
    assert headers[schema.CORRELATION_HEADER] == lines[0]["correlation_id"]
    assert headers[schema.SERVICE_HEADER] == floor.SERVICE
    assert ids.time_ms_of(lines[0]["correlation_id"]) is not None, "a UUIDv7 in our layout"


def test_the_floor_refuses_what_it_does_not_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotImplementedError):
        floor.install(_ping("floor")).test_client().get("/ping", headers={schema.CORRELATION_HEADER: "abc"})
    monkeypatch.setenv("BENCH_FLOOR_PARTS", "edge,nope")
    with pytest.raises(ValueError, match="unknown parts"):
        floor.floor_parts()
