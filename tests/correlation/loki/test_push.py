"""The push body: whatever the lines hold, Loki's format is respected and nothing is altered."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from correlation.ids import SHARD_VALUES
from correlation.loki.buffer import PushEntry
from correlation.loki.push import push_body
from fakes import validate_push

pytestmark = pytest.mark.unit

LABELS = {"service_name": "svc", "env": "test"}
metadata = st.dictionaries(st.sampled_from(["correlation_id", "request_id", "level"]), st.text(min_size=1, max_size=70))
entries = st.lists(
    st.tuples(st.integers(min_value=1, max_value=time.time_ns()), st.text(max_size=300), metadata),
    min_size=1,
    max_size=50,
)


@given(entries)
def test_push_body_is_valid_and_round_trips(batch: list[tuple[int, str, dict[str, str]]]) -> None:
    body = json.loads(gzip.decompress(push_body([PushEntry.encode(*e) for e in batch], LABELS)))
    pushed = validate_push(body)
    assert [(p.timestamp_ns, p.line, p.metadata) for p in pushed] == sorted(batch, key=lambda e: e[0])
    assert all(p.labels == LABELS for p in pushed)


def test_lone_surrogates_and_non_ascii_survive() -> None:
    entry = PushEntry.encode(1, "caf\u00e9 \udcff \u2603", {"correlation_id": "x"})
    assert entry.fragment.isascii()
    assert entry.decode() == ("caf\u00e9 \udcff \u2603", {"correlation_id": "x"})


def test_a_push_has_one_stream_per_shard_and_keeps_each_streams_order() -> None:
    """At most 17 streams (16 shards and the lines without an ID); within one, time order, and the
    order given for entries of the same time."""
    batch = [
        PushEntry.encode(1000 - n % 7, f"line {n}", None, SHARD_VALUES[n % 16] if n % 5 else "") for n in range(400)
    ]
    body = json.loads(gzip.decompress(push_body(batch, LABELS)))
    streams = body["streams"]
    assert len(streams) == 17 and len(validate_push(body)) == 400
    assert [s["stream"] for s in streams] == [LABELS] + [{**LABELS, "shard": v} for v in SHARD_VALUES]
    for stream in streams:
        shard = stream["stream"].get("shard", "")
        given = [e for e in batch if e.shard == shard]
        expected = sorted(given, key=lambda e: e.timestamp_ns)  # stable: arrival order within a time
        assert [v[1] for v in stream["values"]] == [e.decode()[0] for e in expected]
