"""The trail page (``trail.web``) through Flask's test client, against the loopback Loki stand-in:
the waterfall and lines of a staged checkout, the window it searches, escaping, the JSON document,
and the answers to bad input and to Loki's trouble. The real browser: tests/trail/web/test_browser.py."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import flask.testing
import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import ConfigError, LokiSettings
from fakes import FakeLoki, LoopbackServer, QuietHandler, closed_port_url
from fakes.trail_lines import GATEWAY, INVENTORY, ORDERS, PAYMENTS, access_line, checkout_lines, log_line, push_all
from tests.support.grafana import explore_exprs, parse_explore_url, provisioned_datasource_uids
from trail.__main__ import main as trail_command
from trail.cli import main as cli
from trail.links import trail_explore_url, window_ms
from trail.logql import trail_query
from trail.web.app import TrailWebSettings, create_app
from trail.window import (
    DEFAULT_SINCE_SECONDS,
    FIRST_AFTER_SECONDS,
    FIRST_BEFORE_SECONDS,
    MARGIN_SECONDS,
    WIDE_SECONDS,
    Window,
)

pytestmark = pytest.mark.unit

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000_000 * MS  # the time inside CID
CID = new_correlation_id(now_ms=T0 // MS)
GRAFANA = "http://grafana.example.test:3000"
HOSTILE = "<script>alert('trail')</script>"


def client_for(loki_url: str, timeout: float = 5.0) -> flask.testing.FlaskClient:
    settings = TrailWebSettings(LokiSettings(url=loki_url, timeout_seconds=timeout), grafana_url=GRAFANA)
    return create_app(settings).test_client()


@pytest.fixture
def web(loki: FakeLoki) -> flask.testing.FlaskClient:
    return client_for(loki.url)


def rows(html: str) -> list[tuple[str, str, int]]:
    """(request_id, state, indentation px) of each waterfall row, in page order."""
    found = re.findall(
        r'<div class="wf-row state-([\w-]+)" role="row" data-request-id="(\w+)" data-state="[\w-]+">\s*'
        r'<div class="wf-label" role="cell" style="padding-left: (\d+)px">',
        html,
    )
    return [(rid, state, int(px)) for state, rid, px in found]


def must_find(pattern: str, html: str) -> re.Match[str]:
    """``re.search`` of something the page must have."""
    match = re.search(pattern, html)
    assert match is not None, f"{pattern!r} is not in the page"
    return match


def bar(html: str, request_id: str) -> tuple[float, float]:
    """(left %, width %) of one hop's bar."""
    row = html[html.index(f'data-request-id="{request_id}"') :]
    left, width = must_find(r'class="bar" style="left: ([\d.]+)%; width: ([\d.]+)%"', row).groups()
    return float(left), float(width)


# -- the page -------------------------------------------------------------------------------------
def test_page_shows_every_hop_as_a_bar_indented_by_parent_and_coloured_by_status(
    loki: FakeLoki, web: flask.testing.FlaskClient
) -> None:
    push_all(loki, checkout_lines(CID, T0))
    response = web.get(f"/t/{CID}")
    assert response.status_code == 200 and response.content_type == "text/html; charset=utf-8"
    html = response.get_data(as_text=True)
    # Tree order, children indented under parents, failed hops (>= 500) marked.
    assert rows(html) == [
        (GATEWAY, "failed", 8),
        (ORDERS, "failed", 26),
        (PAYMENTS, "failed", 44),
        (INVENTORY, "ok", 44),
    ]
    # Placed by start and duration on one 40 ms axis: gateway 0-40, orders 3-33, payments 6-18, inventory 20-28.
    assert bar(html, GATEWAY) == (0.0, 100.0)
    assert bar(html, ORDERS) == (7.5, 75.0)
    assert bar(html, PAYMENTS) == (15.0, 30.0)
    assert bar(html, INVENTORY) == (50.0, 20.0)
    # The root cause is the deepest failed hop, named with its error.
    assert re.search(r'id="root-cause">.*payments \[c000000000000003\] answered 500: TimeoutError: processor', html)
    assert html.count('<span class="badge root">') == 2  # its bar and its section
    assert 'id="same-error"' not in html, "its access line names no error type: nothing to count"


