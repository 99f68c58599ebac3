"""The demo chain: gateway -> orders -> (payments, inventory).

``POST /checkout`` on the gateway places an order; orders charges the payment and reserves the
stock (both at once, in two threads, to show the context following work into threads). Each
service is built by the same app factory, chosen by ``SERVICE_NAME``, and run under gunicorn:

    SERVICE_NAME=orders PORT=8081 gunicorn --config python:demo.gunicorn_conf "demo.services:create_app()"

gateway, orders and payments are Flask apps (gthread workers); inventory is a FastAPI app
(:mod:`demo.inventory`, uvicorn workers): one checkout's trail crosses both kinds of edge.

The services use only the public API of :mod:`correlation`; nothing here is special-cased by it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import requests

import correlation
from correlation.settings import ConfigError
from demo.calls import ASGI_SERVICES, DEFAULT_PORTS, SERVICES, DownstreamError, downstream_url
from demo.calls import call as _call
from demo.faults import SHARED_FILE_ENV, FaultAccess, Faults, FaultSettings, admin_blueprint

__all__ = ["ASGI_SERVICES", "DEFAULT_PORTS", "SERVICES", "create_app"]

log = logging.getLogger("demo")


def _gateway(bp: flask.Blueprint, session: requests.Session, env: Mapping[str, str]) -> None:
    orders_url = downstream_url(env, "orders")

    @bp.post("/checkout")
    def checkout() -> Any:
        cart = flask.request.get_json(silent=True) or {}
        items = cart.get("items") or [{"sku": "wristband-day-pass", "quantity": 1}]
        log.info("checkout started with %d item(s)", len(items))
        order = _call(session, "POST", f"{orders_url}/orders", {"items": items})
        log.info("checkout complete: order %s", order["order_id"])
        return {
            "order_id": order["order_id"],
            "status": "confirmed",
            "correlation_id": correlation.correlation_id(),
        }, 201


def _orders(bp: flask.Blueprint, session: requests.Session, env: Mapping[str, str]) -> None:
    payments_url = downstream_url(env, "payments")
    inventory_url = downstream_url(env, "inventory")
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="orders-fanout")
    confirmations = _confirmations(env)

    @bp.post("/orders")
    def create_order() -> Any:
        items = (flask.request.get_json(silent=True) or {}).get("items", [])
        order_id = uuid.uuid4().hex[:12]
        log.info("order %s: charging payment and reserving %d item(s)", order_id, len(items))
        # correlation.submit keeps this request's hop in the pool's threads.
        payment = correlation.submit(pool, _call, session, "POST", f"{payments_url}/payments", {"order_id": order_id})
        stock = correlation.submit(
            pool, _call, session, "POST", f"{inventory_url}/reservations", {"order_id": order_id, "items": items}
        )
        payment_id, reservation_id = payment.result()["payment_id"], stock.result()["reservation_id"]
        log.info("order %s placed (payment %s, reservation %s)", order_id, payment_id, reservation_id)
        if confirmations is not None:  # a task for the notifications worker; never fails the order
            confirmations.send(order_id, reservation_id)
        return {"order_id": order_id, "payment_id": payment_id, "reservation_id": reservation_id}, 201


def _confirmations(env: Mapping[str, str]) -> Any:
    """The publisher of confirmation tasks, or None without ``CELERY_BROKER_URL`` (no worker)."""
    url = env.get("CELERY_BROKER_URL", "").strip()
    if not url:
        log.info("confirmations: off (CELERY_BROKER_URL is not set)")
        return None
    from demo.notifications import Confirmations  # imports Celery: only when there is a broker

    return Confirmations(url)


def _payments(bp: flask.Blueprint, _session: requests.Session, _env: Mapping[str, str]) -> None:
    @bp.post("/payments")
    def charge() -> Any:
        order_id = (flask.request.get_json(silent=True) or {}).get("order_id")
        log.info("charging card for order %s", order_id)
        return {"payment_id": uuid.uuid4().hex[:12]}, 201


_ROUTES: dict[str, Callable[[flask.Blueprint, requests.Session, Mapping[str, str]], None]] = {
    "gateway": _gateway,
    "orders": _orders,
    "payments": _payments,
}


def create_app(service: str | None = None, env: Mapping[str, str] | None = None) -> Any:
    """Build the app of one demo service (``SERVICE_NAME`` when ``service`` is None): a Flask app,
    or for the services in :data:`ASGI_SERVICES` (inventory) a FastAPI one."""
    env = os.environ if env is None else env
    service = service or env.get("SERVICE_NAME", "").strip()
    if service not in SERVICES:
        raise ConfigError(f"SERVICE_NAME={service!r} is not valid: expected one of {', '.join(SERVICES)}")
    settings = correlation.Settings.from_env(env, service=service)
    faults = Faults(FaultSettings.from_env(env), env.get(SHARED_FILE_ENV))
    access = FaultAccess.from_env(env)
    if service in ASGI_SERVICES:
        from demo.inventory import create_inventory_app  # imports FastAPI: only where it runs

        return create_inventory_app(settings, faults, access)

    app = flask.Flask(service)
    correlation.setup_logging(settings)
    correlation.Correlation(app, settings)

    api = flask.Blueprint("api", __name__)
    api.before_request(faults.apply)
    _ROUTES[service](api, requests.Session(), env)
    app.register_blueprint(api)
    app.register_blueprint(admin_blueprint(faults, access))

    @app.get("/healthz")
    def healthz() -> Any:
        return {"status": "ok", "service": service}

    @app.errorhandler(DownstreamError)
    def downstream_failed(exc: DownstreamError) -> Any:
        log.error("downstream failure: %s", exc)
        return {"error": str(exc), "correlation_id": correlation.correlation_id()}, 502

    log.info("%s ready (loki: %s)", service, settings.loki.url or "off")
    return app
