"""IDs: layout, uniqueness, order, validation, and reading the time back (never a wrong time)."""

from __future__ import annotations

import time
import uuid
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation import ids

pytestmark = pytest.mark.unit

NOW_MS = int(time.time() * 1000)
plausible_ms = st.integers(min_value=1_577_836_800_000, max_value=NOW_MS)


def test_generated_id_is_a_uuidv7_in_32_hex_digits() -> None:
    cid = ids.new_correlation_id()
    parsed = uuid.UUID(hex=cid)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert len(cid) == 32 and cid == cid.lower()
    assert ids.is_valid_id(cid)
    assert len('correlation_id=""') + len(cid) <= 128, "fits the exemplar label limit"


def test_ids_are_unique_in_bulk_within_one_millisecond() -> None:
    generated = {ids.new_correlation_id(now_ms=NOW_MS) for _ in range(100_000)}
    assert len(generated) == 100_000


def test_request_ids_are_span_id_shaped_and_unique() -> None:
    generated = {ids.new_request_id() for _ in range(50_000)}
    assert len(generated) == 50_000
    assert all(len(r) == 16 and int(r, 16) != 0 for r in generated)


def test_a_new_trail_draws_both_ids_at_once_each_in_its_own_shape() -> None:
    # new_ids is what every fresh request calls: the same layouts as the two functions, and bits
    # that are not shared (a request ID is not a slice of its correlation ID).
    pairs = [ids.new_ids() for _ in range(20_000)]
    for correlation_id, request_id in pairs:
        parsed = uuid.UUID(hex=correlation_id)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and correlation_id == correlation_id.lower()
        assert len(request_id) == 16 and int(request_id, 16) != 0 and request_id not in correlation_id
    assert len({c for c, _ in pairs}) == len({r for _, r in pairs}) == 20_000
    assert abs(ids.time_ms_of(pairs[-1][0]) - time.time() * 1000) < 5_000  # type: ignore[operator]
    assert ids.new_ids(now_ms=0x0123456789AB)[0].startswith("0123456789ab7")


def test_every_random_bit_of_a_new_trail_varies_and_the_fixed_ones_do_not() -> None:
    # new_ids writes the UUID as one int with the version and variant put over 6 of 80 random
    # bits: the other 74 (12 rand_a, 62 rand_b) must all vary, and the request ID's 64 too.
    pairs = [ids.new_ids(now_ms=0x0123456789AB) for _ in range(2_000)]
    correlation_ints = [int(c, 16) for c, _ in pairs]
    request_ints = [int(r, 16) for _, r in pairs]
    random_bits = (1 << 80) - 1 & ~(0xF << 76) & ~(0b11 << 62)
    ones = zeros = 0
    for value in correlation_ints:
        ones |= value
        zeros |= ~value
    assert ones & random_bits == random_bits and zeros & random_bits == random_bits, "74 random bits, each seen 0 and 1"
    assert {value >> 80 for value in correlation_ints} == {0x0123456789AB}, "the time, untouched"
    assert {value >> 76 & 0xF for value in correlation_ints} == {7} and {
        value >> 62 & 0b11 for value in correlation_ints
    } == {2}
    ones = zeros = 0
    for value in request_ints:
        ones |= value
        zeros |= ~value
    assert ones & (1 << 64) - 1 == zeros & (1 << 64) - 1 == (1 << 64) - 1, "64 random bits"


@given(plausible_ms, st.integers(min_value=1, max_value=10**6))
def test_ids_sort_by_time_across_milliseconds(ms: int, later: int) -> None:
    later_ms = min(ms + later, NOW_MS)
    if later_ms == ms:
        return
    assert ids.new_correlation_id(now_ms=ms) < ids.new_correlation_id(now_ms=later_ms)


@given(plausible_ms)
def test_time_round_trips_to_the_millisecond(ms: int) -> None:
    cid = ids.new_correlation_id(now_ms=ms)
    assert ids.time_ms_of(cid) == ms
    created = ids.time_of(cid)
    assert created is not None and created.timestamp() * 1000 == ms
    assert ids.rejection_reason(cid) is None


@settings(max_examples=500)
@given(st.text(max_size=100))
def test_foreign_strings_never_yield_a_time(value: str) -> None:
    # A random string that happens to look like a UUIDv7 with a plausible time is vanishingly rare;
    # anything else must answer None.
    result = ids.time_ms_of(value)
    assert result is None or (len(value) == 32 and value[12] == "7")


def test_foreign_and_implausible_ids_have_no_time() -> None:
    future = ids.new_correlation_id(now_ms=NOW_MS + 3_600_000)
    ancient = ids.new_correlation_id(now_ms=1_000)
    for value in [
        uuid.uuid4().hex,  # version 4: no time
        str(uuid.uuid4()),
        "lb-7f3a.req_0042",
        future,  # an hour ahead: not clock skew
        ancient,  # before 2020
        ids.new_correlation_id().upper(),  # not our lowercase layout
        "",
        "\x1b[31m",
    ]:
        assert ids.time_of(value) is None, value
    assert ids.time_of(None) is None  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_validator_accepts_exactly_the_safe_charset(value: str) -> None:
    ok = ids.is_valid_id(value)
    assert ok == (0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-") for c in value))
    assert (ids.rejection_reason(value) is None) == ok


def test_rejection_reasons() -> None:
    assert ids.rejection_reason("") == "empty"
    assert ids.rejection_reason("a" * 65) == "too_long"
    assert ids.rejection_reason("a b") == "bad_characters"


def test_printable_escapes_and_truncates() -> None:
    shown = ids.printable("a\r\nb\x1b[31m" + "x" * 500)
    assert "\r" not in shown and "\n" not in shown and "\x1b" not in shown
    assert shown.startswith("a\\r\\nb\\x1b[31m") and shown.endswith("(+429 chars)")


def test_forked_processes_draw_different_ids() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, (ids.new_correlation_id(now_ms=NOW_MS) + ids.new_request_id()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    mine = ids.new_correlation_id(now_ms=NOW_MS) + ids.new_request_id()
    assert len(child) == 48 and child != mine


def test_the_shard_of_our_id_is_its_last_random_digit_and_spreads_over_16_values() -> None:
    drawn = [ids.new_correlation_id() for _ in range(4000)]
    assert all(ids.shard_of(cid) == cid[-1] for cid in drawn)
    counts = {value: sum(ids.shard_of(c) == value for c in drawn) for value in ids.SHARD_VALUES}
    assert min(counts.values()) > 150, counts  # 250 expected each: no value starved


@given(st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
def test_every_acceptable_id_has_one_stable_shard_of_16(cid: str) -> None:
    shard = ids.shard_of(cid)
    assert shard in ids.SHARD_VALUES and len(shard) == 1 and ids.shard_of(cid) == shard


def test_a_foreign_id_is_sharded_by_its_crc32() -> None:
    assert ids.shard_of("order-4711") == f"{zlib.crc32(b'order-4711') & 15:x}"
    upper = "0192F0C4E2A87ABC8DEF0123456789AB"  # not our lowercase layout: hashed, not its last digit
    assert ids.shard_of(upper) == f"{zlib.crc32(upper.encode()) & 15:x}"
