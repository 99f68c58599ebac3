"""The Django edge in one process, through Django's test client: the ID read, refused, echoed and
carried on; the access line with the route pattern; error bodies with the ID; metrics with
exemplars; settings checked. The site is tests/support/django_site.py (the docs' example);
tests/test_django_gunicorn.py runs it under gunicorn."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path

from correlation import context, ids, metrics, schema
from correlation.integrations.django import load_options
from correlation.integrations.httpx import uninstrument_httpx
from correlation.integrations.requests import uninstrument_requests
from correlation.log.formatter import JsonFormatter
from tests.fakes import HeaderEcho, LoopbackServer
from tests.support import django_site

SERVICE = django_site.SERVICE
HEADER = schema.CORRELATION_HEADER
OPENMETRICS = {"HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0"}
JSON = {"HTTP_ACCEPT": "application/json"}
BROWSER = {"HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def client() -> Client:
    """Django's test client, as a single-process server: its default ``wsgi.multiprocess`` (True)
    would make the edge warn that the metrics are not shared between workers."""
    return Client(raise_request_exception=False, **{"wsgi.multiprocess": False})


class Site:
    """Django's test client on the site, and the JSON lines logged while it ran."""

    def __init__(self) -> None:
        self.client = client()  # the middleware is loaded now
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())

    def get(self, url: str, header: str | None = None, **extra: str) -> HttpResponse:
        if header is not None:
            extra["HTTP_X_CORRELATION_ID"] = header
        response: HttpResponse = self.client.get(url, **extra)
        return response

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def access(self) -> list[dict]:
        return [line for line in self.lines() if line["logger"] == schema.ACCESS_LOGGER]


@pytest.fixture(autouse=True)
def _patches_undone() -> Iterator[None]:
    """The middleware patches ``requests`` and httpx when Django loads it (each client's first
    request): undone after each test, so the calls of the tests after these are not measured."""
    yield
    uninstrument_requests()
    uninstrument_httpx()


