"""The Loki shipper against the push sink: format, batching, retry rules, bounds, close, fork."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from correlation import context
from correlation.ids import shard_of
from correlation.loki.handler import TRUNCATION_MARK, LokiHandler
from correlation.loki.sender import Sender
from correlation.settings import LokiSettings
from fakes import FakeLoki
from tests.support.shipper import LABELS, make_handler

pytestmark = pytest.mark.process


def test_lines_arrive_with_fixed_labels_metadata_and_record_time(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki_sink)
    logger.addHandler(handler)
    hop = context.Hop.start()
    with context.bound(hop):
        logger.warning("hello %s", "world")
    old = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "from the past", (), None)
    old.created = time.time() - 600
    logger.handle(old)
    entries = loki_sink.wait_for(lambda e: len(e) == 2)
    first, second = sorted(entries, key=lambda e: e.line)[::-1]
    assert first.labels == {**LABELS, "shard": shard_of(hop.correlation_id)}, "a line of a request: its shard"
    assert second.labels == LABELS, "a line outside a request: no shard label"
    assert first.metadata == {"correlation_id": hop.correlation_id, "request_id": hop.request_id, "level": "warning"}
    assert first.json["message"] == "hello world"
    assert second.metadata == {"level": "info"}, "no empty metadata values outside a request"
    assert abs(second.timestamp_ns - old.created * 1e9) < 1000, "timestamp is the record's, not send time"
    push = loki_sink.pushes[0]
    assert push.headers["content-encoding"] == "gzip"


def test_lines_are_batched(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki_sink, batch_max_wait_seconds=0.5)
    logger.addHandler(handler)
    for n in range(500):
        logger.info("line %d", n)
    entries = loki_sink.wait_for(lambda e: len(e) == 500)
    assert len(loki_sink.pushes) <= 3
    handler.flush(5)
    assert [e.json["message"] for e in entries] == [f"line {n}" for n in range(500)]
    assert handler.stats.snapshot().sent_lines == 500


def test_auth_and_tenant_headers(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    logger.addHandler(make_handler(loki_sink, tenant="team-a", username="u", password="p"))
    logger.info("x")
    loki_sink.wait_for(lambda e: len(e) == 1)
    headers = loki_sink.pushes[0].headers
    assert headers["x-scope-orgid"] == "team-a" and headers["authorization"] == "Basic dTpw"


def test_emit_never_waits_for_a_stalled_loki(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    loki_sink.script = ["stall"]
    handler = make_handler(loki_sink, timeout_seconds=30.0)
    logger.addHandler(handler)
    started = time.monotonic()
    for n in range(2000):
        logger.info("line %d", n)
    assert time.monotonic() - started < 2.0, "logging must not wait on Loki (the stall lasts 60 s)"
    loki_sink.release_stalled()  # stalled push answered 503: retried, then everything arrives
    loki_sink.wait_for(lambda e: len(e) == 2000, timeout=15)


@pytest.mark.parametrize(
    "failure, reason",
    [(429, "rate_limited"), (500, "server_error"), (503, "server_error"), ("reset", "connection_error")],
)
def test_retryable_failures_are_retried_until_delivered(
    loki_sink: FakeLoki, logger: logging.Logger, failure: object, reason: str
) -> None:
    loki_sink.script = [failure, failure]
    handler = make_handler(loki_sink)
    logger.addHandler(handler)
    for n in range(10):
        logger.info("line %d", n)
    entries = loki_sink.wait_for(lambda e: len(e) >= 10)
    assert sorted(e.json["message"] for e in entries) == sorted(f"line {n}" for n in range(10))
    handler.flush(5)
    stats = handler.stats.snapshot()
    assert stats.retries[reason] == 2 and sum(stats.dropped.values()) == 0
    assert len(loki_sink.requests) == 3


def test_connection_refused_is_retried(logger: logging.Logger) -> None:
    with FakeLoki() as sink:
        dead_url = sink.url
    handler = make_handler(dead_url, flush_timeout_seconds=0.3)  # nothing listens there now
    logger.addHandler(handler)
    logger.info("into the void")
    logger.removeHandler(handler)
    deadline = time.monotonic() + 10
    while handler.stats.snapshot().retries["connection_error"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handler.stats.snapshot().retries["connection_error"] >= 2
    handler.close()
    assert handler.stats.snapshot().dropped["shutdown"] == 1


def test_client_errors_are_not_retried_and_are_counted(
    loki_sink: FakeLoki, logger: logging.Logger, capfd: pytest.CaptureFixture[str]
) -> None:
    loki_sink.script = [
        (400, "entry for stream '{service_name=\"svc\"}' has timestamp too old\ntotal ignored: 3 out of 5")
    ]
    handler = make_handler(loki_sink, batch_max_wait_seconds=0.3)
    logger.addHandler(handler)
    for n in range(5):
        logger.info("line %d", n)
    deadline = time.monotonic() + 10
    while handler.stats.snapshot().dropped["rejected"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    handler.flush(2)
    stats = handler.stats.snapshot()
    assert stats.dropped["rejected"] == 3, "Loki ingested the 2 valid entries of the 5"
    assert sum(stats.retries.values()) == 0 and len(loki_sink.requests) == 1
    err = capfd.readouterr().err
    assert "HTTP 400" in err and "timestamp too old" in err and "total ignored" not in err, "first line only"


def test_a_push_too_large_for_loki_is_split_not_retried(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    too_large = (
        500,
        "rpc error: code = ResourceExhausted desc = grpc: received message larger than max (4803609 vs. 4194304)",
    )
    loki_sink.script = [too_large]
    handler = make_handler(loki_sink, batch_max_wait_seconds=0.3)
    logger.addHandler(handler)
    for n in range(40):
        logger.info("line %d", n)
    entries = loki_sink.wait_for(lambda e: len(e) == 40)
    assert len(loki_sink.pushes) == 2, "split in two halves"
    handler.flush(5)
    assert sorted(e.json["message"] for e in entries) == sorted(f"line {n}" for n in range(40))
    assert sum(handler.stats.snapshot().retries.values()) == 0


def test_memory_bound_drops_are_counted(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    loki_sink.script = ["stall"]
    handler = make_handler(loki_sink, buffer_max_bytes=20_000, timeout_seconds=30.0)
    logger.addHandler(handler)
    for n in range(1000):
        logger.info("line %d %s", n, "x" * 100)
    lines, size = handler.buffered()
    assert size <= 20_000
    dropped = handler.stats.snapshot().dropped["buffer_full"]
    assert dropped > 0
    loki_sink.release_stalled()
    handler.flush(10)
    stats = handler.stats.snapshot()
    assert stats.sent_lines + stats.dropped["buffer_full"] == 1000, "every line is sent or counted"


def test_long_lines_are_truncated_and_counted(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    handler = LokiHandler(LokiSettings(url=loki_sink.url, batch_max_wait_seconds=0.05), LABELS, max_line_bytes=1000)
    logger.addHandler(handler)
    with context.bound() as hop:
        logger.info("big %s", "\u00e9" * 5000)
    (entry,) = loki_sink.wait_for(lambda e: len(e) == 1)
    assert len(entry.line.encode()) <= 1000 and entry.line.endswith(TRUNCATION_MARK)
    assert entry.metadata["correlation_id"] == hop.correlation_id, "still in the request's trail"
    assert handler.stats.snapshot().truncated_lines == 1


def test_close_flushes_what_is_buffered(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki_sink, batch_max_wait_seconds=30.0)
    logger.addHandler(handler)
    for n in range(300):
        logger.info("line %d", n)
    logger.removeHandler(handler)
    handler.close()
    assert len(loki_sink.entries) == 300


def test_close_is_bounded_when_loki_is_down_and_counts_the_loss(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    loki_sink.default = 503
    handler = make_handler(loki_sink, flush_timeout_seconds=1.0)
    logger.addHandler(handler)
    for n in range(50):
        logger.info("line %d", n)
    logger.removeHandler(handler)
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 3.0
    stats = handler.stats.snapshot()
    assert stats.dropped["shutdown"] == 50 and stats.sent_lines == 0


def test_close_counts_what_a_dead_sender_left_in_memory(
    loki_sink: FakeLoki, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Sender, "_run", lambda self: None)  # a sender thread that ended without its work
    handler = make_handler(loki_sink, flush_timeout_seconds=0.5)
    logger.addHandler(handler)
    for n in range(10):
        logger.info("line %d", n)
    logger.removeHandler(handler)
    handler.close()
    assert handler.stats.snapshot().dropped == {"shutdown": 10}, "not reported as delivered"


def test_the_senders_own_logging_never_reaches_loki(loki_sink: FakeLoki) -> None:
    """urllib3 and friends log in the sender thread; shipping those would feed the loop forever."""
    root = logging.getLogger()
    old_level = root.level
    handler = make_handler(loki_sink)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        logging.getLogger("app").info("one line")
        loki_sink.wait_for(lambda e: len(e) >= 1)
        handler.flush(2)
        time.sleep(0.3)  # let a feedback loop, if any, show itself
        assert [e.json["logger"] for e in loki_sink.entries] == ["app"]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_ships_its_own_lines_only(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    handler = make_handler(loki_sink, batch_max_wait_seconds=30.0)
    logger.addHandler(handler)
    logger.info("parent before fork")  # buffered in the parent, sender started
    pid = os.fork()
    if pid == 0:  # child: log, flush, leave without running the parent's atexit
        try:
            logger.info("child line")
            handler.close()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    handler.close()
    messages = sorted(e.json["message"] for e in loki_sink.entries)
    assert messages == ["child line", "parent before fork"], "the child neither lost its line nor resent the parent's"


def test_an_outage_within_the_memory_bound_loses_nothing_and_keeps_order(
    loki_sink: FakeLoki, logger: logging.Logger
) -> None:
    loki_sink.default = 503
    handler = make_handler(loki_sink, backoff_max_seconds=0.2)
    logger.addHandler(handler)
    for n in range(1000):  # steady load while Loki is down
        logger.info("line %04d", n)
        if n % 20 == 0:
            time.sleep(0.002)
    assert loki_sink.entries == [] and handler.stats.snapshot().retries["server_error"] > 0
    loki_sink.default = 204
    entries = loki_sink.wait_for(lambda e: len(e) >= 1000)
    assert [e.json["message"] for e in entries] == [f"line {n:04d}" for n in range(1000)]
    handler.flush(5)
    assert sum(handler.stats.snapshot().dropped.values()) == 0


@pytest.fixture(scope="module")
def loki_ca():
    import trustme

    return trustme.CA()


@pytest.mark.parametrize(
    "verify, delivered", [("ca", True), (False, True), (True, False)], ids=["ca-bundle", "no-verify", "system-cas"]
)
def test_tls_verification_follows_the_setting(
    loki_ca, logger: logging.Logger, tmp_path, verify, delivered: bool
) -> None:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    loki_ca.issue_cert("localhost").configure_cert(context)
    if verify == "ca":
        verify = str(tmp_path / "ca.pem")
        loki_ca.cert_pem.write_to_path(verify)
    with FakeLoki(tls=context) as sink:
        handler = make_handler(sink, tls_verify=verify, flush_timeout_seconds=0.5)
        logger.addHandler(handler)
        logger.info("over tls")
        if delivered:
            sink.wait_for(lambda e: len(e) == 1)
        else:  # our test CA is not among the system's: the push must fail, not go through
            deadline = time.monotonic() + 5
            while handler.stats.snapshot().retries["connection_error"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert handler.stats.snapshot().retries["connection_error"] > 0 and sink.entries == []


def test_the_handler_reports_its_own_metrics_in_the_registry_given(loki_sink: FakeLoki) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    handler = LokiHandler(LokiSettings(url=loki_sink.url, batch_max_wait_seconds=0.05), LABELS, registry=registry)
    second = LokiHandler(LokiSettings(url=loki_sink.url, batch_max_wait_seconds=0.05), LABELS, registry=registry)
    log = logging.getLogger("test.collector")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        with context.bound():
            log.info("counted")
        handler.flush(5)
        text = generate_latest(registry).decode()
        sent = [line for line in text.splitlines() if line.startswith("loki_shipper_sent_lines_total{")]
        assert sent == ['loki_shipper_sent_lines_total{service="svc"} 1.0'], "two handlers of one service: one series"
        assert 'loki_shipper_dropped_lines_total{reason="buffer_full",service="svc"} 0.0' in text
        assert 'loki_shipper_dropped_lines_total{reason="spool_corrupt",service="svc"} 0.0' in text
        assert 'loki_shipper_sender_restarts_total{service="svc"} 0.0' in text
    finally:
        log.removeHandler(handler)
        handler.close()
        second.close()
    assert "service=" not in generate_latest(registry).decode(), "a closed handler is no longer reported"


def test_records_without_the_filter_keep_their_id(loki_sink: FakeLoki) -> None:
    handler = LokiHandler(LokiSettings(url=loki_sink.url, batch_max_wait_seconds=0.05), LABELS, registry=None)
    log = logging.getLogger("test.nofilter.loki")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    try:
        with context.bound() as hop:
            log.info("no filter attached")
        (entry,) = loki_sink.wait_for(lambda e: len(e) == 1)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert entry.metadata["correlation_id"] == hop.correlation_id
    assert json.loads(entry.line)["correlation_id"] == hop.correlation_id, "JSON lines by default"


_ENDS_ITS_LOGGING = """
import io, logging, logging.config, sys
from correlation import Settings, setup_logging
from correlation.settings import LokiSettings

