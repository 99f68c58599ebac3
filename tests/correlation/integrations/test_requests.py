"""Outgoing `requests` calls carry the hop without the caller passing anything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from correlation import context, outgoing, traceparent
from correlation.integrations.requests import instrument_requests, uninstrument_requests
from correlation.metrics import CLIENT_DURATION
from fakes import HeaderEcho, LoopbackServer

pytestmark = pytest.mark.unit


@pytest.fixture
def echo_server() -> Iterator[str]:
    context.set_service("caller-svc")
    instrument_requests()
    with LoopbackServer(HeaderEcho) as server:
        yield server.url
    uninstrument_requests()


def test_calls_inside_a_hop_carry_it(echo_server: str) -> None:
    with context.bound() as hop:
        seen = requests.get(echo_server, timeout=5).json()
    assert seen["x-correlation-id"] == hop.correlation_id
    assert seen["x-parent-request-id"] == hop.request_id
    assert seen["x-caller-service"] == "caller-svc"
    assert traceparent.parse(seen["traceparent"]) == (hop.correlation_id, hop.request_id, True)


def test_sessions_and_threads_too(echo_server: str) -> None:
    session = requests.Session()
    with context.bound() as hop:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            seen = context.submit(pool, lambda: session.get(echo_server, timeout=5).json()).result()
    assert seen["x-correlation-id"] == hop.correlation_id


def test_foreign_ids_travel_without_traceparent(echo_server: str) -> None:
    with context.bound(context.Hop.start("lb-7f3a.req_0042")):
        seen = requests.get(echo_server, timeout=5).json()
    assert seen["x-correlation-id"] == "lb-7f3a.req_0042" and "traceparent" not in seen


def test_nothing_is_added_outside_a_request_and_caller_headers_win(echo_server: str) -> None:
    assert "x-correlation-id" not in requests.get(echo_server, timeout=5).json()
    with context.bound():
        seen = requests.get(echo_server, headers={"X-Correlation-ID": "explicit"}, timeout=5).json()
    assert seen["x-correlation-id"] == "explicit"


def test_outgoing_calls_are_measured_per_downstream(echo_server: str) -> None:
    downstream = echo_server.removeprefix("http://")
    requests.get(echo_server, timeout=5)
    assert CLIENT_DURATION.labels("caller-svc", downstream, "GET", "200").count == 1
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:9", timeout=2)
    assert CLIENT_DURATION.labels("caller-svc", "127.0.0.1:9", "GET", "error").count > 0


def test_outgoing_headers_for_other_clients() -> None:
    assert outgoing.outgoing_headers() == {}
    hop = context.Hop.start()
    context.set_service("s")
    headers = outgoing.outgoing_headers(hop, header="X-Trace")
    assert headers["X-Trace"] == hop.correlation_id and headers["X-Caller-Service"] == "s"


def test_peers_are_named_by_their_answer_else_host(echo_server: str) -> None:
    requests.get(f"{echo_server}/named/stock-svc", timeout=5)
    assert CLIENT_DURATION.labels("caller-svc", "stock-svc", "GET", "200").count > 0
    hostile = "a b/" + "x" * 80  # not a valid name: the host:port stands in, never the URL
    assert outgoing.peer_name(hostile, "http://10.9.8.7:1234/some/path?q=1") == "10.9.8.7:1234"


def test_failed_calls_are_noted_on_the_hop_in_order(echo_server: str) -> None:
    with context.bound() as hop:
        requests.get(f"{echo_server}/named/fine", timeout=5)
        assert hop.failed_calls == [], "a 200 is no failure"
        requests.get(f"{echo_server}/fail/payments", timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get("http://127.0.0.1:9", timeout=2)
    assert hop.failed_calls == ["payments", "127.0.0.1:9"]


def test_timeouts_are_told_apart_from_errors(echo_server: str) -> None:  # instruments requests
    import socket

    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        peer = f"127.0.0.1:{silent.getsockname()[1]}"
        with context.bound() as hop, pytest.raises(requests.Timeout):
            requests.get(f"http://{peer}/", timeout=0.2)
    assert hop.failed_calls == [peer]
    assert CLIENT_DURATION.labels(context.service(), peer, "GET", "timeout").count > 0


def test_peer_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outgoing, "_peers", set())
    names = {outgoing.peer_name(f"svc{i}", "http://h:1") for i in range(outgoing.MAX_PEERS + 10)}
    assert len(names) == outgoing.MAX_PEERS + 1 and "other" in names


def test_a_peer_that_stops_answering_keeps_its_service_name(echo_server: str) -> None:
    requests.get(f"{echo_server}/named/stock", timeout=5)
    assert outgoing.peer_name(None, f"{echo_server}/anything") == "stock", "remembered from its last answer"
    assert outgoing.peer_name(None, "http://127.0.0.1:1/") == "127.0.0.1:1", "never answered: the address"


def _unsampled_hop() -> context.Hop:
    """A hop of a trace its first service did not sample, with another tracing system's tracestate."""
    return context.Hop.start("0af7651916cd43dd8448eb211c80319c", None, False, "congo=t61rcWkgMzE")


def test_the_traces_sampled_flag_and_tracestate_go_on(echo_server: str) -> None:
    with context.bound(_unsampled_hop()) as hop:
        seen = requests.get(echo_server, timeout=5).json()
    assert traceparent.parse(seen["traceparent"]) == (hop.correlation_id, hop.request_id, False)
    assert seen["tracestate"] == "congo=t61rcWkgMzE"


def test_a_callers_own_traceparent_keeps_our_tracestate_off(echo_server: str) -> None:
    theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with context.bound(_unsampled_hop()):
        seen = requests.get(echo_server, headers={"TraceParent": theirs}, timeout=5).json()
    assert seen["traceparent"] == theirs and "tracestate" not in seen, "that tracestate is another trace's"
