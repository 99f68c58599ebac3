"""W3C Trace Context end to end with a real OpenTelemetry neighbour (tests/support/otel_neighbour.py:
the SDK, ``ParentBased(TraceIdRatioBased(0.5))``, the W3C propagator).

Our service runs under gunicorn (two gthread workers) and calls the neighbour with ``requests``
while handling each request; a task published from such a request runs from its message and
calls the neighbour too. What the neighbour records shows whose sampling decision it followed.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import flask
import pytest
import requests
from celery import Celery

import correlation
from correlation import Correlation, Settings, schema, traceparent, wire
from correlation.integrations import celery as correlation_celery
from correlation.integrations.requests import instrument_requests, uninstrument_requests
from correlation.trust import TrustPolicy
from fakes import free_port, serving
from tests.support.otel_neighbour import RATIO_WOULD_DROP, RATIO_WOULD_SAMPLE, Neighbour

pytestmark = pytest.mark.process  # the in-process tests say unit

APP = textwrap.dedent("""
    import os, flask, requests, correlation

    app = flask.Flask("w3c-edge")
    correlation.Correlation(app)  # Settings from the environment

    @app.get("/healthz")
    def health():
        return "ok"

    @app.get("/call")
    def call():
        return requests.get(os.environ["NEIGHBOUR_URL"], timeout=5).json()
""")
# The tracing systems' entries a caller sends, written as the SDK writes them back (no spaces), so
# that "intact" can be checked on the raw header and on the SDK's reading of it alike.
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.fixture(scope="module")
def neighbour() -> Iterator[Neighbour]:
    with Neighbour() as running:
        yield running


@pytest.fixture(scope="module")
def service(neighbour: Neighbour, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("w3c")
    (folder / "w3c_app.py").write_text(APP)
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "gthread", "--threads", "2",
               "--bind", f"127.0.0.1:{port}", "--chdir", str(folder), "w3c_app:app"]  # fmt: skip
    env = {"SERVICE_NAME": "w3c-edge", "LOKI_URL": "", "NEIGHBOUR_URL": neighbour.url, "PYTHONPATH": str(folder)}
    with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=Path(folder / "gunicorn.log")) as url:
        yield url


def _through_service(service: str, headers: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(what the neighbour saw, our service's response headers) for one request to our service."""
    response = requests.get(f"{service}/call", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json(), dict(response.headers)


def test_an_unsampled_request_stays_unsampled_in_the_neighbour(service: str, neighbour: Neighbour) -> None:
    inbound = f"00-{RATIO_WOULD_SAMPLE}-b7ad6b7169203331-00"
    seen, answered = _through_service(service, {"traceparent": inbound, "tracestate": TRACESTATE})
    assert answered[schema.CORRELATION_HEADER] == RATIO_WOULD_SAMPLE, "the trail is the trace"
    sent = traceparent.parse(seen["traceparent"])
    assert sent is not None and (sent.trace_id, sent.sampled) == (RATIO_WOULD_SAMPLE, False)
    assert seen["recording"] is False and neighbour.recorded(RATIO_WOULD_SAMPLE) == [], (
        "the neighbour's own ratio would have kept this trace: the caller's flag decided"
    )
    assert seen["tracestate"] == TRACESTATE == seen["otel_tracestate"], "tracestate arrives intact"


def test_a_sampled_request_is_recorded_under_our_hop(service: str, neighbour: Neighbour) -> None:
    inbound = f"00-{RATIO_WOULD_DROP}-b7ad6b7169203331-01"
    seen, _ = _through_service(service, {"traceparent": inbound, "tracestate": TRACESTATE})
    assert seen["recording"] is True
    (span,) = neighbour.recorded(RATIO_WOULD_DROP)
    sent = traceparent.parse(seen["traceparent"])
    assert sent is not None and sent.sampled and neighbour.parent_span_id(span) == sent.parent_id
    assert sent.parent_id != "b7ad6b7169203331", "the neighbour's parent is our hop, not our caller"
    assert span.context.trace_state.to_header() == TRACESTATE


def test_a_trail_that_starts_here_is_sampled_in_the_neighbour(service: str, neighbour: Neighbour) -> None:
    seen, answered = _through_service(service, {})
    cid = answered[schema.CORRELATION_HEADER]
    assert seen["traceparent"].endswith("-01") and seen["tracestate"] is None
    assert seen["recording"] is True and len(neighbour.recorded(cid)) == 1


@pytest.mark.unit
def test_an_untrusted_callers_flag_and_tracestate_are_not_followed(neighbour: Neighbour) -> None:
    """CORRELATION_TRUST_INBOUND=none at the edge: a fresh trail, sent as every trail that starts here."""
    app = flask.Flask("untrusting")
    app.get("/call")(lambda: requests.get(neighbour.url, timeout=5).json())
    Correlation(app, Settings(service="untrusting", trust_inbound=TrustPolicy.parse("none")))
    try:
        response = app.test_client().get("/call", headers={
            "traceparent": f"00-{RATIO_WOULD_SAMPLE}-b7ad6b7169203331-00", "tracestate": TRACESTATE})  # fmt: skip
    finally:
        uninstrument_requests()
    seen = response.get_json()
    assert response.headers[schema.CORRELATION_HEADER] == seen["trace_id"] != RATIO_WOULD_SAMPLE
    assert seen["traceparent"].endswith("-01") and seen["recording"] is True and seen["tracestate"] is None


@pytest.mark.unit
def test_a_task_from_an_unsampled_request_keeps_the_neighbour_unsampled(neighbour: Neighbour) -> None:
    """Published inside the request's hop, run from its message (as a worker reads it): the run's
    own call to the neighbour carries the trace's flag and tracestate."""
    app = Celery("w3c", broker="memory://", set_as_current=False)
    app.conf.task_ignore_result = True

    @app.task(name="w3c.call")
    def call() -> dict[str, str]:
        answer: dict[str, str] = requests.get(neighbour.url, timeout=5).json()
        return answer

    correlation_celery.install()
    instrument_requests()
    try:
        request = wire.from_headers({"traceparent": f"00-{RATIO_WOULD_SAMPLE}-b7ad6b7169203331-00",
                                     "tracestate": TRACESTATE}).hop  # fmt: skip
        with correlation.bound(request):
            app.send_task("w3c.call")
        with app.connection_for_read() as conn:
            message = conn.SimpleQueue("celery").get(timeout=1)
            message.ack()
        seen = call.apply(headers=dict(message.headers)).get()  # outside any hop: read from the message
    finally:
        uninstrument_requests()
        correlation_celery.uninstall()
    sent = traceparent.parse(seen["traceparent"])
    assert sent is not None and (sent.trace_id, sent.sampled) == (RATIO_WOULD_SAMPLE, False)
    assert sent.parent_id != request.request_id, "the run is a hop of its own"
    assert seen["recording"] is False and seen["otel_tracestate"] == TRACESTATE == seen["tracestate"]
