"""The fake Loki behaves as Loki where the tests rely on it: what the real shipper pushes, ``trail``
finds; LogQL filters keep and drop lines as Loki does; queries it cannot answer are refused with
the reason, never answered with a silent empty result."""

from __future__ import annotations

import json
import logging
import time

import pytest

from correlation import context, schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes import FakeLoki
from fakes.trail_lines import access_line, checkout_lines, log_line, push_all
from tests.support.shipper import make_handler
from trail.logql import error_lines_query, last_error_query
from trail.loki_query import LokiQueryClient, LokiQueryError
from trail.lookup import lookup_trail

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_750_000_000 * S


def client(loki: FakeLoki) -> LokiQueryClient:
    return LokiQueryClient(LokiSettings(url=loki.url))


def test_lines_the_real_shipper_pushes_are_found_by_trail(loki: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki)
    logger.addHandler(handler)
    with context.bound() as hop:
        for n in range(3):
            logger.warning("step %d", n)
    logger.info("another request's line")
    loki.wait_for(lambda entries: len(entries) == 4)
    found = lookup_trail(client(loki), hop.correlation_id)
    own = [e.line for e in loki.entries if e.metadata.get(schema.CORRELATION_ID) == hop.correlation_id]
    assert len(own) == 3 and [e.line for e in found.entries] == own
    assert {e.label(schema.CORRELATION_ID) for e in found.entries} == {hop.correlation_id}
    assert all(q.query == found.query for q in loki.queries)


def test_last_error_keeps_failed_access_lines_only(loki: FakeLoki) -> None:
    cid = new_correlation_id(now_ms=T0 // 1_000_000)
    push_all(loki, checkout_lines(cid, T0))  # payments 500, orders and gateway 502
    ok_id = new_correlation_id(now_ms=T0 // 1_000_000)
    push_all(loki, [access_line(ok_id, "e0", None, "gateway", T0, 5.0, "GET", "/healthz", 200)])
    # Mentions the access logger but is no JSON object / has a status that is no number: Loki
    # keeps such lines flagged with __error__, and the query's __error__="" drops them.
    loki.push(T0 + 50, f"plain text naming {schema.ACCESS_LOGGER}", service="gateway")
    _, odd = log_line(cid, "f0", None, "gateway", T0 + 60, "odd", logger=schema.ACCESS_LOGGER, status="n/a")
    loki.push(T0 + 60, odd)

    failed = client(loki).query_range(last_error_query(), T0, T0 + S, limit=100, direction="backward")
    assert sorted((e.label(schema.SERVICE_LABEL), json.loads(e.line)[schema.STATUS]) for e in failed) == [
        ("gateway", 502),
        ("orders", 502),
        ("payments", 500),
    ]
    payments = client(loki).query_range(last_error_query("payments"), T0, T0 + S, limit=100)
    assert [e.label(schema.SERVICE_LABEL) for e in payments] == ["payments"]
    errors = client(loki).query_range(error_lines_query("payments"), T0, T0 + S, limit=100)
    assert len(errors) == 2, "the ERROR line and the 500 access line, by metadata level"


@pytest.mark.parametrize(
    "query, says",
    [
        ('{correlation_id="abc"}', "not a stream label"),
        ('{service_name=~".*"}', "empty-compatible"),
        ('{service_name="a"} | status >= 500', "no label 'status'"),
        ('{service_name="a"} | json status="status" | status >= "500"', "needs a number"),
        ('{service_name="a"} |', "unexpected end"),
        ('{service_name="a"} | ?', "parse error"),
    ],
)
def test_queries_it_cannot_answer_are_refused_with_the_reason(loki: FakeLoki, query: str, says: str) -> None:
    with pytest.raises(LokiQueryError) as refused:
        client(loki).query_range(query, T0, T0 + S, limit=10)
    assert refused.value.status == 400 and says in refused.value.message


def test_pushes_and_queries_are_recorded_in_arrival_order(loki: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki)
    logger.addHandler(handler)
    logger.info("one")
    loki.wait_for(lambda entries: len(entries) == 1)
    started = time.monotonic()
    client(loki).query_range(error_lines_query("svc"), T0, T0 + S, limit=10)
    assert [r.path for r in loki.requests] == ["/loki/api/v1/push", "/loki/api/v1/query_range"]
    assert loki.requests[0].received_at < started <= loki.requests[1].received_at
    assert [q.query for q in loki.queries] == [error_lines_query("svc")]
