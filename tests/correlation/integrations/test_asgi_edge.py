"""The ASGI edge in process: ``CorrelationMiddleware`` called with a scope, a ``receive`` and a
``send``, as a server calls it (the same guarantees under real servers: test_asgi.py).

What its request path's short cuts must keep: a request with none of the ID headers gets a fresh
trail, one with any of them (``X-Request-ID``, ``traceparent``) is read and judged by the trust rule;
the app's own ID or service header gives way to ours whatever its case and however its headers
come (a list, a tuple, a generator); the app's start message is not changed;
the line is timed to the last body message, a client gone first is a 499, an exception a 500."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Any

import pytest

from correlation import context, ids
from correlation.integrations.asgi import ASGIApp, CorrelationMiddleware, Message
from correlation.log.formatter import JsonFormatter
from correlation.schema import ACCESS_LOGGER
from correlation.settings import Settings
from correlation.trust import TrustPolicy

pytestmark = pytest.mark.unit

_names = count()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-00"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Every JSON line logged while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, stream.getvalue().splitlines()) if line["logger"] == ACCESS_LOGGER]


def edge(app: ASGIApp, trust: str = "private") -> CorrelationMiddleware:
    settings = Settings(service=f"asgi-edge{next(_names)}", trust_inbound=TrustPolicy.parse(trust))
    return CorrelationMiddleware(app, settings, propagate_requests=False)


def serve(
    middleware: CorrelationMiddleware,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    client: str = "127.0.0.1",
    incoming: list[Message] | None = None,
) -> list[Message]:
    """One ``GET /items`` through ``middleware``: the messages it sent. ``incoming`` is what
    ``receive`` answers, in order (default: the empty request body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/items", "raw_path": b"/items", "query_string": b"", "root_path": "",
             "headers": list(headers), "client": (client, 50000), "server": ("127.0.0.1", 8000)}  # fmt: skip
    inbox = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def echoed(sent: list[Message]) -> dict[bytes, list[bytes]]:
    """The response's headers: name -> values, names as sent."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in sent[0]["headers"]:
        out.setdefault(bytes(name), []).append(value)
    return out


def answering(headers: Any = (), seen: list[context.Hop | None] | None = None) -> ASGIApp:
    """An app answering 200 "ok" with ``headers`` (a callable: made anew each time), noting its hop."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if seen is not None:
            seen.append(context.current())
        given = headers() if callable(headers) else headers
        await send({"type": "http.response.start", "status": 200, "headers": given})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_request_without_id_headers_starts_a_trail_and_is_echoed(lines: io.StringIO) -> None:
    seen: list[context.Hop | None] = []
    sent = serve(edge(answering([(b"content-type", b"text/plain")], seen)), [(b"host", b"x"), (b"accept", b"*/*")])
    headers = echoed(sent)
    (cid,) = headers[b"x-correlation-id"]
    parsed = uuid.UUID(hex=cid.decode())
    assert parsed.version == 7 and seen[0] is not None and seen[0].correlation_id == cid.decode()
    assert headers[b"content-type"] == [b"text/plain"] and len(headers[b"x-service-name"]) == 1
    (line,) = access_lines(lines)
    assert line["correlation_id"] == cid.decode() and line["request_id"] == seen[0].request_id
    assert line["status"] == 200 and line["parent_request_id"] is None and line["caller"] is None


@pytest.mark.parametrize(
    ("sent_header", "value", "expected"),
    [
        (b"x-correlation-id", b"cid-from-caller", "cid-from-caller"),
        (b"x-request-id", b"rid-from-proxy", "rid-from-proxy"),
        (b"traceparent", TRACEPARENT.encode(), TRACE_ID),
    ],
)
def test_any_id_header_is_read_from_a_trusted_peer(sent_header: bytes, value: bytes, expected: str) -> None:
    seen: list[context.Hop | None] = []
    sent = serve(edge(answering((), seen)), [(b"host", b"x"), (sent_header, value)])
    assert echoed(sent)[b"x-correlation-id"] == [expected.encode()] and seen[0] is not None
    assert seen[0].correlation_id == expected


