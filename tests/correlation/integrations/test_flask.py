"""The Flask edge: where the ID comes from, what is refused, what is echoed, logged and measured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from itertools import count

import flask
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from correlation import context, ids, metrics, schema
from correlation.integrations.flask import Correlation
from correlation.log.formatter import JsonFormatter
from correlation.schema import ACCESS_LOGGER
from correlation.settings import Settings

pytestmark = pytest.mark.unit

_names = count()


class App:
    """A small Flask app wired with the extension, and the JSON lines it logged."""

    def __init__(self, header: str) -> None:
        self.service = f"edge{next(_names)}"
        self.header = header
        self.app = flask.Flask(self.service)
        self.app.config["PROPAGATE_EXCEPTIONS"] = False
        self.hops: list[context.Hop] = []

        @self.app.get("/after-downstream-failed")
        def after_downstream_failed() -> str:
            # What the requests patch does when a call answers 5xx (tests/correlation/integrations/test_requests.py).
            context.current().failed_calls.append("payments")  # type: ignore[union-attr]
            flask.abort(502)

        @self.app.route("/items/<int:item>", methods=["GET", "POST"])
        def item(item: int) -> str:
            hop = context.current()
            assert hop is not None, "a request runs in a hop"
            self.hops.append(hop)
            logging.getLogger("view").info("item %d", item)
            return "ok"

        @self.app.get("/boom")
        def boom() -> str:
            raise RuntimeError("unhandled")

        @self.app.get("/healthz")
        def healthz() -> str:
            return "ok"

        Correlation(self.app, Settings(service=self.service, header=header), propagate_requests=False)
        self.client = self.app.test_client()
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def access(self) -> list[dict]:
        return [line for line in self.lines() if line["logger"] == ACCESS_LOGGER]

    def edge_app(self) -> Callable:
        """The WSGI app the edge wraps (Flask's own)."""
        return self.app.extensions["correlation"].edge.app


@pytest.fixture(params=["X-Correlation-ID", "X-Trace-Token"])
def edge(request: pytest.FixtureRequest) -> Iterator[App]:
    app = App(request.param)
    root = logging.getLogger()
    root.addHandler(app.handler)
    old_level = root.level
    root.setLevel(logging.INFO)  # setLevel, not assignment: it clears the loggers' isEnabledFor caches
    yield app
    root.removeHandler(app.handler)
    root.setLevel(old_level)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def test_a_fresh_id_when_none_is_given(edge: App) -> None:
    response = edge.client.get("/items/1")
    cid = response.headers[edge.header]
    assert ids.time_of(cid) is not None
    (hop,) = edge.hops
    assert hop.correlation_id == cid and hop.parent_request_id is None and len(hop.request_id) == 16


def test_sources_in_order_header_then_x_request_id_then_traceparent(edge: App) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert (
        edge.client.get(
            "/items/1", headers={edge.header: "primary", "X-Request-ID": "second", "traceparent": tp}
        ).headers[edge.header]
        == "primary"
    )
    assert (
        edge.client.get("/items/1", headers={"X-Request-ID": "second", "traceparent": tp}).headers[edge.header]
        == "second"
    )
    assert (
        edge.client.get("/items/1", headers={"traceparent": tp}).headers[edge.header]
        == "0af7651916cd43dd8448eb211c80319c"
    )
    assert edge.hops[-1].parent_request_id == "b7ad6b7169203331", "the traceparent's parent-id is the parent hop"


def test_parent_and_caller_come_from_the_calling_hop(edge: App) -> None:
    edge.client.get(
        "/items/7",
        headers={edge.header: "cid-1", "X-Parent-Request-ID": "0123456789abcdef", "X-Caller-Service": "gateway"},
    )
    assert edge.hops[-1].parent_request_id == "0123456789abcdef"
    (access,) = edge.access()
    assert access["caller"] == "gateway" and access["parent_request_id"] == "0123456789abcdef"


HOSTILE = ["a\r\nSet-Cookie: x=1", "x" * 10_000, "caf\u00e9", 'q"uote', "\x1b[2J\x1b[31m", "{}", "", "a b", "\x00"]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_ids_are_replaced_logged_safely_and_counted(edge: App, hostile: str) -> None:
    reason = ids.rejection_reason(hostile)
    before = metrics.REJECTED_IDS.labels(edge.service, reason).value
    response = edge.client.get("/items/1", environ_base={_environ_key(edge.header): hostile})
    assert response.status_code == 200
    echoed = response.headers[edge.header]
    assert echoed != hostile and ids.time_of(echoed) is not None
    assert metrics.REJECTED_IDS.labels(edge.service, reason).value == before + 1
    (warning,) = [line for line in edge.lines() if line["logger"] == "correlation.edge"]
    assert warning["level"] == "WARNING" and warning["correlation_id"] == echoed
    assert len(warning["message"]) < 250 and not any(c in warning["message"] for c in "\r\n\x1b\x00")


def test_hostile_parent_ids_and_traceparents_are_ignored(edge: App) -> None:
    response = edge.client.get(
        "/items/1", environ_base={"HTTP_X_PARENT_REQUEST_ID": "\x1b]0;x", "HTTP_TRACEPARENT": "garbage"}
    )
    assert response.status_code == 200 and edge.hops[-1].parent_request_id is None
    response = edge.client.get("/items/1", environ_base={"HTTP_TRACEPARENT": "00-zz-yy-01"})
    assert ids.time_of(response.headers[edge.header]) is not None


@pytest.mark.parametrize("path, status", [("/items/1", 200), ("/nowhere", 404), ("/boom", 500), ("/items/x", 404)])
def test_every_answer_echoes_the_id(edge: App, path: str, status: int) -> None:
    response = edge.client.get(path, headers={edge.header: "echo-1"})
    assert response.status_code == status and response.headers[edge.header] == "echo-1"


def test_a_view_cannot_echo_a_second_id(edge: App) -> None:
    @edge.app.get("/spoof")
    def spoof() -> flask.Response:
        return flask.Response("x", headers={edge.header: "spoofed"})

    response = edge.client.get("/spoof", headers={edge.header: "real"})
    assert response.headers.getlist(edge.header) == ["real"]


def test_one_access_line_per_request_with_route_status_duration(edge: App) -> None:
    edge.client.post("/items/42?x=1", headers={edge.header: "acc-1"})
    edge.client.get("/boom", headers={edge.header: "acc-2"})
    ok, failed = edge.access()
    assert ok["route"] == "/items/<int:item>" and ok["path"] == "/items/42" and ok["method"] == "POST"
    assert ok["status"] == 200 and ok["duration_ms"] > 0 and ok["level"] == "INFO" and ok["correlation_id"] == "acc-1"
    assert failed["status"] == 500 and failed["level"] == "ERROR"
    exception = [line for line in edge.lines() if "exception" in line]
    assert exception and exception[0]["correlation_id"] == "acc-2", "the traceback carries the request's ID"


def test_the_route_is_known_however_the_request_ends(edge: App) -> None:
    # Answered inside Flask's request context, an exception Flask lets through, no rule at all,
    # a rule with another method, and a response started only after Flask's context is gone.
    edge.client.get("/items/7")
    edge.app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError):
        edge.client.get("/boom")
    edge.app.config["PROPAGATE_EXCEPTIONS"] = False
    edge.client.get("/nowhere")
    edge.client.delete("/items/7")
    flask_app = edge.edge_app()

    def buffered(environ: dict, start_response: Callable) -> list[bytes]:
        started: list = []
        body = b"".join(flask_app(environ, lambda *args: started.append(args)))  # Flask's context ends here
        start_response(*started[0])
        return [body]

    edge.app.extensions["correlation"].edge.app = buffered
    edge.client.get("/items/8")
    routes = [(line["path"], line["status"], line["route"]) for line in edge.access()]
    assert routes == [
        ("/items/7", 200, "/items/<int:item>"),
        ("/boom", 500, "/boom"),
        ("/nowhere", 404, schema.UNMATCHED_ROUTE),
        ("/items/7", 405, schema.UNMATCHED_ROUTE),
        ("/items/8", 200, "/items/<int:item>"),
    ]