@pytest.fixture
def site() -> Iterator[Site]:
    made = Site()
    root = logging.getLogger()
    root.addHandler(made.handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield made
    root.removeHandler(made.handler)
    root.setLevel(old_level)


def test_the_id_is_echoed_on_every_answer_and_is_the_views_hop(site: Site) -> None:
    answers = {url: site.get(url) for url in ("/ok", "/nope", "/fail", "/forbidden", "/own-404")}
    answers["POST /get-only"] = site.client.post("/get-only")
    assert {url: r.status_code for url, r in answers.items()} == {
        "/ok": 200,
        "/nope": 404,
        "/fail": 500,
        "/forbidden": 403,
        "/own-404": 404,
        "POST /get-only": 405,
    }
    for url, response in answers.items():
        assert ids.time_of(response[HEADER]) is not None, url
        assert response[schema.SERVICE_HEADER] == SERVICE, url
    seen = site.get("/orders/7", header="order-7.trail")
    assert seen[HEADER] == "order-7.trail" == seen.json()["correlation_id"]
    assert context.current() is None, "the hop is reset after the request"


def test_hostile_ids_are_replaced_logged_escaped_and_counted(site: Site) -> None:
    hostile = "a\x1b[31m\r\nSet-Cookie: x=1" + "x" * 300
    reason = ids.rejection_reason(hostile)
    before = metrics.REJECTED_IDS.labels(SERVICE, reason).value
    response = site.get("/orders/1", header=hostile)
    echoed = response[HEADER]
    assert echoed != hostile and ids.time_of(echoed) is not None and response.json()["correlation_id"] == echoed
    assert metrics.REJECTED_IDS.labels(SERVICE, reason).value == before + 1
    (warning,) = [line for line in site.lines() if line["logger"] == schema.EDGE_LOGGER]
    assert warning["correlation_id"] == echoed and "X-Correlation-ID" in warning["message"]
    assert len(warning["message"]) < 250 and not any(c in warning["message"] for c in "\r\n\x1b")


def test_an_untrusted_peer_starts_a_fresh_trail_and_its_id_is_kept_for_search(site: Site) -> None:
    with override_settings(CORRELATION={"SERVICE_NAME": SERVICE, "CORRELATION_TRUST_INBOUND": "10.0.0.0/8"}):
        # The test client's REMOTE_ADDR is 127.0.0.1: outside 10/8.
        response = client().get("/orders/2", HTTP_X_CORRELATION_ID="client-said-this")
    assert response[HEADER] != "client-said-this"
    (line,) = site.access()
    assert line["client_correlation_id"] == "client-said-this" and line["correlation_id"] == response[HEADER]


def test_one_access_line_per_request_with_the_route_pattern_never_the_path(site: Site) -> None:
    site.get("/orders/41", header="order-41")
    site.get("/orders/42/missing", header="order-42")
    site.get("/no/such/page/9f8e", header="nowhere")
    lines = {line["correlation_id"]: line for line in site.access()}
    assert len(site.access()) == 3
    assert lines["order-41"]["route"] == "/orders/<int:order_id>" and lines["order-41"]["path"] == "/orders/41"
    assert lines["order-41"]["status"] == 200 and lines["order-41"]["method"] == "GET"
    assert lines["order-41"]["service"] == SERVICE and lines["order-41"]["duration_ms"] >= 0
    assert lines["order-42"]["route"] == "/orders/<int:order_id>/missing" and lines["order-42"]["status"] == 404
    assert lines["nowhere"]["route"] == schema.UNMATCHED_ROUTE and lines["nowhere"]["status"] == 404


def test_a_500_names_its_exception_and_origin_and_djangos_own_line_has_the_id(site: Site) -> None:
    response = site.get("/fail", header="fail-1", **JSON)
    assert response.status_code == 500
    body = response.json()
    assert body["correlation_id"] == "fail-1" and body["status"] == 500
    assert "4111" not in response.content.decode(), "the exception's message never reaches the client"
    (line,) = site.access()
    assert line["error_type"] == "tests.support.django_site.OrderLost"
    assert line["origin"] == schema.ORIGIN_SELF and line["level"] == "ERROR"
    (django_line,) = [line for line in site.lines() if line["logger"] == "django.request"]
    assert django_line["correlation_id"] == "fail-1" and "OrderLost" in django_line["exception"]


def test_a_views_own_4xx_is_logged_by_django_inside_the_hop(site: Site) -> None:
    site.get("/own-404", header="own-1")
    (django_line,) = [line for line in site.lines() if line["logger"] == "django.request"]
    assert django_line["message"] == "Not Found: /own-404" and django_line["correlation_id"] == "own-1"


def test_a_failure_downstream_is_not_the_services_own(site: Site) -> None:
    with LoopbackServer(HeaderEcho) as payments:
        response = site.get(f"/downstream?url={payments.url}/fail/payments", header="down-1")
    assert response.status_code == 502
    (line,) = site.access()
    assert line["origin"] == schema.ORIGIN_DOWNSTREAM and line["failed_downstream"] == "payments"
    assert "error_type" not in line, "no exception behind it"


def test_outgoing_requests_and_httpx_calls_carry_the_hop(site: Site) -> None:
    with LoopbackServer(HeaderEcho) as echo:
        response = site.get(f"/calls?url={echo.url}/named/stock", header="calls-1")
    (line,) = site.access()
    for client in ("requests", "httpx"):
        sent = response.json()[client]
        assert sent["x-correlation-id"] == "calls-1", client
        assert sent["x-parent-request-id"] == line["request_id"], client
        assert sent["x-caller-service"] == SERVICE, client


def test_error_bodies_carry_the_id_as_problem_json_or_in_the_page(site: Site) -> None:
    unmatched = site.get("/nope", header="nope-1")  # no Accept: JSON, the first offered
    assert unmatched["Content-Type"] == "application/problem+json"
    assert unmatched.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "The requested resource was not found on this server.",
        "correlation_id": "nope-1",
    }
    raised = site.get("/orders/5/missing", header="gone-1", **JSON)
    assert raised.json()["correlation_id"] == "gone-1" and "no order 5" not in raised.content.decode()
    assert site.get("/forbidden", header="no-1", **JSON).json()["status"] == 403
    not_allowed = site.client.post("/get-only", HTTP_X_CORRELATION_ID="post-1", **JSON)
    assert not_allowed.json()["correlation_id"] == "post-1" and not_allowed["Allow"] == "GET"
    page = site.get("/nope", header="html-1", **BROWSER)
    assert page["Content-Type"].startswith("text/html")
    assert "<p>Correlation ID: <code>html-1</code></p>\n</body>" in page.content.decode()
    assert int(page["Content-Length"]) == len(page.content)


