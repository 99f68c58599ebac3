"""How the demo's services and its worker call each other: where each one is, how long a call
may take, and what a failed call raises. (The correlation headers are added by the library.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

SERVICES = ("gateway", "orders", "payments", "inventory")
DEFAULT_PORTS = {"gateway": 8080, "orders": 8081, "payments": 8082, "inventory": 8083}
#: The services that are ASGI apps (FastAPI), run by gunicorn's uvicorn workers; the rest are Flask.
ASGI_SERVICES = frozenset({"inventory"})
#: The Celery worker's service name (demo.notifications). Here, not there: what starts the worker
#: (demo.local_worker) must import without Celery, to say that Celery is missing.
WORKER_SERVICE = "notifications"
#: (connect, read) seconds for calls between services: a slow hop fails fast instead of piling up.
CALL_TIMEOUT = (1.0, 5.0)


class DownstreamError(RuntimeError):
    """A service this one depends on failed; the caller answers 502."""


def downstream_url(env: Mapping[str, str], service: str) -> str:
    """``<SERVICE>_URL`` from the environment, else the service on 127.0.0.1 at its default port."""
    var = f"{service.upper()}_URL"
    return env.get(var, "").strip().rstrip("/") or f"http://127.0.0.1:{DEFAULT_PORTS[service]}"


def call(session: requests.Session, method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call another service; a transport error or a 5xx raises :class:`DownstreamError`."""
    try:
        response = session.request(method, url, json=payload, timeout=CALL_TIMEOUT)
    except requests.RequestException as exc:
        raise DownstreamError(f"{method} {url} failed: {exc.__class__.__name__}") from exc
    if response.status_code >= 500:
        raise DownstreamError(f"{method} {url} answered {response.status_code}")
    body: dict[str, Any] = response.json()
    return body
