"""The wire module alone: what a message's headers start, and what an outgoing one carries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import context, ids, schema, traceparent, wire

pytestmark = pytest.mark.unit

TRACE = "0af7651916cd43dd8448eb211c80319c"
TP = f"00-{TRACE}-b7ad6b7169203331-01"
UNSAMPLED = f"00-{TRACE}-b7ad6b7169203331-00"
STATE = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"


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
        st.sampled_from(
            ["X-Correlation-ID", "X-Request-ID", "X-Parent-Request-ID", "traceparent", "tracestate", "X-Caller-Service"]
        ),
        st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=100),
    )
)
def test_any_headers_give_a_valid_hop_and_a_reason_for_each_refusal(values: dict[str, str]) -> None:
    inbound = wire.from_headers(values)
    assert ids.is_valid_id(inbound.hop.correlation_id)
    assert inbound.hop.parent_request_id is None or ids.is_valid_id(inbound.hop.parent_request_id)
    reasons = ("empty", "too_long", "bad_characters", "bad_traceparent", "bad_tracestate", "tracestate_truncated")
    assert all(r.reason in reasons for r in inbound.rejections)
    if ids.is_valid_id(values.get("X-Correlation-ID", "")):
        assert inbound.hop.correlation_id == values["X-Correlation-ID"]


@pytest.mark.parametrize("header", ["X-Correlation-ID", "x-trace-token"])
def test_environ_keys(header: str) -> None:
    assert wire.environ_key(header) == "HTTP_" + header.upper().replace("-", "_")


# -- W3C Trace Context: the sampled flag and tracestate, end to end -----------------------------


def _sent_on(inbound: wire.Inbound) -> dict[str, str]:
    return wire.headers(inbound.hop, "svc")


def test_an_unsampled_trace_stays_unsampled_and_its_tracestate_goes_on_unchanged() -> None:
    for source in ({"traceparent": UNSAMPLED}, {"X-Correlation-ID": TRACE, "traceparent": UNSAMPLED}):
        inbound = wire.from_headers({**source, "tracestate": STATE})
        out = _sent_on(inbound)
        assert traceparent.parse(out["traceparent"]) == (TRACE, inbound.hop.request_id, False), source
        assert out["tracestate"] == STATE and inbound.rejections == ()
        # ... and on from the next hop, which reads what this one sent (our own services' headers).
        again = _sent_on(wire.from_headers(out))
        assert again["traceparent"].endswith("-00") and again["tracestate"] == STATE
    sampled = _sent_on(wire.from_headers({"traceparent": TP, "tracestate": STATE}))
    assert sampled["traceparent"].endswith("-01") and sampled["tracestate"] == STATE


def test_a_trail_that_starts_here_is_sent_as_sampled_without_tracestate() -> None:
    for inbound in (wire.from_headers({}), wire.from_environ({}), wire.from_headers({"X-Correlation-ID": TRACE})):
        out = _sent_on(inbound)
        assert out["traceparent"].endswith("-01") and "tracestate" not in out


def test_flags_and_tracestate_of_another_trace_are_not_this_ones() -> None:
    """An ID from X-Correlation-ID beside a traceparent of another trace-id: the hop is not in that
    trace, so neither its flag nor its tracestate describe what we send."""
    ours = "1" * 32
    out = _sent_on(wire.from_headers({"X-Correlation-ID": ours, "traceparent": UNSAMPLED, "tracestate": STATE}))
    assert out["traceparent"].startswith(f"00-{ours}-") and out["traceparent"].endswith("-01")
    assert "tracestate" not in out
    refused = wire.from_headers({"X-Correlation-ID": "bad id", "traceparent": UNSAMPLED, "tracestate": STATE})
    assert "tracestate" not in _sent_on(refused) and refused.hop.sampled
    alone = wire.from_headers({"X-Correlation-ID": TRACE, "tracestate": STATE})
    assert "tracestate" not in _sent_on(alone), "no traceparent: no trace for it to belong to"


def test_an_untrusted_sender_sets_no_flag_and_no_tracestate() -> None:
    sent = {"traceparent": UNSAMPLED, "tracestate": STATE}
    for inbound in (
        wire.from_headers(sent, trusted=False),
        wire.from_environ({"HTTP_TRACEPARENT": UNSAMPLED, "HTTP_TRACESTATE": STATE}, trusted=False),
    ):
        out = _sent_on(inbound)
        assert TRACE not in out["traceparent"] and out["traceparent"].endswith("-01") and "tracestate" not in out


def test_a_bad_tracestate_is_dropped_and_reported_and_the_trace_goes_on() -> None:
    inbound = wire.from_environ({"HTTP_TRACEPARENT": UNSAMPLED, "HTTP_TRACESTATE": "congo=x\x00"})
    assert [(r.header, r.reason) for r in inbound.rejections] == [("tracestate", "bad_tracestate")]
    out = _sent_on(inbound)
    assert out["traceparent"].startswith(f"00-{TRACE}-") and out["traceparent"].endswith("-00")
    assert "tracestate" not in out
    long = ",".join(f"vendor{n:02}=" + "x" * 60 for n in range(10))
    cut = wire.from_headers({"traceparent": TP, "tracestate": long})
    assert [r.reason for r in cut.rejections] == ["tracestate_truncated"]
    assert long.startswith(_sent_on(cut)["tracestate"])


def test_a_bad_traceparent_is_reported_even_when_the_ids_came_from_our_headers() -> None:
    """It is not followed, so its flag is lost: that drop is counted too."""
    inbound = wire.from_headers({"X-Correlation-ID": TRACE, "X-Parent-Request-ID": "b7ad6b7169203331",
                                 "traceparent": f"00-{TRACE}-b7ad6b7169203331-0"})  # fmt: skip
    assert [r.reason for r in inbound.rejections] == ["bad_traceparent"]
    assert inbound.hop.correlation_id == TRACE and inbound.hop.sampled


def test_a_callers_own_traceparent_keeps_ours_and_our_tracestate_off() -> None:
    hop = wire.from_headers({"traceparent": UNSAMPLED, "tracestate": STATE}).hop
    set_by_caller = {"traceparent"}
    added = dict(wire.headers_to_add(hop, "svc", schema.CORRELATION_HEADER, set_by_caller.__contains__))
    assert "traceparent" not in added and "tracestate" not in added
    assert added[schema.CORRELATION_HEADER] == TRACE
    everything = dict(wire.headers_to_add(hop, "svc", schema.CORRELATION_HEADER, lambda name: False))
    assert everything == wire.headers(hop, "svc")