def test_the_projects_own_error_answers_win(site: Site) -> None:
    own = site.get("/own-404", header="own-2", **JSON)
    assert own.json() == {"mine": True}, "a response the view returned is the project's"

    def handler404(request: object, exception: Exception) -> HttpResponse:
        return HttpResponse("our own not found", status=404)

    urlconf = types.ModuleType("own_handlers_urls")
    urlconf.urlpatterns = [path("ok", django_site.ok)]  # type: ignore[attr-defined]
    urlconf.handler404 = handler404  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf):
        response = client().get("/nope", HTTP_ACCEPT="application/json")
    assert response.status_code == 404 and response.content == b"our own not found"
    assert ids.time_of(response[HEADER]) is not None, "the ID is still echoed"


def test_error_bodies_can_be_turned_off(site: Site) -> None:
    with override_settings(CORRELATION={"SERVICE_NAME": SERVICE, "CORRELATION_ERROR_BODIES": False}):
        response = client().get("/nope", HTTP_ACCEPT="application/json")
    assert response.status_code == 404 and b"correlation" not in response.content.lower()
    assert response["Content-Type"].startswith("text/html"), "Django's own page"


def test_red_metrics_with_the_id_as_exemplar(site: Site) -> None:
    site.get("/orders/3", header="metric-ok-1")
    site.get("/fail", header="metric-fail-1")
    text = site.get("/metrics", **OPENMETRICS).content.decode()
    mine = [line for line in text.splitlines() if f'service="{SERVICE}"' in line]
    assert any(
        line.startswith("http_server_request_duration_seconds_bucket")
        and 'route="/orders/<int:order_id>"' in line
        and '# {correlation_id="metric-ok-1"}' in line
        for line in mine
    )
    errors = [line for line in mine if line.startswith("http_server_errors_total") and 'route="/fail"' in line]
    assert errors and '# {correlation_id="metric-fail-1"}' in errors[0]
    assert f'http_server_requests_in_flight{{service="{SERVICE}"}} 0.0' in text
    assert not [line for line in site.access() if line["path"] == "/metrics"], "a quiet path writes no line"


def test_settings_come_from_the_environment_and_settings_correlation_wins() -> None:
    env = {"SERVICE_NAME": "from-env", "CORRELATION_HEADER": "X-Trace-Token"}
    options = load_options({"SERVICE_NAME": "orders", "QUIET_PATHS": ["/up"]}, env)
    assert options.settings.service == "orders" and options.settings.header == "X-Trace-Token"
    assert options.quiet_paths == {"/up"} and options.propagate_requests is True
    assert load_options({}, env).settings.service == "from-env"
    with pytest.raises(ImproperlyConfigured, match="SERVICE_NAME='bad name'"):
        load_options({"SERVICE_NAME": "bad name"}, {})
    with pytest.raises(ImproperlyConfigured, match="'LOKI_URL'.*LOGGING"):
        load_options({"LOKI_URL": "http://loki:3100"}, {})
    with pytest.raises(ImproperlyConfigured, match="CORRELATION_TRUST_INBOUND"):
        load_options({}, {"CORRELATION_TRUST_INBOUND": "everyone"})
    with pytest.raises(ImproperlyConfigured, match="QUIET_PATHS"):
        load_options({"QUIET_PATHS": "/metrics"}, {})


@pytest.mark.process
def test_importing_the_library_imports_no_django() -> None:
    probe = "import sys, correlation, correlation.integrations; print('django' in sys.modules)"
    app = Path(__file__).resolve().parents[1] / "app"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=app, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


class Exploding:
    """A middleware after ours that fails on /ok: no view raised, Django answers 500."""

    def __init__(self, get_response: object) -> None:
        self.get_response = get_response

    def __call__(self, request: object) -> HttpResponse:
        raise ConnectionResetError("the session store went away")


def test_a_middleware_after_ours_failing_still_names_its_exception(site: Site) -> None:
    middleware = ["correlation.integrations.django.CorrelationMiddleware", f"{__name__}.Exploding"]
    with override_settings(MIDDLEWARE=middleware):
        response = client().get("/ok", HTTP_X_CORRELATION_ID="mw-1")
    assert response.status_code == 500 and response.json()["correlation_id"] == "mw-1"
    (line,) = site.access()
    assert line["error_type"] == "ConnectionResetError" and line["route"] == schema.UNMATCHED_ROUTE