def test_a_traceparent_keeps_its_flags_and_tracestate() -> None:
    seen: list[context.Hop | None] = []
    headers = [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=abc")]
    serve(edge(answering((), seen)), headers)
    hop = seen[0]
    assert hop is not None and hop.correlation_id == TRACE_ID and hop.parent_request_id == "00f067aa0ba902b7"
    assert hop.sampled is False and hop.tracestate == "vendor=abc"


def test_an_untrusted_peer_starts_a_fresh_trail_and_its_id_is_kept_for_search(lines: io.StringIO) -> None:
    sent = serve(edge(answering()), [(b"x-correlation-id", b"cid-from-outside")], client="203.0.113.7")
    (cid,) = echoed(sent)[b"x-correlation-id"]
    assert cid != b"cid-from-outside" and ids.time_ms_of(cid.decode()) is not None
    (line,) = access_lines(lines)
    assert line["client_correlation_id"] == "cid-from-outside" and line["correlation_id"] == cid.decode()


def _generator() -> Iterator[tuple[bytes, bytes]]:
    yield (b"x-service-name", b"theirs")
    yield (b"content-type", b"text/plain")


@pytest.mark.parametrize(
    "given",
    [
        lambda: [(b"X-Correlation-ID", b"theirs"), (b"content-type", b"text/plain")],  # the case some apps send
        lambda: [(b"content-type", b"text/plain"), (b"x-service-name", b"theirs")],
        lambda: ((b"X-SERVICE-NAME", b"theirs"), (b"content-type", b"text/plain")),  # a tuple
        _generator,  # read once
    ],
    ids=["mixed-case", "lower-case", "tuple", "generator"],
)
def test_the_apps_own_id_or_service_header_gives_way_to_ours(given: Callable[[], Any]) -> None:
    sent = serve(edge(answering(given)))
    headers = {name.lower(): values for name, values in echoed(sent).items()}
    assert headers[b"content-type"] == [b"text/plain"], "the app's other headers are kept"
    assert len(headers[b"x-correlation-id"]) == 1 and headers[b"x-correlation-id"] != [b"theirs"]
    assert len(headers[b"x-service-name"]) == 1 and headers[b"x-service-name"] != [b"theirs"]


def test_the_apps_start_message_is_not_changed() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}

    async def app(scope: Any, receive: Any, send: Any) -> None:  # one message dict, sent every time
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = edge(app)
    first, second = serve(middleware)[0], serve(middleware)[0]
    assert start["headers"] == [(b"content-type", b"text/plain")]
    assert len(first["headers"]) == len(second["headers"]) == 3


def test_a_streamed_response_is_timed_to_its_last_body_message(lines: io.StringIO) -> None:
    pause = 0.05

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": b"last", "more_body": False})
        await asyncio.sleep(pause * 4)  # work after the response (a background task): not its time

    serve(edge(app))
    (line,) = access_lines(lines)
    assert pause * 1000 <= line["duration_ms"] < pause * 4 * 1000, line


def test_a_client_gone_before_the_response_is_a_499(lines: io.StringIO) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    serve(edge(app), incoming=[{"type": "http.disconnect"}])
    (line,) = access_lines(lines)
    assert line["status"] == 499 and "client disconnected before any response" in line["message"]


def test_an_unhandled_exception_is_a_500_with_the_id(lines: io.StringIO) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("secret")

    sent = serve(edge(app), [(b"x-correlation-id", b"cid-boom")])
    assert sent[0]["status"] == 500 and echoed(sent)[b"x-correlation-id"] == [b"cid-boom"]
    assert json.loads(sent[1]["body"])["correlation_id"] == "cid-boom"
    (line,) = access_lines(lines)
    assert line["status"] == 500 and line["error_type"] == "KeyError" and line["level"] == "ERROR"


def test_lifespan_passes_through_untouched() -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(scope)
        await send({"type": "lifespan.startup.complete"})

    sent: list[Message] = []

    async def run() -> None:
        async def receive() -> Message:
            return {"type": "lifespan.startup"}

        async def send(message: Message) -> None:
            sent.append(message)

        await edge(app)({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(run())
    assert got == [{"type": "lifespan", "asgi": {"version": "3.0"}}] and sent == [{"type": "lifespan.startup.complete"}]


def test_a_websocket_is_echoed_at_its_handshake_and_its_line_written_at_close(lines: io.StringIO) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept", "headers": [(b"X-Correlation-ID", b"theirs")]})
        await send({"type": "websocket.close", "code": 1000})

    sent: list[Message] = []

    async def run() -> None:
        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws", "headers": [(b"x-correlation-id", b"cid-ws")],
                 "client": ("127.0.0.1", 50000)}  # fmt: skip
        await edge(app)(scope, receive, send)

    asyncio.run(run())
    assert [value for name, value in sent[0]["headers"] if name.lower() == b"x-correlation-id"] == [b"cid-ws"]
    (line,) = access_lines(lines)
    assert line["status"] == 101 and line["correlation_id"] == "cid-ws" and line["path"] == "/ws"
