"""W3C tracestate: what is passed on unchanged, what is cut by whole members, what is dropped."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correlation import tracestate
from correlation.tracestate import BAD, MAX_LENGTH, TRUNCATED, TraceState

pytestmark = pytest.mark.unit

# A member the spec's grammar allows (https://www.w3.org/TR/trace-context-1/#tracestate-header).
MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)


def test_a_valid_list_is_passed_on_as_it_came() -> None:
    for header in [
        "congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7 ,\t, congo=t61rcWkgMzE",  # optional whitespace and an empty member
        "tenant1@vendor=a value with spaces,0tenant@v-2/x=~!",
        ",".join(f"k{n}=v" for n in range(32)),
    ]:
        assert tracestate.read(header) == TraceState(header, None), header
    assert tracestate.read("  congo=x \t") == TraceState("congo=x", None), "surrounding whitespace is not the list's"


def test_no_list_is_no_list_and_no_error() -> None:
    for header in [None, "", " ", ",", " , \t,"]:
        assert tracestate.read(header) == TraceState(None, None), repr(header)


def test_a_malformed_list_is_dropped_whole_with_a_reason() -> None:
    for header in [
        "Congo=x",  # keys are lowercase
        "congo",  # no value
        "congo=",  # empty value
        "congo=a,b",  # a member without '='
        "congo=x=y",  # '=' in a value
        "congo=x ,rojo=y\x7f",  # not printable ASCII
        "congo=caf\u00e9",
        "congo=x\r\nX-Injected: 1",
        "congo=1,rojo=2,congo=3",  # a key given twice
        "@vendor=x",
        ",".join(f"k{n}=v" for n in range(33)),  # more than 32 members
        "k=" + "v" * 257,  # a value past 256 characters
        "a=b," * 20_000,  # too long to look at
    ]:
        assert tracestate.read(header) == TraceState(None, BAD), header[:40]


def test_a_long_list_is_cut_by_whole_members_long_ones_first_then_from_the_right() -> None:
    small = [f"vendor{n:02}=" + "x" * 40 for n in range(12)]  # 49 characters each
    long = "big=" + "y" * 200
    header = ",".join([small[0], long, *small[1:]])
    assert len(header) > MAX_LENGTH
    value, reason = tracestate.read(header)
    assert reason == TRUNCATED and value is not None
    kept = value.split(",")
    assert long not in kept, "members over 128 characters go first"
    assert kept == small[: len(kept)] and len(kept) == 10, "then from the right, order kept"
    assert len(value) <= MAX_LENGTH < len(value) + 1 + len(small[len(kept)])
    three_long = ",".join(f"big{n}=" + "y" * 200 for n in range(3))
    assert tracestate.read(three_long) == TraceState(None, TRUNCATED), "nothing left: no list"


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=700))
def test_whatever_comes_in_what_goes_out_is_a_short_list_of_valid_members(header: str) -> None:
    value, reason = tracestate.read(header)
    if value is None:
        return
    assert len(value) <= MAX_LENGTH and "\r" not in value and "\n" not in value
    members = [m.strip(" \t") for m in value.split(",")]
    assert all(MEMBER.fullmatch(m) for m in members if m)
    assert reason == TRUNCATED or value == header.strip(" \t"), "unchanged unless cut"


@given(st.lists(st.from_regex(MEMBER, fullmatch=True), min_size=1, max_size=32, unique_by=lambda m: m.split("=")[0]))
def test_every_valid_list_is_passed_on_or_cut(members: list[str]) -> None:
    header = ",".join(members)
    value, reason = tracestate.read(header)
    if len(header) <= MAX_LENGTH:
        assert (value, reason) == (header, None)
    else:
        assert reason == TRUNCATED and (value is None or len(value) <= MAX_LENGTH)