def test_each_hop_lists_its_lines_with_error_lines_expanded(loki: FakeLoki, web: flask.testing.FlaskClient) -> None:
    push_all(loki, checkout_lines(CID, T0))
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    payments = html[html.index(f'<section class="hop state-failed" id="hop-{PAYMENTS}"') :]
    payments = payments[: payments.index("</section>")]
    assert payments.index("charging card") < payments.index("card processor timed out")
    # The error line with a traceback is open; its traceback rows are shown.
    error = payments[payments.index("card processor timed out") - 400 :]
    assert "<details open>" in error and "TimeoutError: processor" in error
    # A plain line with an extra field is collapsed (its field one click away).
    orders = html[html.index(f'id="hop-{ORDERS}"') :]
    creating = orders[: orders.index("creating order")]
    assert creating.rstrip().endswith(
        '<summary class="row"><span class="time">15:06:40.004000</span> '
        '<span class="level">INFO</span> <span class="logger">demo.orders:</span> '
        '<span class="message">'
    )
    assert "<details>" in creating[-300:] and "order_id=o-17" in orders


def test_every_text_from_a_line_is_escaped(loki: FakeLoki, web: flask.testing.FlaskClient) -> None:
    lines = checkout_lines(CID, T0)
    lines.append(
        log_line(
            CID,
            ORDERS,
            GATEWAY,
            "orders",
            T0 + 6 * MS,
            HOSTILE,
            level="WARNING",
            logger=f"x{HOSTILE}",
            **{f"k{HOSTILE}": HOSTILE, "exception": f"Traceback\n{HOSTILE}"},
        )
    )
    push_all(loki, lines)
    loki.push(T0 + 7 * MS, f"not json {HOSTILE}", service="payments", correlation_id=CID, request_id=PAYMENTS)
    loki.push(T0 + 8 * MS, f"no hop {HOSTILE}", service=f"svc{HOSTILE}"[:64], correlation_id=CID)
    response = web.get(f"/t/{CID}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<script" not in html.lower(), "no markup from a log line reaches the page"
    escaped = "&lt;script&gt;alert(&#39;trail&#39;)&lt;/script&gt;"
    # message, logger, extra key and value, traceback, a line that is not JSON, an unknown-hop line
    assert html.count(escaped) >= 7
    assert "not json " + escaped in html and "no hop " + escaped in html
    # Behind the escaping: no script may run on the page at all.
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy


def test_window_is_the_ids_own_and_explore_opens_the_same_query_over_it(
    loki: FakeLoki, web: flask.testing.FlaskClient
) -> None:
    push_all(loki, checkout_lines(CID, T0))
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    (query,) = loki.queries
    narrow = Window(T0 - int(FIRST_BEFORE_SECONDS * S), T0 + int(FIRST_AFTER_SECONDS * S))  # the ID's own seconds
    assert (query.start, query.end) == (narrow.start_ns, narrow.end_ns)
    assert f'data-start-ns="{narrow.start_ns}" data-end-ns="{narrow.end_ns}">{narrow}</span>' in html
    assert "(3 s)" in html
    explore = must_find(r'id="explore-link" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert explore == trail_explore_url(GRAFANA, CID, narrow)
    panes = parse_explore_url(explore, provisioned_datasource_uids())
    assert explore_exprs(panes) == [trail_query(CID)]
    assert panes["trail"]["range"] == dict(zip(("from", "to"), window_ms(narrow), strict=True))
    dashboard = must_find(r'id="dashboard-link" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    share = must_find(r'id="share-link" href="([^"]+)"', html).group(1)
    assert share == f"http://localhost:8090/t/{CID}", "TRAIL_WEB_URL's default, not the test client's host"
    assert parse_qs(urlsplit(dashboard).query) == {
        "orgId": ["1"],
        "var-correlation_id": [CID],
        "from": [window_ms(narrow)[0]],
        "to": [window_ms(narrow)[1]],
    }


def test_an_incomplete_trail_widens_once_as_the_cli_does(loki: FakeLoki, web: flask.testing.FlaskClient) -> None:
    # Only payments' lines: its parent (orders) is missing, so the narrow window looks incomplete.
    push_all(loki, [pair for pair in checkout_lines(CID, T0) if pair[1]["service"] == "payments"])
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    assert [(q.start, q.end) for q in loki.queries][-1] == (T0 - int(WIDE_SECONDS * S), T0 + int(WIDE_SECONDS * S))
    assert "so the window was widened once" in html and f"has no parent {ORDERS} in the logs" in html
    assert "(1800 s)" in html


def test_foreign_id_searches_the_last_hour_or_the_window_given(loki: FakeLoki, web: flask.testing.FlaskClient) -> None:
    before = time.time_ns()
    assert web.get("/t/order-17.checkout").status_code == 404
    query = loki.queries[-1]
    assert before <= query.end <= time.time_ns() and query.end - query.start == int(DEFAULT_SINCE_SECONDS * S)
    # ?from=&to= as Grafana writes times (epoch ms), or RFC 3339.
    web.get("/t/order-17.checkout?from=1750000000000&to=2025-06-15T15:10:00Z")
    assert (loki.queries[-1].start, loki.queries[-1].end) == (T0, T0 + 200 * S)


def test_json_is_the_clis_document(
    loki: FakeLoki, web: flask.testing.FlaskClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    push_all(loki, checkout_lines(CID, T0))
    response = web.get(f"/t/{CID}?format=json")
    assert response.status_code == 200 and response.content_type == "application/json"
    monkeypatch.setenv("LOKI_URL", loki.url)
    assert cli.main([CID, "--json"]) == 0
    assert response.get_data(as_text=True) == capsys.readouterr().out
    assert json.loads(response.get_data())["hops"][2]["service"] == "payments"


# -- /go/ ---------------------------------------------------------------------------------------------
def test_go_redirects_to_explore_over_the_ids_window_without_asking_loki(
    loki: FakeLoki, web: flask.testing.FlaskClient
) -> None:
    response = web.get(f"/go/{CID}")
    assert response.status_code == 302
    narrow = Window(T0 - int(MARGIN_SECONDS * S), T0 + int((30 + MARGIN_SECONDS) * S))
    assert response.headers["Location"] == trail_explore_url(GRAFANA, CID, narrow)
    assert loki.queries == []
    given = web.get("/go/order-17?from=1750000000000&to=1750000060000").headers["Location"]
    assert given == trail_explore_url(GRAFANA, "order-17", Window(T0, T0 + 60 * S))
    foreign = parse_explore_url(web.get("/go/order-17").headers["Location"], provisioned_datasource_uids())
    span = int(foreign["trail"]["range"]["to"]) - int(foreign["trail"]["range"]["from"])
    assert span - DEFAULT_SINCE_SECONDS * 1000 in (0, 1)  # the end rounded up to a whole ms


# -- bad input, nothing found, Loki's trouble -------------------------------------------------------------
@pytest.mark.parametrize(
    "path, reason",
    [
        ("/t/bad%20id%3Cx%3E", "bad_characters"),
        ("/t/" + "a" * 65, "too_long"),
        ("/t/a/b", "bad_characters"),
        ("/go/%3Cscript%3E", "bad_characters"),
        (f"/t/{CID}?from=yesterday", "bad time window"),
        (f"/t/{CID}?from=2025-06-15T15:10:00Z&to=2025-06-15T15:00:00Z", "empty window"),
        (f"/t/{CID}?format=xml", "format: expected html or json"),
        ("/t?id=%3Cscript%3E", "bad_characters"),
    ],
)
def test_bad_input_gets_a_400_page_saying_why_and_no_query(
    loki: FakeLoki, web: flask.testing.FlaskClient, path: str, reason: str
) -> None:
    response = web.get(path)
    html = response.get_data(as_text=True)
    assert response.status_code == 400, html
    assert reason in must_find(r'id="error-message">([^<]*)</p>', html).group(1)
    assert "<script>" not in html and loki.queries == []


def test_nothing_found_is_a_404_naming_the_windows_and_query(loki: FakeLoki, web: flask.testing.FlaskClient) -> None:
    response = web.get(f"/t/{CID}")
    html = response.get_data(as_text=True)
    assert response.status_code == 404 and len(loki.queries) == 4  # narrow (in 3 parts), then widened once
    assert f"No log lines for correlation ID {CID}" in html and html.count("data-start-ns=") == 2
    assert 'id="explore-link"' in html
    document = web.get(f"/t/{CID}?format=json").get_json()
    assert document["error"] == "Nothing found" and document["query"] == trail_query(CID)
    assert len(document["windows"]) == 2


@pytest.mark.parametrize(
    "status, body, problem",
    [(500, "rpc error: no ingesters", "Loki answered an error (HTTP 500)"), (400, "parse error", "(HTTP 400)")],
)
def test_loki_errors_get_a_502_page_naming_the_problem(
    loki: FakeLoki, web: flask.testing.FlaskClient, status: int, body: str, problem: str
) -> None:
    loki.fail_with = (status, body, "text/plain")
    response = web.get(f"/t/{CID}")
    html = response.get_data(as_text=True)
    assert response.status_code == 502
    assert problem in html and body in html and loki.url in html
    assert web.get(f"/t/{CID}?format=json").get_json()["message"].endswith(body)


def test_loki_unreachable_gets_a_502_page() -> None:
    url = closed_port_url()
    response = client_for(url, timeout=2).get(f"/t/{CID}")
    assert response.status_code == 502
    assert "Loki could not be reached" in response.get_data(as_text=True)


@pytest.fixture
def silent_loki() -> Iterator[str]:
    """A Loki that takes the request and does not answer (for 5 s at most)."""
    release = threading.Event()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            release.wait(5)
            self.reply(503, "too late")

    with LoopbackServer(Handler) as server:
        yield server.url
        release.set()


def test_no_page_waits_longer_than_the_loki_timeout(silent_loki: str) -> None:
    web = client_for(silent_loki, timeout=0.3)
    started = time.monotonic()
    response = web.get(f"/t/{CID}")
    elapsed = time.monotonic() - started
    assert response.status_code == 502 and elapsed < 1.5, elapsed
    assert "Loki did not answer within LOKI_TIMEOUT_SECONDS (0.3 s)" in response.get_data(as_text=True)


# -- the rest of the app ----------------------------------------------------------------------------
def test_health_index_form_and_unknown_pages(web: flask.testing.FlaskClient) -> None:
    assert web.get("/healthz").get_json()["status"] == "ok"
    assert 'action="/t"' in web.get("/").get_data(as_text=True)
    redirect = web.get(f"/t?id={CID}&from=1750000000000&to=")
    assert redirect.status_code == 303 and redirect.headers["Location"] == f"/t/{CID}?from=1750000000000"
    assert web.get("/nothing/here").status_code == 404


def test_settings_come_from_the_environment_and_bad_ones_are_refused() -> None:
    env = {"LOKI_URL": "http://loki:3100", "GRAFANA_URL": "https://grafana.example.test/", "LOKI_TIMEOUT_SECONDS": "3"}
    settings = TrailWebSettings.from_env(env)
    assert (settings.grafana_url, settings.trail_web_url) == ("https://grafana.example.test", "http://localhost:8090")
    assert settings.loki.timeout_seconds == 3
    with pytest.raises(ConfigError, match="TRAIL_WEB_URL"):
        TrailWebSettings.from_env({**env, "TRAIL_WEB_URL": "javascript:alert(1)"})
    with pytest.raises(ConfigError, match="LOKI_URL is not set"):
        TrailWebSettings.from_env({})


def test_trail_serve_is_a_subcommand_and_an_id_named_serve_still_works(
    loki: FakeLoki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        trail_command(["serve", "--help"])
    assert exited.value.code == 0 and "usage: trail serve" in capsys.readouterr().out
    monkeypatch.setenv("LOKI_URL", loki.url)
    assert trail_command(["--", "serve"]) == 1  # nothing found for the ID "serve"
    assert loki.queries[-1].query == trail_query("serve")


def test_a_task_run_is_drawn_from_its_publish_with_its_queue_wait(
    loki: FakeLoki, web: flask.testing.FlaskClient
) -> None:
    """A Celery task run (correlation.celery) hangs under the hop that published it: its bar starts
    at the publish, the queue wait drawn apart; its state (retry) is its status, as in the CLI."""
    task_run = "e000000000000005"
    lines = checkout_lines(CID, T0, payments_status=201)
    # Any: a ** dict of str, int and float would also fill log_line's str parameters, as far as mypy knows.
    task_fields: dict[str, Any] = {
        schema.KIND: schema.KIND_TASK,
        schema.TASK: "notifications.send",
        schema.STATE: "retry",
        schema.STATUS: 202,
        schema.DURATION_MS: 10.0,
        schema.QUEUE_WAIT_MS: 30.0,
    }
    ts, access = log_line(
        CID,
        task_run,
        ORDERS,
        "notifications",
        T0 + 40 * MS,
        "task done",
        logger=schema.ACCESS_LOGGER,
        **task_fields,
    )
    push_all(loki, [*lines, (ts, access)])
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    assert (task_run, "retry", 44) in rows(html)
    assert bar(html, task_run) == (0.0, 100.0)  # published at +0 ms (40 - 10 - 30), ends at +40 ms
    row = html[html.index(f'data-request-id="{task_run}"') :]
    assert re.search(r'<div class="queued" style="width: 75.0%"', row[:1500])  # 30 of its 40 ms
    assert "task notifications.send" in row and '<span class="status">retry</span>' in row
    assert "async: queued 30.0 ms" in html


def test_a_failed_request_says_how_many_failed_with_its_error_in_the_last_15_minutes(loki: FakeLoki) -> None:
    """ "This error, last 15 min: N requests": the root cause's error_type at its service, counted by
    Loki (the request itself, three more like it; not another type, another service or older), and
    linked to Explore on exactly those."""
    injected, now = "demo.faults.InjectedFault", time.time_ns()
    cid = new_correlation_id((now - 60 * S) // MS)
    lines = checkout_lines(cid, now - 60 * S)
    for _, line in lines:
        if line[schema.LOGGER] == schema.ACCESS_LOGGER and line[schema.SERVICE] == "payments":
            line[schema.ERROR_TYPE] = injected
    push_all(loki, lines)
    for i, (service, kind, ago_s) in enumerate(
        [
            ("payments", injected, 30),
            ("payments", injected, 300),
            ("payments", injected, 840),
            ("payments", injected, 1000),  # older than 15 minutes
            ("payments", "builtins.ValueError", 120),
            ("orders", injected, 120),
        ]
    ):
        ts, line = access_line(
            new_correlation_id((now - ago_s * S) // MS),
            f"{i:016x}",
            None,
            service,
            now - ago_s * S,
            2.0,
            "POST",
            "/x",
            500,
        )
        line[schema.ERROR_TYPE] = kind
        loki.push(ts, line)
    html = client_for(loki.url).get(f"/t/{cid}").get_data(as_text=True)
    found = must_find(
        r'id="same-error"><strong>This error, last 15 min:</strong>\s*<a href="([^"]+)">(\d+) requests</a>', html
    )
    assert found.group(2) == "4"
    assert f"failed at payments with <code>{injected}</code>" in html
    panes = parse_explore_url(found.group(1).replace("&amp;", "&"), provisioned_datasource_uids())
    (expr,) = explore_exprs(panes)
    assert expr.startswith(f'{{service_name="payments"}} | error_type="{injected}" |= "correlation.access"')
