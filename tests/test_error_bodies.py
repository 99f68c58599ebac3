"""Error responses carry the correlation ID: problem+json for API clients, the page plus the ID for browsers."""

from __future__ import annotations

import flask
import pytest

from correlation import Correlation, Settings

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _app(error_bodies: bool = True) -> flask.Flask:
    app = flask.Flask("errors")
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret detail that must not leak")

    @app.get("/gone")
    def gone() -> str:
        flask.abort(410, description="the wristband expired")

    app.get("/only-get")(lambda: "ok")
    Correlation(app, Settings(service="errs", error_bodies=error_bodies), propagate_requests=False)
    return app


@pytest.mark.parametrize("path, status", [("/boom", 500), ("/gone", 410), ("/nowhere", 404)])
def test_api_clients_get_problem_json_with_the_id(path: str, status: int) -> None:
    response = _app().test_client().get(path, headers={"Accept": "*/*", "X-Correlation-ID": "cid-42"})
    assert response.status_code == status and response.mimetype == "application/problem+json"
    problem = response.get_json(force=True)
    assert problem["status"] == status and problem["correlation_id"] == "cid-42" and problem["title"]
    assert "secret detail" not in response.get_data(as_text=True), "an unhandled exception's message stays private"
    if path == "/gone":
        assert problem["detail"] == "the wristband expired"


def test_browsers_get_the_page_plus_the_id_escaped() -> None:
    client = _app().test_client()
    response = client.get("/gone", headers={"Accept": BROWSER, "X-Correlation-ID": "cid-html"})
    body = response.get_data(as_text=True)
    assert response.status_code == 410 and response.mimetype == "text/html"
    assert "<h1>Gone</h1>" in body and "<code>cid-html</code>" in body


def test_headers_of_the_error_are_kept() -> None:
    response = _app().test_client().post("/only-get", headers={"Accept": "application/json"})
    assert response.status_code == 405 and "GET" in response.headers["Allow"]
    assert response.mimetype == "application/problem+json"


def test_opt_out_leaves_werkzeug_alone() -> None:
    response = _app(error_bodies=False).test_client().get("/gone", headers={"Accept": "application/json"})
    assert (
        response.status_code == 410
        and response.mimetype == "text/html"
        and "Correlation ID" not in response.get_data(as_text=True)
    )


def test_the_apps_own_handlers_win() -> None:
    app = _app()

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[str, int]:
        return "custom 404", 404

    @app.errorhandler(Exception)
    def anything(error: Exception) -> tuple[str, int]:
        return "custom anything", 418

    client = app.test_client()
    assert client.get("/nowhere").get_data(as_text=True) == "custom 404"
    assert client.get("/gone").get_data(as_text=True) == "custom anything", "registered after us, still wins"
    registered_first = flask.Flask("first")
    registered_first.register_error_handler(Exception, lambda e: ("mine", 599))
    registered_first.get("/gone")(lambda: flask.abort(410))
    Correlation(registered_first, Settings(service="errs"), propagate_requests=False)
    assert registered_first.test_client().get("/gone").status_code == 599


@pytest.mark.parametrize(
    "accept",
    [None, "", "*/*", BROWSER, "application/json", "text/html", "text/*", "application/json;q=0.5, text/html",
     "text/html;q=0.4, */*;q=0.5", "text/html;q=0, */*", "image/png", "text/html;q=bad, application/json;q=0.1"],
)  # fmt: skip
def test_the_framework_free_choice_of_error_body_agrees_with_werkzeug(accept: str | None) -> None:
    """The ASGI edge negotiates without Werkzeug (correlation.problem): it must answer as Flask's does."""
    from werkzeug.datastructures import MIMEAccept
    from werkzeug.http import parse_accept_header

    from correlation import problem

    best = parse_accept_header(accept or "", MIMEAccept).best_match([*problem.JSON_TYPES, "text/html"])
    werkzeug_html = best == "text/html" if accept else False
    assert problem.wants_html(accept) == werkzeug_html