loki = LokiSettings(url=sys.argv[1], batch_max_wait_seconds=30.0, flush_timeout_seconds=5.0)
(*_, shipper) = setup_logging(Settings(service="svc", loki=loki), stream=io.StringIO())
logging.getLogger("app").warning("the last line")  # still buffered when logging ends or is reconfigured
{ending}
"""
_RECONFIGURED = "closed by a logging reconfiguration"


@pytest.mark.parametrize(
    "ending, warned",
    [
        ("logging.shutdown()", False),
        ("logging.shutdown(); logging.shutdown()", False),
        ("logging.config.dictConfig({'version': 1, 'disable_existing_loggers': False})", True),
        ("logging.basicConfig(force=True)", True),
    ],
    ids=["shutdown", "shutdown-twice", "dictConfig", "basicConfig-force"],
)
def test_a_program_ending_its_logging_gets_no_warning_a_reconfiguration_does(
    loki_sink: FakeLoki, ending: str, warned: bool
) -> None:
    """Scripts, tests and CLIs call logging.shutdown() themselves (and gunicorn's worker_exit
    hook may): that is not the dictConfig that silently takes the Loki handler away."""
    script = _ENDS_ITS_LOGGING.format(ending=ending)
    done = subprocess.run(
        [sys.executable, "-c", script, loki_sink.url], capture_output=True, text=True, timeout=60, check=True
    )
    assert (_RECONFIGURED in done.stderr) is warned, done.stderr
    assert [e.json["message"] for e in loki_sink.entries] == ["the last line"]


_RECONFIGURED_WITH_LINES_BUFFERED = """
import atexit, io, json, logging, logging.config, sys, time
from correlation import LokiHandler, Settings, setup_logging
from correlation.settings import LokiSettings

