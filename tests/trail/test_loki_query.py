"""trail.loki_query: Loki's response shapes, paging through ``limit``, errors, auth headers."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes import FakeLoki, closed_port_url
from fakes.loopback import LoopbackServer, QuietHandler
from trail.logql import trail_query
from trail.loki_query import (
    MAX_LIMIT,
    LokiQueryClient,
    LokiQueryError,
    QueriedEntry,
    display_url,
    parse_response,
)

pytestmark = pytest.mark.unit

T0 = 1_750_000_000_000_000_000  # a fixed moment, in ns
CID = new_correlation_id(now_ms=T0 // 1_000_000)
QUERY = trail_query(CID)


def client_for(standin: FakeLoki, **settings_kw: object) -> LokiQueryClient:
    return LokiQueryClient(LokiSettings(url=standin.url, **settings_kw))  # type: ignore[arg-type]


def push_numbered(standin: FakeLoki, timestamps: list[int], cid: str = CID) -> None:
    """One line per timestamp, alternating between two services (two streams), numbered."""
    for n, ts in enumerate(timestamps):
        standin.push(ts, f"line {n}", service=("gateway", "orders")[n % 2], correlation_id=cid)


# -- response shapes -----------------------------------------------------------------------------
def test_plain_shape_merges_streams_in_time_order() -> None:
    payload = {
        "status": "success",
        "data": {
            "resultType": "streams",
            "stats": {},
            "result": [
                {"stream": {"service_name": "b", "correlation_id": "x"}, "values": [["3", "b3"], ["1", "b1"]]},
                {"stream": {"service_name": "a", "correlation_id": "x"}, "values": [["2", "a2"]]},
            ],
        },
    }
    entries = parse_response(payload)
    assert [(e.ts_ns, e.line) for e in entries] == [(1, "b1"), (2, "a2"), (3, "b3")]
    assert entries[0].label("correlation_id") == "x" and entries[0].metadata == {}


def test_categorized_shape_keeps_labels_and_metadata_apart() -> None:
    payload = {
        "status": "success",
        "data": {
            "resultType": "streams",
            "encodingFlags": ["categorize-labels"],
            "result": [
                {
                    "stream": {"service_name": "a"},
                    "values": [
                        ["5", "l5", {"structuredMetadata": {"correlation_id": "x"}, "parsed": {"status": "500"}}],
                        ["6", "l6", {}],
                    ],
                },
            ],
        },
    }
    first, second = parse_response(payload)
    assert first.labels == {"service_name": "a"}
    assert first.metadata == {"correlation_id": "x", "status": "500"}
    assert first.label("correlation_id") == "x" and first.label("service_name") == "a"
    assert second.metadata == {}


def test_flat_third_element_is_read_as_metadata() -> None:
    payload = {
        "status": "success",
        "data": {"resultType": "streams", "result": [{"stream": {}, "values": [["1", "l", {"correlation_id": "x"}]]}]},
    }
    assert parse_response(payload)[0].metadata == {"correlation_id": "x"}


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        ["not", "an", "object"],
    ],
)
def test_non_stream_answers_are_refused(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_response(payload)


def test_client_reads_both_shapes_from_the_standin(loki: FakeLoki) -> None:
    push_numbered(loki, [T0, T0 + 1])
    plain = client_for(loki).query_all(QUERY, T0, T0 + 10)
    categorized = LokiQueryClient(LokiSettings(url=loki.url), categorize_labels=True).query_all(QUERY, T0, T0 + 10)
    assert [e.line for e in plain] == [e.line for e in categorized] == ["line 0", "line 1"]
    assert "correlation_id" in plain[0].labels
    assert "correlation_id" not in categorized[0].labels and categorized[0].label("correlation_id") == CID
    assert loki.requests[-1].headers["x-loki-response-encoding-flags"] == "categorize-labels"


def test_one_client_shared_by_threads_answers_every_query(loki: FakeLoki) -> None:
    """The notifier reads a trail and counts failures at once through one client: each thread
    keeps its own connection (a shared ``http.client`` connection refuses a second request while
    one is in flight: ``CannotSendRequest``)."""
    push_numbered(loki, [T0, T0 + 1])
    client = client_for(loki)
    barrier = threading.Barrier(8)

    def lookups() -> list[list[str]]:
        barrier.wait()
        return [[e.line for e in client.query_all(QUERY, T0, T0 + 10)] for _ in range(15)]

    with ThreadPoolExecutor(8) as pool:
        answers = [answer for lines in pool.map(lambda _: lookups(), range(8)) for answer in lines]
    assert answers == [["line 0", "line 1"]] * 120


# -- paging ----------------------------------------------------------------------------------------
def test_250_lines_in_pages_of_100_with_shared_timestamps_at_the_boundaries(loki: FakeLoki) -> None:
    # Entries 95-104 and 190-199 share one timestamp each; both page boundaries fall inside them
    # (page 1 = entries 0-99, page 2 = the rest of the first group + 105-194).
    timestamps = []
    for n in range(250):
        if 95 <= n < 105:
            timestamps.append(T0 + 95_000)
        elif 190 <= n < 200:
            timestamps.append(T0 + 190_000)
        else:
            timestamps.append(T0 + n * 1000)
    push_numbered(loki, timestamps)
    push_numbered(loki, [T0 + 5], cid="someone-else")  # another request's line must not leak in

    entries = client_for(loki).query_all(QUERY, T0, T0 + 10**9, page_size=100)

    assert sorted(e.line for e in entries) == sorted(f"line {n}" for n in range(250))
    assert len(entries) == 250  # no duplicates at the boundaries, nothing lost
    assert [e.ts_ns for e in entries] == sorted(e.ts_ns for e in entries)
    sent = [(r.start, r.limit, r.direction) for r in loki.requests]
    assert sent[0] == (T0, 100, "forward")
    # Each next page starts AT the last timestamp seen (inclusive), not after it.
    assert [start for start, _, _ in sent[1:]] == [T0 + 95_000, T0 + 190_000]
    assert all(r.end == T0 + 10**9 and r.query == QUERY for r in loki.requests)


def test_exactly_one_full_page_asks_once_more_and_stops(loki: FakeLoki) -> None:
    push_numbered(loki, [T0 + n for n in range(100)])
    entries = client_for(loki).query_all(QUERY, T0, T0 + 10**6, page_size=100)
    assert len(entries) == 100 and len(loki.requests) == 2


def test_more_entries_on_one_timestamp_than_a_page_grows_the_page(loki: FakeLoki) -> None:
    push_numbered(loki, [T0] * 150 + [T0 + 1])
    entries = client_for(loki).query_all(QUERY, T0, T0 + 10, page_size=100)
    assert Counter(e.line for e in entries) == Counter(f"line {n}" for n in range(151))
    assert [r.limit for r in loki.requests] == [100, 200]


def test_identical_lines_in_two_streams_are_both_kept(loki: FakeLoki) -> None:
    for service in ("gateway", "orders"):
        loki.push(T0, "same text", service=service, correlation_id=CID)
    entries = client_for(loki).query_all(QUERY, T0, T0 + 10, page_size=1)
    assert sorted((e.label("service_name") for e in entries), key=str) == ["gateway", "orders"]


class _FakeLoki(LokiQueryClient):
    """query_range over an in-memory list with Loki's semantics; for the property test."""

    def __init__(self, entries: list[QueriedEntry]) -> None:
        super().__init__(LokiSettings(url="http://fake.invalid"))
        self.stored = sorted(entries, key=lambda e: e.ts_ns)
        self.calls = 0

    def query_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int,
        direction: str = "forward",
        deadline: float | None = None,
    ) -> list[QueriedEntry]:
        self.calls += 1
        return [e for e in self.stored if start_ns <= e.ts_ns < end_ns][:limit]


