"""correlation.metrics.histogram: the request path's histogram exposes what prometheus_client's would."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from correlation.metrics.histogram import ExemplarHistogram

pytestmark = pytest.mark.unit

BUCKETS = (0.005, 0.1, 1.0)
# Exemplar and _created timestamps differ between the two: everything else must not.
_TIMES = re.compile(rb"\d{10}\.\d+|\d\.\d+e\+09")


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, ExemplarHistogram]:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("req_seconds", "Time.", ["route", "status"], registry=theirs, buckets=BUCKETS)
    histogram = ExemplarHistogram("req_seconds", "Time.", ["route", "status"], BUCKETS, "trace_id", registry=ours)
    return theirs, reference, ours, histogram


@pytest.mark.parametrize("generate", [generate_latest, generate_openmetrics], ids=["text", "openmetrics"])
def test_the_exposition_is_prometheus_clients(generate) -> None:
    theirs, reference, ours, histogram = _pair()
    # On a bound (falls in that bucket), between, past the last bound, two label sets, an exemplar
    # replaced by a newer one in the same bucket, one observation without an exemplar.
    observations = [("/a", "200", 0.005, "id1"), ("/a", "200", 0.05, "id2"), ("/a", "200", 0.07, "id3"),
                    ("/a", "500", 7.5, "id4"), ("/b", "200", 1.0, None), ("/b", "200", 0.0, "id5")]  # fmt: skip
    for route, status, value, exemplar in observations:
        reference.labels(route, status).observe(value, {"trace_id": exemplar} if exemplar else None)
        histogram.labels(route, status).observe(value, exemplar)
    expected = _TIMES.sub(b"T", generate(theirs))
    assert _TIMES.sub(b"T", generate(ours)) == expected
    newest = b'req_seconds_bucket{le="0.1",route="/a",status="200"} 3.0 # {trace_id="id3"} 0.07 '
    assert newest in generate_openmetrics(ours), "a bucket's exemplar is its newest observation's"


def test_no_observation_is_lost_between_threads() -> None:
    histogram = ExemplarHistogram("load_seconds", "Time.", ["route"], BUCKETS, "trace_id", registry=None)
    child = histogram.labels("/x")

    def observe() -> None:
        for i in range(20_000):
            child.observe(0.001 * (i % 3), "id")

    threads = [threading.Thread(target=observe) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (family,) = list(histogram.collect())
    count = next(s.value for s in family.samples if s.name == "load_seconds_count")
    inf = next(s.value for s in family.samples if s.labels.get("le") == "+Inf")
    assert count == inf == 120_000
    total = next(s.value for s in family.samples if s.name == "load_seconds_sum")
    assert total == pytest.approx(6 * sum(0.001 * (i % 3) for i in range(20_000)))


def test_labels_are_checked() -> None:
    histogram = ExemplarHistogram("l_seconds", "Time.", ["route", "status"], BUCKETS, "trace_id", registry=None)
    with pytest.raises(ValueError, match="expected labels"):
        histogram.labels("/only-one")
    # An int on purpose: like prometheus_client's labels(), ours str()s each value.
    assert histogram.labels("/a", 200) is histogram.labels("/a", "200")
