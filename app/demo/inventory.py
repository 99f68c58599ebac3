"""inventory, the demo's ASGI service: FastAPI under gunicorn's uvicorn workers, so the checkout's
trail crosses Flask and FastAPI hops alike (a mixed chain).

Its routes, answers, log lines, fault switch and token rules are those of the Flask services
(:mod:`demo.services`, :mod:`demo.faults`); the edge is :mod:`correlation.integrations.asgi`.
The endpoints are plain ``def``: FastAPI runs them in Starlette's threadpool, so the injected
latency (a ``time.sleep``) holds one thread, not the event loop, and the hop goes with them.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

import correlation
from correlation.integrations.asgi import CorrelationMiddleware
from demo.faults import FaultAccess, Faults

log = logging.getLogger("demo")


def create_inventory_app(settings: correlation.Settings, faults: Faults, access: FaultAccess) -> FastAPI:
    """The FastAPI app of inventory: ``POST /reservations``, ``GET /reservations/{id}``, the
    fault switch ``/admin/faults`` and ``/healthz``."""
    service = settings.service
    api = FastAPI(title=service, docs_url=None, redoc_url=None, openapi_url=None)
    correlation.setup_logging(settings)

    def apply_faults() -> None:  # a sync dependency: the threadpool, like the endpoints
        faults.apply()

    routes = APIRouter(dependencies=[Depends(apply_faults)])

    @routes.post("/reservations", status_code=201)
    def reserve(body: Annotated[dict[str, Any], Depends(_json_object)]) -> dict[str, Any]:
        log.info("reserving %d item(s) for order %s", len(body.get("items", [])), body.get("order_id"))
        return {"reservation_id": uuid.uuid4().hex[:12]}

    @routes.get("/reservations/{reservation_id}")
    def reservation(reservation_id: str) -> dict[str, Any]:
        log.info("looking up reservation %s", reservation_id)  # for the notifications worker
        return {"reservation_id": reservation_id, "status": "held"}

    api.include_router(routes)
    api.include_router(_admin_router(faults, access, logging.getLogger(service)))

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": service}

    api.add_middleware(CorrelationMiddleware, settings=settings)
    log.info("%s ready (loki: %s)", service, settings.loki.url or "off")
    return api


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object, or ``{}`` for anything else (Flask's ``get_json(silent=True) or {}``)."""
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _admin_router(faults: Faults, access: FaultAccess, app_log: logging.Logger) -> APIRouter:
    """``/admin/faults`` as :func:`demo.faults.admin_blueprint` answers it, under the same rules."""
    admin = APIRouter()

    def refused(request: Request) -> JSONResponse | None:
        peer = request.client.host if request.client else None
        refusal = access.refusal(request.headers.get("authorization"), peer)
        if refusal is None:
            return None
        status, reason = refusal
        return JSONResponse({"error": reason}, status, {"WWW-Authenticate": "Bearer"} if status == 401 else None)

    @admin.get("/admin/faults", response_model=None)
    def show(request: Request) -> Any:
        return refused(request) or asdict(faults.settings)

    @admin.post("/admin/faults", response_model=None)
    async def change(request: Request) -> Any:
        denial = refused(request)
        if denial is not None:
            return denial
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": 'expected a JSON object like {"error_rate": 0.5, "latency_ms": 100}'}, 400)
        try:
            updated = faults.update(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        app_log.warning("faults changed: %s", asdict(updated))
        return asdict(updated)

    return admin
