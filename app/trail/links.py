"""Links to one request's trail, each over a window of minutes: Grafana Explore, the request-trail
dashboard, and the trail page (``trail serve``).

Explore's deep link is ``/explore?schemaVersion=1&orgId=1&panes=<JSON>``: one pane with the Loki
query and a range whose ``from``/``to`` are strings of epoch milliseconds (Grafana reads numbers
there only as strings; docs/loki-facts.md, "Explore deep links"). The alert rules write the same link in Go templates
(alerts/correlation-demo.rules.yml) and the tests compare their output with :func:`explore_url`,
so the page's button, the alerts and the tests build one link format.

Grafana data links cannot compute a time (grafana/grafana issue 82897), so links that Grafana
itself renders (exemplars, the ``correlation_id`` field, dashboards) point at the trail web app,
which derives the window from the ID: :func:`go_path` and :func:`trail_page_path`.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from trail.logql import trail_query
from trail.window import Window

#: Grafana's address as a browser sees it, when GRAFANA_URL is not set (the compose default).
DEFAULT_GRAFANA_URL = "http://localhost:3000"
#: The trail web app's address as a browser sees it, when TRAIL_WEB_URL is not set.
DEFAULT_TRAIL_WEB_URL = "http://localhost:8090"
#: The provisioned Loki data source (grafana/provisioning/datasources/datasources.yml).
LOKI_DATASOURCE_UID = "loki"
#: The Explore pane's key in the link (any name works; the rules and provisioning use this one).
TRAIL_PANE = "trail"
#: The request-trail dashboard (grafana/dashboards/request-trail.json) and its ID variable.
REQUEST_TRAIL_DASHBOARD_PATH = "/d/request-trail/request-trail"
REQUEST_TRAIL_VARIABLE = "correlation_id"
#: The trail web app's routes: the page, and the redirect to Explore.
PAGE_ROUTE = "/t/"
GO_ROUTE = "/go/"


def explore_url(
    grafana_url: str, pane: str, expr: str, start: str, end: str, datasource: str = LOKI_DATASOURCE_UID
) -> str:
    """Grafana Explore showing the LogQL ``expr`` of a Loki data source from ``start`` to ``end``
    (strings: epoch milliseconds, or Grafana's relative ``now-6h``/``now``)."""
    panes = {
        pane: {
            "datasource": datasource,
            "queries": [
                {
                    "refId": "A",
                    "datasource": {"type": "loki", "uid": datasource},
                    "editorMode": "code",
                    "queryType": "range",
                    "expr": expr,
                }
            ],
            "range": {"from": start, "to": end},
        }
    }
    encoded = quote(json.dumps(panes, separators=(",", ":")), safe="")
    return f"{grafana_url.rstrip('/')}/explore?schemaVersion=1&orgId=1&panes={encoded}"


def window_ms(window: Window) -> tuple[str, str]:
    """The window in epoch milliseconds as Grafana takes them, widened to whole milliseconds so
    nothing searched by nanoseconds falls outside."""
    return str(window.start_ns // 1_000_000), str(-(-window.end_ns // 1_000_000))


def trail_explore_url(grafana_url: str, correlation_id: str, window: Window) -> str:
    """Explore on every service's lines of one request, over ``window``."""
    return explore_url(grafana_url, TRAIL_PANE, trail_query(correlation_id), *window_ms(window))


def trail_dashboard_url(grafana_url: str, correlation_id: str, window: Window) -> str:
    """The request-trail dashboard for one request, over ``window``."""
    start, end = window_ms(window)
    params = {"orgId": "1", f"var-{REQUEST_TRAIL_VARIABLE}": correlation_id, "from": start, "to": end}
    return f"{grafana_url.rstrip('/')}{REQUEST_TRAIL_DASHBOARD_PATH}?{urlencode(params)}"


def _with_window(path: str, window: Window | None) -> str:
    if window is None:
        return path
    start, end = window_ms(window)
    return f"{path}?{urlencode({'from': start, 'to': end})}"


def trail_page_path(correlation_id: str, window: Window | None = None) -> str:
    """The trail page of one request; without ``window`` the page derives it from the ID."""
    return _with_window(PAGE_ROUTE + quote(correlation_id, safe=""), window)


def go_path(correlation_id: str, window: Window | None = None) -> str:
    """The trail web app's redirect to Explore; without ``window`` it derives it from the ID."""
    return _with_window(GO_ROUTE + quote(correlation_id, safe=""), window)
