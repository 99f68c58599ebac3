"""CORRELATION_TRUST_INBOUND: whose IDs the edge keeps, and what it keeps of the others'."""

from __future__ import annotations

import io
import ipaddress
import json
import logging

import flask
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import ConfigError, Correlation, Settings, ids
from correlation.log.formatter import JsonFormatter
from correlation.trust import TrustPolicy

pytestmark = pytest.mark.unit

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
networks = st.lists(
    st.tuples(ipv4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(nets=networks, peer=ipv4)
def test_a_peer_is_trusted_exactly_when_inside_a_range(nets: list[ipaddress.IPv4Network], peer: str) -> None:
    policy = TrustPolicy.parse(",".join(str(n) for n in nets))
    assert policy.trusts(peer) == any(ipaddress.ip_address(peer) in n for n in nets)
    assert policy.trusts(f"::ffff:{peer}") == policy.trusts(peer), "IPv4-mapped IPv6 is the same peer"


@settings(max_examples=100, deadline=None)
@given(peer=st.one_of(st.none(), ipv4, st.text(max_size=40)))
def test_all_trusts_everyone_none_no_one(peer: str | None) -> None:
    assert TrustPolicy.parse("all").trusts(peer) and not TrustPolicy.parse("none").trusts(peer)
    assert not TrustPolicy.parse("10.0.0.0/8").trusts("not-an-address" if peer is None else peer + "x")


def test_the_default_is_private_networks_and_this_machine() -> None:
    default = Settings.from_env({}).trust_inbound
    assert default == TrustPolicy.parse("private") == TrustPolicy.parse(" PRIVATE ") and str(default) == "private"
    for peer in ("10.0.0.1", "172.31.255.255", "192.168.1.1", "127.0.0.1", "::1", "fc00::1", "::ffff:10.1.2.3"):
        assert default.trusts(peer), peer
    for stranger in ("203.0.113.9", "172.32.0.1", "8.8.8.8", "2001:db8::1", "169.254.1.1", None):
        assert not default.trusts(stranger), stranger


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "everyone", "10.0.0.0/8,,", "1.2.3.4/8/1"])
def test_bad_settings_stop_the_service_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ConfigError, match="CORRELATION_TRUST_INBOUND"):
        Settings.from_env({"CORRELATION_TRUST_INBOUND": bad})


def _app(trust: str) -> tuple[flask.Flask, io.StringIO, logging.Handler]:
    app = flask.Flask("trust")
    app.get("/")(lambda: "ok")
    Correlation(
        app, Settings.from_env({"CORRELATION_TRUST_INBOUND": trust}, service="edge-trust"), propagate_requests=False
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    return app, stream, handler


@pytest.mark.parametrize(
    "trust, peer, kept",
    [
        ("", "10.1.2.3", True),  # the default, private: a system's own services keep each other's IDs
        ("", "fd12::7", True),
        ("", "203.0.113.9", False),  # and anyone else starts a fresh trail
        ("all", "203.0.113.9", True),
        ("none", "10.1.2.3", False),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "203.0.113.9", False),
    ],
)
def test_the_edge_keeps_trusted_ids_and_records_the_others(trust: str, peer: str, kept: bool) -> None:
    app, stream, handler = _app(trust)
    access = logging.getLogger("correlation.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        response = app.test_client().get(
            "/",
            headers={"X-Correlation-ID": "client-chosen-1", "X-Parent-Request-ID": "p1"},
            environ_base={"REMOTE_ADDR": peer},
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    (line,) = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    if kept:
        assert response.headers["X-Correlation-ID"] == "client-chosen-1" and "client_correlation_id" not in line
    else:
        fresh = response.headers["X-Correlation-ID"]
        assert fresh != "client-chosen-1" and ids.time_of(fresh) is not None
        assert line["client_correlation_id"] == "client-chosen-1" and line["parent_request_id"] is None
