"""The push body: whatever the lines hold, Loki's format is respected and nothing is altered."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
