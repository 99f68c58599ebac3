"""correlation.celery in one process: what a task message carries, how a worker reads it back, and
the run's hop and access line, over Celery's in-memory broker and eager runs (the real worker
over a real Redis: tests/demo/test_celery_worker.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

import correlation
from correlation import context, ids, metrics, schema, traceparent, wire
from correlation.integrations import celery as correlation_celery
from correlation.task_headers import BAD_PUBLISHED_AT, publish_headers, read_headers
from tests.support import REPO

pytestmark = pytest.mark.unit

NOW_MS = 1_796_000_000_000  # a fixed "now" inside the plausible range of our IDs' clock
OURS = [
    schema.CORRELATION_HEADER,
    schema.REQUEST_ID_HEADER,
    schema.PARENT_HEADER,
    schema.CALLER_HEADER,
    schema.TRACEPARENT_HEADER,
    schema.TRACESTATE_HEADER,
    schema.PUBLISHED_AT_HEADER,
]

# What a message header can hold: any JSON value (Celery's serializers carry them as they are).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
header_names = st.sampled_from(OURS).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()])) | st.text(
    max_size=20
)
valid_ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)


@settings(max_examples=250, deadline=None)
@given(st.dictionaries(header_names, json_values, max_size=8))
def test_any_headers_decode_to_a_valid_hop_and_never_raise(headers: dict[str, Any]) -> None:
    read = read_headers(headers, now_ms=NOW_MS)
    hop = read.inbound.hop
    assert ids.is_valid_id(hop.correlation_id)
    assert len(hop.request_id) == 16 and int(hop.request_id, 16) > 0
    assert hop.parent_request_id is None or ids.is_valid_id(hop.parent_request_id)
    assert read.published_ms is None or NOW_MS - 86_400_000 <= read.published_ms <= NOW_MS + 600_000
    sent = {str(k).lower(): v for k, v in headers.items()}  # the last spelling of a name wins
    value = sent.get(schema.CORRELATION_HEADER.lower())
    if isinstance(value, str) and ids.is_valid_id(value):
        assert hop.correlation_id == value, "a valid ID is followed"
    elif value is not None:
        assert ids.time_of(hop.correlation_id) is not None, "a refused ID is replaced by a fresh one of ours"
        assert read.rejections[0].header == schema.CORRELATION_HEADER
    for rejection in read.rejections:
        # What was refused is reported (text as sent, anything else shown with its type) for the log line.
        raw = sent[rejection.header.lower()]
        assert rejection.value == raw if isinstance(raw, str) else rejection.value.endswith(repr(raw))


@settings(max_examples=200, deadline=None)
@given(
    cid=valid_ids,
    service=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    published=st.integers(min_value=NOW_MS - 86_000_000, max_value=NOW_MS + 500_000),
)
def test_what_a_publisher_writes_a_worker_reads_back(cid: str, service: str, published: int) -> None:
    publisher = context.Hop.start(cid, None)
    headers = publish_headers(publisher, service, now_ms=published)
    read = read_headers(headers, now_ms=NOW_MS)
    assert read.rejections == ()
    assert read.inbound.hop.correlation_id == cid
    assert read.inbound.hop.parent_request_id == publisher.request_id, "the publishing hop is the task's parent"
    assert read.inbound.caller == service and read.published_ms == published
    assert read.inbound.hop.request_id != publisher.request_id, "the run is a hop of its own"


def test_a_publish_outside_any_hop_starts_a_fresh_trail_without_parent() -> None:
    first, second = publish_headers(None, "beat"), publish_headers(None, "beat")
    assert first[schema.CORRELATION_HEADER] != second[schema.CORRELATION_HEADER]
    assert ids.time_of(first[schema.CORRELATION_HEADER]) is not None, "an ID of ours: trail finds it by its time"
    assert schema.PARENT_HEADER not in first and schema.TRACEPARENT_HEADER not in first, "no parent: not an orphan"
    assert read_headers(first).inbound.hop.parent_request_id is None


@pytest.mark.parametrize(
    "published", ["yesterday", "1.5e12", "-5", str(NOW_MS + 3_600_000), str(NOW_MS - 90_000_000), "9" * 40]
)
def test_an_implausible_publish_time_is_refused_not_trusted(published: str) -> None:
    read = read_headers({schema.CORRELATION_HEADER: "ok-id", schema.PUBLISHED_AT_HEADER: published}, now_ms=NOW_MS)
    assert read.published_ms is None and read.inbound.hop.correlation_id == "ok-id"
    assert [(r.header, r.reason) for r in read.rejections] == [(schema.PUBLISHED_AT_HEADER, BAD_PUBLISHED_AT)]


# -- the signals, in this process -----------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        # Any, not LogRecord: the tests read what stamp() and ``extra=`` put on a record (the hop, the
        # access line's fields), which LogRecord's type does not declare.
        self.records: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        from correlation.log.entry import stamp

        stamp(record)
        self.records.append(record)

    def access(self) -> list[Any]:
        return [r for r in self.records if r.name == schema.ACCESS_LOGGER]


@pytest.fixture
def installed() -> Iterator[Lines]:
    """The integration installed in this process, every record captured; undone afterwards."""
    correlation_celery.install()
    lines = Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(lines)
    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(lines)
    root.setLevel(old_level)
    correlation_celery.uninstall()


@pytest.fixture
def memory_app() -> Celery:
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.task_ignore_result = True
    return app


def _published_headers(app: Celery, name: str = "t.any", **options: Any) -> dict[str, Any]:
    app.send_task(name, **options)
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue("celery").get(timeout=1)
        message.ack()
        return dict(message.headers)


def test_published_inside_a_hop_the_message_carries_it(installed: Lines, memory_app: Celery) -> None:
    before = int(time.time() * 1000)
    with correlation.bound() as hop:
        headers = _published_headers(memory_app)
        # A retry's message copies the failed attempt's headers: the current hop must win.
        stale = {schema.CORRELATION_HEADER: "old-id", schema.PARENT_HEADER: "0000000000000bad"}
        retried = _published_headers(memory_app, headers=stale)
    assert headers[schema.CORRELATION_HEADER] == hop.correlation_id
    assert headers[schema.PARENT_HEADER] == hop.request_id
    assert headers[schema.TRACEPARENT_HEADER] == traceparent.build(hop.correlation_id, hop.request_id)
    assert before <= int(headers[schema.PUBLISHED_AT_HEADER]) <= int(time.time() * 1000)
    assert (retried[schema.CORRELATION_HEADER], retried[schema.PARENT_HEADER]) == (hop.correlation_id, hop.request_id)


def test_a_task_carries_the_traces_flag_and_tracestate_and_its_run_hands_them_on(
    installed: Lines, memory_app: Celery
) -> None:
    """Published from a request of an unsampled trace: the message keeps the flag and tracestate,
    the run (reading the message as a worker does) is in that trace, and its own calls say so."""

    @memory_app.task(name="t.calls")
    def calls() -> dict[str, str]:
        run = context.current()
        assert run is not None
        return wire.headers(run, "worker")

    trace = "0af7651916cd43dd8448eb211c80319c"
    request = wire.from_headers({"traceparent": f"00-{trace}-b7ad6b7169203331-00", "tracestate": "congo=t61"}).hop
    with correlation.bound(request):
        message = _published_headers(memory_app, "t.calls")
        # A retry's message copies the failed attempt's headers: a stale tracestate must not stay.
        retried = _published_headers(memory_app, headers={schema.TRACESTATE_HEADER: "old=1"})
    assert message[schema.TRACEPARENT_HEADER] == f"00-{trace}-{request.request_id}-00"
    assert message[schema.TRACESTATE_HEADER] == "congo=t61" == retried[schema.TRACESTATE_HEADER]
    with correlation.bound(context.Hop.start(trace)):
        plain = _published_headers(memory_app, headers={"TraceState": "old=1"})
    assert "TraceState" not in plain and schema.TRACESTATE_HEADER not in plain, "the hop has none: none is sent"
    ours = {k: v for k, v in message.items() if k in OURS}
    sent_by_run = calls.apply(headers=ours).get()  # outside any hop: the run reads the message
    parsed = traceparent.parse(sent_by_run[schema.TRACEPARENT_HEADER])
    assert parsed is not None and (parsed.trace_id, parsed.sampled) == (trace, False)
    assert sent_by_run[schema.TRACESTATE_HEADER] == "congo=t61"
    assert sent_by_run[schema.PARENT_HEADER] != request.request_id, "the run is a hop of its own"
    with correlation.bound(request):  # run in the caller's thread: a child hop of the same trace
        eager = calls.apply().get()
    assert eager[schema.TRACEPARENT_HEADER].endswith("-00") and eager[schema.TRACESTATE_HEADER] == "congo=t61"


def test_published_outside_any_hop_fresh_id_or_the_publishers_own(installed: Lines, memory_app: Celery) -> None:
    beat = [_published_headers(memory_app) for _ in range(2)]
    assert beat[0][schema.CORRELATION_HEADER] != beat[1][schema.CORRELATION_HEADER]
    assert all(schema.PARENT_HEADER not in h and ids.time_of(h[schema.CORRELATION_HEADER]) for h in beat)
    theirs = {schema.TRACEPARENT_HEADER: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
              schema.TRACESTATE_HEADER: "congo=t61"}  # fmt: skip
    assert _published_headers(memory_app, headers=theirs).items() >= theirs.items(), "a tracer's own, kept"
    chosen = _published_headers(memory_app, headers={schema.CORRELATION_HEADER: "chosen-by-caller"})
    assert chosen[schema.CORRELATION_HEADER] == "chosen-by-caller", "outside a hop a publisher's own ID is kept"
    assert schema.PUBLISHED_AT_HEADER in chosen


def test_an_eager_run_is_a_child_hop_with_its_access_line(installed: Lines, memory_app: Celery) -> None:
    log = logging.getLogger("test.task")

    @memory_app.task(name="t.ok")
    def ok() -> str:
        log.info("inside the task")
        return "done"

    @memory_app.task(name="t.broken")
    def broken() -> None:
        raise ValueError("boom")

    with correlation.bound() as hop:
        ok.apply()
        broken.apply()
        assert context.current() is hop, "the caller's hop is back after each run"
    inside = next(r for r in installed.records if r.getMessage() == "inside the task")
    success, failure = installed.access()
    assert inside.correlation_id == hop.correlation_id and inside.parent_request_id == hop.request_id
    assert inside.request_id == success.request_id != hop.request_id
    assert (success.kind, success.task, success.state, success.status, success.attempt) == (
        "task",
        "t.ok",
        "success",
        200,
        1,
    )
    assert success.levelno == logging.INFO and success.duration_ms >= 0
    assert (failure.task, failure.state, failure.status, failure.origin) == ("t.broken", "failure", 500, "self")
    assert failure.levelno == logging.ERROR and failure.correlation_id == hop.correlation_id


# -- the reference (docs/reference.md) says what the code does -------------------------------------


def _reference_table(heading: str, nth: int = 0) -> list[list[str]]:
    """The rows (without the header row) of the ``nth`` table under ``heading``."""
    text = (REPO / "docs" / "reference.md").read_text()
    tables: list[list[list[str]]] = [[]]
    for line in text[text.index(heading) :].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            if not set(line) <= set("|- "):
                tables[-1].append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
        elif tables[-1]:
            tables.append([])
    return tables[nth][1:]


def test_the_reference_documents_the_task_keys_headers_and_metrics() -> None:
    assert [row[0] for row in _reference_table("## Task runs")] == list(schema.TASK_ACCESS_KEYS)
    assert [row[0] for row in _reference_table("## Task runs", 1)] == [
        schema.CORRELATION_HEADER,
        schema.PARENT_HEADER,
        schema.CALLER_HEADER,
        schema.TRACEPARENT_HEADER,
        schema.TRACESTATE_HEADER,
        schema.PUBLISHED_AT_HEADER,
    ]
    documented = {
        row[0]: (row[1], sorted(x.strip() for x in row[2].split(","))) for row in _reference_table("## Metrics")
    }
    for metric in (
        metrics.TASK_DURATION,
        metrics.TASK_QUEUE_WAIT,
        metrics.TASK_FAILURES,
        metrics.TASK_IN_PROGRESS,
        metrics.TASK_PUBLISH_FAILURES,
    ):
        (family,) = metric.describe()
        name = metric.name + ("_total" if family.type == "counter" else "")
        assert documented[name] == (family.type, sorted(metric.labelnames)), name


def test_the_demo_workers_visibility_timeout_exceeds_its_retry_delay() -> None:
    """A held retry is delivered again after the visibility timeout: it must outlast the countdown."""
    from correlation.settings import ConfigError
    from demo.notifications import visibility_timeout_seconds

    assert visibility_timeout_seconds({}) == 60.0
    assert visibility_timeout_seconds({"TASK_RETRY_DELAY_SECONDS": "100"}) == 200.0
    delay = {"TASK_RETRY_DELAY_SECONDS": "3"}
    assert visibility_timeout_seconds({**delay, "BROKER_VISIBILITY_TIMEOUT_SECONDS": "5"}) == 5.0
    for value in ("3", "2", "soon", "90000"):
        with pytest.raises(ConfigError, match="^BROKER_VISIBILITY_TIMEOUT_SECONDS="):
            visibility_timeout_seconds({**delay, "BROKER_VISIBILITY_TIMEOUT_SECONDS": value})