url, flush_timeout = sys.argv[1], float(sys.argv[2])
loki = LokiSettings(url=url, batch_max_wait_seconds=30.0, flush_timeout_seconds=flush_timeout)
(*_, shipper) = setup_logging(Settings(service="svc", loki=loki), stream=io.StringIO())
for n in range(20):
    logging.getLogger("app").warning("buffered %d", n)
# As any setLevel does: the sender's first push then asks for logging's lock (urllib3 looks up
# whether its debug lines are on), the lock the reconfiguration holds while it closes the shipper.
logging.getLogger("urllib3").setLevel(logging.NOTSET)
# At exit, after the interpreter has waited for the threads that are not daemons.
atexit.register(lambda: print(json.dumps({"sent": shipper.stats.sent_lines, "dropped": shipper.stats.dropped})))
started = time.monotonic()
{reconfiguration}
print(json.dumps({"took": time.monotonic() - started}), flush=True)
{then}
"""
_NEW_LOKI_HANDLER = "{'class': 'correlation.LokiHandler', 'url': url, 'labels': {'service_name': 'svc', 'env': 'test'}}"
_DICT_CONFIG = (
    "logging.config.dictConfig({'version': 1, 'disable_existing_loggers': False, "
    f"'handlers': {{'loki': {_NEW_LOKI_HANDLER}}}, 'root': {{'level': 'INFO', 'handlers': ['loki']}}}})"
)
_BASIC_CONFIG = (
    "logging.basicConfig(force=True, handlers=[LokiHandler(url=url, labels={'service_name': 'svc', 'env': 'test'})])"
)
_LOG_AFTER = 'logging.getLogger("app").warning("after")'  # the new handler's, shipped by logging.shutdown at exit


@pytest.mark.parametrize(
    "reconfiguration, then",
    [(_DICT_CONFIG, _LOG_AFTER), (_DICT_CONFIG, "sys.exit(0)"), (_BASIC_CONFIG, _LOG_AFTER)],
    ids=["dictConfig", "dictConfig-then-exit", "basicConfig-force"],
)
def test_a_reconfiguration_replacing_a_shipper_with_lines_buffered_neither_waits_nor_loses_them(
    loki_sink: FakeLoki, reconfiguration: str, then: str
) -> None:
    """dictConfig and basicConfig(force=True) close the handlers they replace while holding
    logging's module lock. The shipper must not wait there for its sender, which may need that
    lock to push (it did: the reconfiguration waited the flush timeout twice, for flush and for
    close, and a process ending then could lose the lines in flight, uncounted). What it hands
    over is still delivered, also by a process that ends right after."""
    flush_timeout = 5.0
    script = _RECONFIGURED_WITH_LINES_BUFFERED.replace("{reconfiguration}", reconfiguration).replace("{then}", then)
    done = subprocess.run(
        [sys.executable, "-c", script, loki_sink.url, str(flush_timeout)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reconfigured, at_exit = (json.loads(line) for line in done.stdout.splitlines())
    assert reconfigured["took"] < flush_timeout, f"the reconfiguration waited out the flush timeout: {done.stderr}"
    assert at_exit == {"sent": 20, "dropped": {}}, "the replaced shipper delivered every line it held"
    messages = sorted(e.json["message"] for e in loki_sink.entries)
    after = ["after"] if then == _LOG_AFTER else []
    assert messages == sorted([f"buffered {n}" for n in range(20)] + after), "each line once"


def test_a_close_that_times_out_counts_the_push_still_under_way(loki_sink: FakeLoki, logger: logging.Logger) -> None:
    """The batch the sender holds when the flush timeout runs out is neither sent nor buffered:
    counted as ``shutdown_unconfirmed`` (Loki may have it), once, never silently gone."""
    loki_sink.script = ["stall"]
    handler = make_handler(loki_sink, timeout_seconds=30.0)
    logger.addHandler(handler)
    for n in range(10):
        logger.info("line %d", n)
    deadline = time.monotonic() + 5
    while not loki_sink.requests and time.monotonic() < deadline:  # the push is under way, stalled
        time.sleep(0.01)
    assert loki_sink.requests, "the sender never pushed"
    logger.removeHandler(handler)
    handler.close_within(0.2)
    stats = handler.stats.snapshot()
    assert stats.dropped == {"shutdown_unconfirmed": 10} and stats.sent_lines == 0
    loki_sink.release_stalled()  # answered 503 after the deadline: the sender counts nothing more
    assert handler.sender.thread is not None
    handler.sender.thread.join(5)
    assert handler.stats.snapshot().dropped == {"shutdown_unconfirmed": 10}