def test_quiet_paths_keep_the_id_but_log_and_measure_nothing(edge: App) -> None:
    response = edge.client.get("/healthz", headers={edge.header: "quiet"})
    assert response.headers[edge.header] == "quiet"
    assert edge.access() == []


def test_red_metrics_with_exemplars_and_last_failure(edge: App) -> None:
    edge.client.get("/items/1", headers={edge.header: "ok-1"})
    edge.client.get("/boom", headers={edge.header: "fail-1"})
    edge.client.get("/boom", headers={edge.header: "fail-2"})
    text = edge.client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).get_data(as_text=True)
    mine = [line for line in text.splitlines() if f'service="{edge.service}"' in line]
    assert any(
        line.startswith("http_server_request_duration_seconds_bucket") and '# {correlation_id="ok-1"}' in line
        for line in mine
    )
    errors = [line for line in mine if line.startswith("http_server_errors_total")]
    assert errors and '# {correlation_id="fail-2"}' in errors[0] and " 2.0 #" in errors[0]
    last = [line for line in mine if line.startswith("correlation_last_failed_request{")]
    assert len(last) == 1 and 'correlation_id="fail-2"' in last[0] and 'route="/boom"' in last[0]
    assert f'http_server_requests_in_flight{{service="{edge.service}"}} 0.0' in text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=120))