@settings(max_examples=200, deadline=None)
@given(
    timestamps=st.lists(st.integers(min_value=0, max_value=30), max_size=120),
    page_size=st.integers(min_value=1, max_value=40),
)
def test_paging_returns_every_entry_exactly_once(timestamps: list[int], page_size: int) -> None:
    # Few distinct timestamps for many entries: boundaries land inside runs of equal times, and
    # some lines repeat exactly (same time, text and stream) to exercise counting, not a set.
    entries = [QueriedEntry(ts, f"l{ts % 3}-{n % 2}", {"s": str(n % 2)}) for n, ts in enumerate(timestamps)]
    fake = _FakeLoki(entries)
    got = fake.query_all(QUERY, 0, 31, page_size=page_size)
    assert Counter(e.key for e in got) == Counter(e.key for e in entries)
    assert [e.ts_ns for e in got] == sorted(e.ts_ns for e in entries)


def test_more_than_loki_maximum_on_one_timestamp_is_an_error_not_a_truncation() -> None:
    fake = _FakeLoki([QueriedEntry(7, f"l{n}") for n in range(MAX_LIMIT + 1)])
    with pytest.raises(LokiQueryError, match="share timestamp 7"):
        fake.query_all(QUERY, 0, 10, page_size=MAX_LIMIT)


# -- errors ------------------------------------------------------------------------------------------
def test_loki_400_carries_url_status_and_lokis_message(loki: FakeLoki) -> None:
    loki.fail_with = (400, "parse error at line 1, col 20: syntax error: unexpected $end\n", "text/plain")
    with pytest.raises(LokiQueryError) as caught:
        client_for(loki).query_all(QUERY, T0, T0 + 1)
    error = caught.value
    assert error.status == 400
    assert error.message == "parse error at line 1, col 20: syntax error: unexpected $end"
    assert error.url == loki.url + "/loki/api/v1/query_range"
    assert error.url in str(error) and error.message in str(error)


