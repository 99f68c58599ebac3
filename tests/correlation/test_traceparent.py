"""W3C traceparent: what we emit always parses and round-trips the correlation ID."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correlation import ids, traceparent

pytestmark = pytest.mark.unit

W3C = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


@given(st.integers(min_value=1_577_836_800_000, max_value=2**48 - 1))
def test_emitted_traceparent_parses_and_round_trips(ms: int) -> None:
    cid, rid = ids.new_correlation_id(now_ms=ms), ids.new_request_id()
    header = traceparent.build(cid, rid)
    assert header is not None and W3C.fullmatch(header)
    assert traceparent.parse(header) == (cid, rid, True)


@given(st.text(max_size=40), st.text(max_size=20))
def test_build_never_emits_a_malformed_header(trace_id: str, parent_id: str) -> None:
    header = traceparent.build(trace_id, parent_id)
    assert header is None or W3C.fullmatch(header)


def test_parse_refuses_malformed_headers() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert traceparent.parse(good) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True)
    for bad in [
        None,
        "",
        good.upper(),
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        good + "-extra",  # version 00 has exactly four fields
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "x" * 10_000,
    ]:
        assert traceparent.parse(bad) is None, bad
    # A future version may add fields: read the first four.
    assert traceparent.parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more") is not None


def test_foreign_correlation_ids_get_no_traceparent() -> None:
    assert traceparent.build("lb-7f3a.req_0042", ids.new_request_id()) is None


def test_the_sampled_flag_is_read_and_sent_and_other_flags_are_sent_as_zero() -> None:
    trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    assert traceparent.parse(f"00-{trace}-{parent}-00") == (trace, parent, False)
    assert traceparent.parse(f"00-{trace}-{parent}-09") == (trace, parent, True), "a bit field: mask, not compare"
    assert traceparent.parse(f"00-{trace}-{parent}-fe") == (trace, parent, False)
    assert traceparent.parse(f"cc-{trace}-{parent}-00-future") == (trace, parent, False), "a higher version's flag"
    assert traceparent.build(trace, parent, sampled=False) == f"00-{trace}-{parent}-00"
    assert traceparent.build(trace, parent, sampled=True) == f"00-{trace}-{parent}-01", "09 in, 01 out"