def test_any_inbound_value_is_kept_if_valid_else_replaced(edge: App, value: str) -> None:
    # WSGI hands header values over as latin-1 strings: every byte a client can send.
    response = edge.client.get("/items/1", environ_base={_environ_key(edge.header): value})
    assert response.status_code == 200
    echoed = response.headers[edge.header]
    if ids.is_valid_id(value):
        assert echoed == value
    else:
        assert ids.time_of(echoed) is not None


def test_made_up_methods_share_one_metric_label(edge: App) -> None:
    for method in ("BREW", "WHEN", "XYZZY"):
        edge.client.open("/items/1", method=method)
    text = edge.client.get("/metrics").get_data(as_text=True)
    mine = [line for line in text.splitlines() if f'service="{edge.service}"' in line and "_count" in line]
    assert any('method="other"' in line and 'status="405"' in line for line in mine)
    assert not any("BREW" in line or "XYZZY" in line for line in mine)
    assert [line["method"] for line in edge.access()] == ["BREW", "WHEN", "XYZZY"], "the access line keeps it"


def test_a_5xx_says_whether_it_was_own_or_downstream(edge: App) -> None:
    edge.client.get("/boom", headers={edge.header: "own-1"})
    edge.client.get("/after-downstream-failed", headers={edge.header: "down-1"})
    edge.client.get("/items/1", headers={edge.header: "fine-1"})
    own, downstream, fine = edge.access()
    assert (own["origin"], "failed_downstream" in own) == ("self", False)
    assert (downstream["origin"], downstream["failed_downstream"], downstream["status"]) == (
        "downstream",
        "payments",
        502,
    )
    assert "origin" not in fine, "only a 5xx has an origin"
    text = edge.client.get("/metrics").get_data(as_text=True)
    errors = [
        line for line in text.splitlines() if line.startswith("http_server_errors_total") and edge.service in line
    ]
    assert any('origin="self"' in line and 'route="/boom"' in line for line in errors)
    assert any('origin="downstream"' in line and 'status="502"' in line for line in errors)


def test_every_answer_names_the_service(edge: App) -> None:
    for path in ("/items/1", "/boom", "/nowhere"):
        assert edge.client.get(path).headers.getlist("X-Service-Name") == [edge.service]