def test_loki_500_json_body_message_is_extracted(loki: FakeLoki) -> None:
    loki.fail_with = (500, '{"status":"error","error":"too many outstanding requests"}', "application/json")
    with pytest.raises(LokiQueryError) as caught:
        client_for(loki).query_all(QUERY, T0, T0 + 1)
    assert caught.value.status == 500 and caught.value.message == "too many outstanding requests"


def test_unreadable_200_is_an_error(loki: FakeLoki) -> None:
    loki.fail_with = (200, "<html>login</html>", "text/html")
    with pytest.raises(LokiQueryError, match="unreadable answer"):
        client_for(loki).query_all(QUERY, T0, T0 + 1)


def test_connection_refused_names_the_url() -> None:
    url = closed_port_url()
    with pytest.raises(LokiQueryError) as caught:
        LokiQueryClient(LokiSettings(url=url, timeout_seconds=2)).query_all(QUERY, T0, T0 + 1)
    assert caught.value.url == url + "/loki/api/v1/query_range"
    assert caught.value.status is None and "cannot reach Loki" in caught.value.message


def test_credentials_in_the_url_are_not_shown() -> None:
    assert display_url("https://user:secret@loki.example:3100/x") == "https://loki.example:3100/x"
    assert display_url("http://loki:3100/x") == "http://loki:3100/x"


# -- auth -----------------------------------------------------------------------------------------------
def test_tenant_and_bearer_token_are_sent(loki: FakeLoki) -> None:
    client_for(loki, tenant="team-a", bearer_token="t0ken").query_all(QUERY, T0, T0 + 1)
    headers = loki.requests[0].headers
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == "Bearer t0ken"


def test_basic_auth_is_sent(loki: FakeLoki) -> None:
    client_for(loki, username="reader", password="pw").query_all(QUERY, T0, T0 + 1)
    expected = "Basic " + base64.b64encode(b"reader:pw").decode()
    assert loki.requests[0].headers["authorization"] == expected
    assert "x-scope-orgid" not in loki.requests[0].headers


def test_empty_url_is_refused() -> None:
    with pytest.raises(ValueError, match="LOKI_URL"):
        LokiQueryClient(LokiSettings(url=""))


# -- the transport (trail.loki_http): what requests did for the lookups before ---------------------------
EMPTY_STREAMS = {"status": "success", "data": {"resultType": "streams", "result": []}}


class GzipThenHangUp(QuietHandler):
    """Answers every query gzip-compressed over HTTP/1.1, then closes the connection without
    saying so (no ``Connection: close``): what a proxy or Loki does to an idle keep-alive."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization", ""))
        self.reply(
            200, gzip.compress(json.dumps(EMPTY_STREAMS).encode()), "application/json", {"Content-Encoding": "gzip"}
        )
        self.close_connection = True


def test_gzip_answers_and_a_silently_closed_keep_alive_are_read() -> None:
    GzipThenHangUp.seen = []
    with LoopbackServer(GzipThenHangUp) as server:
        client = LokiQueryClient(LokiSettings(url=server.url.replace("://", "://reader:s%40cret@"), timeout_seconds=5))
        assert client.query_range(QUERY, T0, T0 + 1, limit=10) == []
        assert client.query_range(QUERY, T0, T0 + 1, limit=10) == []  # the kept connection was closed
    # user:password in LOKI_URL is basic auth, as requests read it
    assert GzipThenHangUp.seen == ["Basic " + base64.b64encode(b"reader:s@cret").decode()] * 2


@pytest.mark.parametrize("verify, found", [("ca", True), (False, True), (True, False)], ids=["ca", "off", "system"])
def test_tls_verification_follows_the_setting(tmp_path: Any, verify: bool | str, found: bool) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    if verify == "ca":
        verify = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(verify)
    with FakeLoki(tls=context) as loki:
        push_numbered(loki, [T0])
        client = LokiQueryClient(LokiSettings(url=loki.url, tls_verify=verify, timeout_seconds=5))
        if found:
            assert [e.line for e in client.query_all(QUERY, T0, T0 + 1)] == ["line 0"]
        else:  # our test CA is not among the system's
            with pytest.raises(LokiQueryError, match="cannot reach Loki.*CERTIFICATE_VERIFY_FAILED"):
                client.query_all(QUERY, T0, T0 + 1)


def test_a_proxy_in_the_environment_is_used(loki: FakeLoki, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY routes the lookup through the proxy (here a closed port: it fails there), and
    NO_PROXY exempts Loki's host again, as requests has always read them."""
    push_numbered(loki, [T0])
    monkeypatch.setenv("HTTP_PROXY", closed_port_url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(LokiQueryError, match="cannot reach Loki.*(?i:proxy)"):
        client_for(loki, timeout_seconds=2).query_all(QUERY, T0, T0 + 1)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert [e.line for e in client_for(loki).query_all(QUERY, T0, T0 + 1)] == ["line 0"]
