"""Sample log lines of one request, shaped as the library writes them (keys: ``correlation.schema``),
for staging trails in the fake Loki without running the services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from correlation import schema
from fakes.loki import FakeLoki

MS = 1_000_000

#: Request IDs of the sample checkout: gateway -> orders -> (payments, inventory).
GATEWAY, ORDERS, PAYMENTS, INVENTORY = "a000000000000001", "b000000000000002", "c000000000000003", "d000000000000004"


def rfc3339(ts_ns: int) -> str:
    """The ``time`` key's format: RFC 3339 UTC, microseconds, ``Z``."""
    moment = datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ns // 1000 % 1_000_000:06d}Z"


def log_line(
    cid: str,
    rid: str,
    parent: str | None,
    service: str,
    ts_ns: int,
    message: str,
    level: str = "INFO",
    logger: str | None = None,
    **extra: Any,
) -> tuple[int, dict[str, Any]]:
    """(Loki timestamp, JSON line) for an application line of one hop."""
    line = {
        schema.TIME: rfc3339(ts_ns),
        schema.LEVEL: level,
        schema.LOGGER: logger or f"demo.{service}",
        schema.MESSAGE: message,
        schema.SERVICE: service,
        schema.CORRELATION_ID: cid,
        schema.REQUEST_ID: rid,
        schema.PARENT_REQUEST_ID: parent,
        **extra,
    }
    return ts_ns, line


def access_line(
    cid: str,
    rid: str,
    parent: str | None,
    service: str,
    start_ns: int,
    duration_ms: float,
    method: str,
    route: str,
    status: int,
    caller: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """The hop's access line: written at the END of the request, so its time is start + duration."""
    end_ns = start_ns + int(duration_ms * MS)
    fields: dict[str, Any] = {
        schema.METHOD: method,
        schema.ROUTE: route,
        schema.PATH: route,
        schema.STATUS: status,
        schema.DURATION_MS: duration_ms,
        schema.CALLER: caller,
    }
    return log_line(
        cid,
        rid,
        parent,
        service,
        end_ns,
        f"{method} {route} {status}",
        level="ERROR" if status >= 500 else "INFO",
        logger=schema.ACCESS_LOGGER,
        **fields,
    )


#: A task run's ``status`` by its end state, as correlation.celery writes it (any other end: 500).
TASK_STATUS = {"success": 200, "retry": 202}


def task_run_line(
    cid: str, rid: str, service: str, ts_ns: int, task: str, state: str, error_type: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The access line of one attempt of ``task`` that ended in ``state`` (``success``, ``retry``,
    ``failure``), as correlation.celery writes it; a failure raised ``error_type`` on its own."""
    fields: dict[str, Any] = {
        schema.KIND: schema.KIND_TASK,
        schema.TASK: task,
        schema.TASK_ID: f"t-{cid}",
        schema.STATE: state,
        schema.ATTEMPT: 1,
        schema.STATUS: TASK_STATUS.get(state, 500),
        schema.DURATION_MS: 3.0,
    }
    failed = fields[schema.STATUS] >= 500
    if failed:
        fields[schema.ORIGIN] = schema.ORIGIN_SELF
        if error_type is not None:
            fields[schema.ERROR_TYPE] = error_type
    level = "ERROR" if failed else "WARNING" if state == "retry" else "INFO"
    return log_line(cid, rid, None, service, ts_ns, f"task {task} {state}", level, schema.ACCESS_LOGGER, **fields)


def checkout_lines(cid: str, t0_ns: int, *, payments_status: int = 500) -> list[tuple[int, dict[str, Any]]]:
    """A whole POST /checkout: four hops, two lines of their own each plus the access line."""
    failed = payments_status >= 500
    traceback = {schema.EXCEPTION: "Traceback (most recent call last):\n  ...\nTimeoutError: processor"}
    lines = [
        log_line(cid, GATEWAY, None, "gateway", t0_ns + 1 * MS, "checkout started"),
        log_line(cid, GATEWAY, None, "gateway", t0_ns + 2 * MS, "calling orders"),
        log_line(cid, ORDERS, GATEWAY, "orders", t0_ns + 4 * MS, "creating order", order_id="o-17"),
        log_line(cid, ORDERS, GATEWAY, "orders", t0_ns + 5 * MS, "calling payments"),
        log_line(cid, PAYMENTS, ORDERS, "payments", t0_ns + 7 * MS, "charging card"),
        log_line(
            cid,
            PAYMENTS,
            ORDERS,
            "payments",
            t0_ns + 9 * MS,
            "card processor timed out" if failed else "charged",
            level="ERROR" if failed else "INFO",
            **(traceback if failed else {}),
        ),
        access_line(
            cid,
            PAYMENTS,
            ORDERS,
            "payments",
            t0_ns + 6 * MS,
            12.0,
            "POST",
            "/payments",
            payments_status,
            caller="orders",
        ),
        log_line(cid, INVENTORY, ORDERS, "inventory", t0_ns + 21 * MS, "reserving stock"),
        access_line(
            cid, INVENTORY, ORDERS, "inventory", t0_ns + 20 * MS, 8.0, "POST", "/reservations", 201, caller="orders"
        ),
        access_line(
            cid,
            ORDERS,
            GATEWAY,
            "orders",
            t0_ns + 3 * MS,
            30.0,
            "POST",
            "/orders",
            502 if failed else 201,
            caller="gateway",
        ),
        access_line(cid, GATEWAY, None, "gateway", t0_ns, 40.0, "POST", "/checkout", 502 if failed else 201),
    ]
    return sorted(lines, key=lambda pair: pair[0])


def push_all(loki: FakeLoki, lines: list[tuple[int, dict[str, Any]]]) -> None:
    """Stage ``lines`` in the fake Loki."""
    for ts_ns, line in lines:
        loki.push(ts_ns, line)
