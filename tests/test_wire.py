"""The wire module alone: what a message's headers start, and what an outgoing one carries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import context, ids, schema, traceparent, wire

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_sources_in_order_of_preference() -> None:
    both = wire.from_headers({"X-Correlation-ID": "primary", "X-Request-ID": "second", "traceparent": TP})
    assert both.hop.correlation_id == "primary"
    assert both.hop.parent_request_id is None, "another trace's parent is not this request's parent"
    assert wire.from_headers({"x-request-id": "second"}).hop.correlation_id == "second", "names are case-insensitive"
    from_tp = wire.from_headers({"traceparent": TP}).hop
    assert (from_tp.correlation_id, from_tp.parent_request_id) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    custom = wire.from_headers({"X-Trace-Token": "tok", "X-Correlation-ID": "ignored"}, header="X-Trace-Token")
    assert custom.hop.correlation_id == "tok"


def test_environ_and_headers_read_the_same() -> None:
    environ = {
        "HTTP_X_CORRELATION_ID": "abc",
        "HTTP_X_PARENT_REQUEST_ID": "0123456789abcdef",
        "HTTP_X_CALLER_SERVICE": "gw",
    }
    headers = {"X-Correlation-ID": "abc", "X-Parent-Request-ID": "0123456789abcdef", "X-Caller-Service": "gw"}
    a, b = wire.from_environ(environ), wire.from_headers(headers)
    assert (a.hop.correlation_id, a.hop.parent_request_id, a.caller) == (
        b.hop.correlation_id,
        b.hop.parent_request_id,
        b.caller,
    )
    assert a.caller == "gw" and a.hop.request_id != b.hop.request_id, "each read starts its own hop"


def test_refused_values_are_reported_not_raised() -> None:
    inbound = wire.from_headers(
        {"X-Correlation-ID": "a b", "X-Parent-Request-ID": "\x1b[2J", "X-Caller-Service": "x y"}
    )
    assert [(r.header, r.reason) for r in inbound.rejections] == [
        ("X-Correlation-ID", "bad_characters"),
        (schema.PARENT_HEADER, "bad_characters"),
    ]
    assert ids.time_of(inbound.hop.correlation_id) is not None and inbound.hop.parent_request_id is None
    assert inbound.caller is None


def test_a_refused_id_is_not_smuggled_in_through_traceparent() -> None:
    inbound = wire.from_headers({"X-Correlation-ID": "bad id", "traceparent": TP})
    assert inbound.hop.correlation_id != "0af7651916cd43dd8448eb211c80319c"
    bad_tp = wire.from_headers({"traceparent": "garbage"})
    assert [r.reason for r in bad_tp.rejections] == ["bad_traceparent"]


def test_outgoing_headers_round_trip() -> None:
    hop = context.Hop.start(parent_request_id="1111222233334444")
    out = wire.headers(hop, "orders")
    assert out[schema.CORRELATION_HEADER] == hop.correlation_id and out[schema.CALLER_HEADER] == "orders"
    assert traceparent.parse(out[schema.TRACEPARENT_HEADER]) == (hop.correlation_id, hop.request_id, True)
    callee = wire.from_headers(out)
    assert callee.hop.correlation_id == hop.correlation_id and callee.hop.parent_request_id == hop.request_id
    assert callee.caller == "orders" and callee.rejections == ()
    assert schema.TRACEPARENT_HEADER not in wire.headers(context.Hop.start("foreign.id-1"), "s"), "not a trace-id"


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(["X-Correlation-ID", "X-Request-ID", "X-Parent-Request-ID", "traceparent", "X-Caller-Service"]),
        st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=100),
    )
)
def test_any_headers_give_a_valid_hop_and_a_reason_for_each_refusal(values: dict[str, str]) -> None:
    inbound = wire.from_headers(values)
    assert ids.is_valid_id(inbound.hop.correlation_id)
    assert inbound.hop.parent_request_id is None or ids.is_valid_id(inbound.hop.parent_request_id)
    assert all(r.reason in ("empty", "too_long", "bad_characters", "bad_traceparent") for r in inbound.rejections)
    if ids.is_valid_id(values.get("X-Correlation-ID", "")):
        assert inbound.hop.correlation_id == values["X-Correlation-ID"]


@pytest.mark.parametrize("header", ["X-Correlation-ID", "x-trace-token"])
def test_environ_keys(header: str) -> None:
    assert wire.environ_key(header) == "HTTP_" + header.upper().replace("-", "_")
