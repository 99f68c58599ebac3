"""A FastAPI service behind the ASGI edge, for tests/test_asgi.py: run by real uvicorn and by
gunicorn with uvicorn workers (``tests.support.asgi_app:app``).

``DOWNSTREAM_URL`` is a header-echo server (tests.fakes.HeaderEcho): ``/call/httpx`` calls it
with httpx's AsyncClient, ``/call/requests`` with ``requests`` from Starlette's threadpool.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import requests
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse

import correlation
from correlation.integrations.asgi import CorrelationMiddleware

settings = correlation.Settings.from_env()
correlation.setup_logging(settings)
log = logging.getLogger("asgi_app")
DOWNSTREAM = os.environ.get("DOWNSTREAM_URL", "")
#: Seconds between the chunks of /stream (three chunks: the response lasts at least twice this).
STREAM_PAUSE = float(os.environ.get("STREAM_PAUSE_SECONDS", "0.3"))
lifespan_ran: list[str] = []


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    lifespan_ran.append("startup")  # reached only if the edge passes lifespan through
    yield


api = FastAPI(lifespan=lifespan)


def _hop() -> dict[str, Any]:
    hop = correlation.current()
    return {"correlation_id": hop.correlation_id if hop else None, "request_id": hop.request_id if hop else None}


@api.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"lifespan": lifespan_ran, "pid": os.getpid()}


@api.get("/items/{item_id}")
async def item(item_id: str, pause: float = 0.0) -> dict[str, Any]:
    before = _hop()
    await asyncio.sleep(pause)  # other requests run on this loop meanwhile
    log.info("item %s looked up", item_id)
    return {"item": item_id, "before": before, "after": _hop()}


@api.get("/call/httpx")
async def call_httpx() -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{DOWNSTREAM}/echo")
    return {"sent": response.json(), "hop": _hop()}


@api.get("/call/requests")
def call_requests() -> dict[str, Any]:  # a sync endpoint: FastAPI runs it in Starlette's threadpool
    return {"sent": requests.get(f"{DOWNSTREAM}/echo", timeout=5).json(), "hop": _hop()}


@api.get("/stream")
async def stream() -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            if n:
                await asyncio.sleep(STREAM_PAUSE)
            yield f"chunk {n}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


@api.get("/linger")
async def linger(request: Request) -> dict[str, Any]:
    """A long poll: waits until its client goes away (or 10 s pass)."""
    for _ in range(200):
        if await request.is_disconnected():
            break
        await asyncio.sleep(0.05)
    return {"waited": True}


@api.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret detail that must not leak")


@api.websocket("/ws/{room}")
async def room(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_json({"room": room, "echo": text, **_hop()})
    await websocket.close()


api.add_middleware(CorrelationMiddleware, settings=settings)
app = api
