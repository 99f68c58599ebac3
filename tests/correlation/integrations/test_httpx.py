"""httpx calls carry the hop like requests calls: a real httpx against a real loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from correlation import context, traceparent
from correlation.integrations.httpx import CorrelationTransport, instrument_httpx, uninstrument_httpx
from correlation.metrics import CLIENT_DURATION
from fakes import HeaderEcho, LoopbackServer

pytestmark = pytest.mark.unit


@pytest.fixture
def echo() -> Iterator[str]:
    context.set_service("httpx-caller")
    instrument_httpx()
    with LoopbackServer(HeaderEcho) as server:
        yield server.url
    uninstrument_httpx()


def test_sync_client_carries_the_hop(echo: str) -> None:
    with context.bound() as hop, httpx.Client() as client:
        seen = client.get(echo).json()
    assert seen["x-correlation-id"] == hop.correlation_id and seen["x-parent-request-id"] == hop.request_id
    assert seen["x-caller-service"] == "httpx-caller"
    assert traceparent.parse(seen["traceparent"]) == (hop.correlation_id, hop.request_id, True)


def test_async_tasks_each_carry_their_own_hop(echo: str) -> None:
    async def one(client: httpx.AsyncClient) -> tuple[str, str]:
        with context.bound() as hop:
            seen = (await client.get(echo)).json()
        return hop.correlation_id, seen["x-correlation-id"]

    async def many() -> list[tuple[str, str]]:
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(one(client) for _ in range(5)))

    pairs = asyncio.run(many())
    assert all(sent == received for sent, received in pairs) and len({sent for sent, _ in pairs}) == 5


def test_nothing_outside_a_hop_and_caller_headers_win(echo: str) -> None:
    with httpx.Client() as client:
        assert "x-correlation-id" not in client.get(echo).json()
        with context.bound():
            assert client.get(echo, headers={"X-Correlation-ID": "mine"}).json()["x-correlation-id"] == "mine"


def test_failures_are_noted_and_measured_per_peer(echo: str) -> None:
    with context.bound() as hop, httpx.Client(timeout=2) as client:
        client.get(f"{echo}/fail/payments")
        with pytest.raises(httpx.ConnectError):
            client.get("http://127.0.0.1:9/")
    assert hop.failed_calls == ["payments", "127.0.0.1:9"]
    assert CLIENT_DURATION.labels("httpx-caller", "payments", "GET", "503").count > 0


def test_a_transport_of_your_own_can_be_wrapped() -> None:
    uninstrument_httpx()  # only the wrapper adds the headers here
    with (
        LoopbackServer(HeaderEcho) as server,
        httpx.Client(transport=CorrelationTransport(httpx.HTTPTransport())) as client,
    ):
        with context.bound() as hop:
            assert client.get(server.url).json()["x-correlation-id"] == hop.correlation_id


def test_the_traces_sampled_flag_and_tracestate_go_on_and_a_callers_traceparent_wins(echo: str) -> None:
    theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    hop = context.Hop.start("0af7651916cd43dd8448eb211c80319c", None, False, "congo=t61rcWkgMzE")
    with context.bound(hop), httpx.Client() as client:
        seen = client.get(echo).json()
        own = client.get(echo, headers={"traceparent": theirs}).json()
    assert traceparent.parse(seen["traceparent"]) == (hop.correlation_id, hop.request_id, False)
    assert seen["tracestate"] == "congo=t61rcWkgMzE"
    assert own["traceparent"] == theirs and "tracestate" not in own
