"""``/go/last-failed``, ``/go/lost-task``, ``/go/slowest``: the request behind an alert
(:mod:`trail.alert_requests`), as a redirect to its trail page.

Alert annotations are written when the rule is evaluated and can read only metrics: they link here
with the alert's labels and window, and these routes find the request in Loki and redirect to its
trail page. Their names take precedence over ``/go/<id>`` for an ID spelled the same (``/t/<id>``
opens it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
from werkzeug.wrappers import Response as WerkzeugResponse

from trail.alert_requests import FoundRequest, newest_failed, newest_lost_task, slowest
from trail.links import trail_page_path
from trail.logql import check_reason, check_route, check_service, check_task
from trail.loki_query import LokiQueryClient, LokiQueryError
from trail.lookup import deadline_after
from trail.web.request_args import BadRequest, name_param, peers_param, requested_window
from trail.web.settings import TrailWebSettings
from trail.window import DEFAULT_SINCE_SECONDS, Window, id_window


def add_alert_routes(
    app: flask.Flask,
    settings: TrailWebSettings,
    client: Callable[[], LokiQueryClient],
    failure: Callable[..., flask.Response],
) -> None:
    """Register the three routes on ``app``; ``client`` gives the serving thread's Loki client,
    ``failure`` renders an error page."""

    def window() -> Window:
        return requested_window(settings.max_window_seconds) or Window.last(DEFAULT_SINCE_SECONDS)

    def redirect(find: Any, what: str, searched: Window) -> WerkzeugResponse:
        timeout = settings.loki.timeout_seconds
        try:
            found: FoundRequest | None = find(deadline_after(timeout))
        except LokiQueryError as exc:
            return failure(502, exc.headline(timeout), str(exc), False)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if found is None:
            return failure(404, "Nothing found", f"No {what} in {searched}.", False)
        # Our IDs carry their time, and the page finds their window; a foreign ID's is where it was found.
        around = None if id_window(found.correlation_id) is not None else found.window
        return flask.redirect(trail_page_path(found.correlation_id, around), 302)

    @app.get("/go/last-failed")
    def go_last_failed() -> WerkzeugResponse:
        """The newest failed request (``service``, ``task``, ``peer``: failed because a call to it failed)."""
        service, task = name_param("service", check_service), name_param("task", check_task)
        peers, searched = peers_param(), window()
        what = "failed request" + (f" of {service}" if service else "") + (f", task {task}" if task else "")
        what += f" after a failed call to {' or '.join(peers)}" if peers else ""

        def find(deadline: float) -> FoundRequest | None:
            return newest_failed(client(), searched, service=service, peers=peers, task=task, deadline=deadline)

        return redirect(find, what, searched)

    @app.get("/go/lost-task")
    def go_lost_task() -> WerkzeugResponse:
        """The newest request whose task ``service`` could not queue (``task``, ``reason``)."""
        service = name_param("service", check_service, required=True)
        task, reason = name_param("task", check_task), name_param("reason", check_reason)
        searched = window()

        def find(deadline: float) -> FoundRequest | None:
            assert service is not None
            return newest_lost_task(client(), searched, service=service, task=task, reason=reason, deadline=deadline)

        return redirect(find, f"task {service} could not queue" + (f" ({task})" if task else ""), searched)

    @app.get("/go/slowest")
    def go_slowest() -> WerkzeugResponse:
        """The slowest request ``service`` answered in the window (``route``)."""
        service = name_param("service", check_service, required=True)
        route, searched = name_param("route", check_route), window()

        def find(deadline: float) -> FoundRequest | None:
            assert service is not None
            return slowest(client(), searched, service=service, route=route, deadline=deadline)

        return redirect(find, f"request of {service}" + (f" on {route}" if route else ""), searched)
