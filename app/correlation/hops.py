"""A hop's start and end as every kind of hop has them: the Flask edge's requests
(:mod:`correlation.integrations.flask`), Celery's task runs (:mod:`correlation.integrations.celery`)
and the requests a dying gunicorn worker abandons (:mod:`correlation.integrations.gunicorn`).

- :func:`log_refused`: the inbound values refused at a hop's start, counted and logged escaped;
- :func:`failure_origin`: whose failure a failed hop is, ``self`` or ``downstream``;
- :data:`OPEN_HOPS`: the requests this process is handling now, which :func:`end_open_hops` ends
  when the process is about to be killed, and :func:`in_flight_counter` counts for a scrape;
- :func:`end_http_hop`: an HTTP request's end, the same for every web edge (Flask, Django, ASGI).

A hop's end is its access line: :func:`correlation.log.access.report_hop`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from correlation import context, ids, metrics, wire
from correlation.context import Hop
from correlation.error_type import error_type
from correlation.log.access import report_hop
from correlation.schema import (
    CALLER,
    CLIENT_CORRELATION_ID,
    DURATION_MS,
    ERROR_TYPE,
    HTTP_METHODS,
    METHOD,
    ORIGIN_DOWNSTREAM,
    ORIGIN_SELF,
    PATH,
    ROUTE,
    STATUS,
)


class Reporter(Protocol):
    """What writes the end of an open hop: the edge that started it, for ``service``."""

    service: str

    def report(
        self, environ: dict[str, Any], inbound: wire.Inbound, status: int, seconds: float, *, note: str = ""
    ) -> None: ...


class OpenHop(NamedTuple):
    """A request being handled now, as its edge saw it start: what its end needs if the process
    is killed before the response is done."""

    reporter: Reporter
    inbound: wire.Inbound
    environ: dict[str, Any]
    started: float  # time.perf_counter()


#: The requests this process is handling now, by hop request ID. The edge adds each request when
#: it starts and takes it out when it reports the end; :func:`end_open_hops` takes what is left.
OPEN_HOPS: dict[str, OpenHop] = {}


def in_flight_counter(service: str, counted: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[], int]:
    """How many requests ``service`` is handling now: read at scrape time from :data:`OPEN_HOPS`;
    only those whose environ (an ASGI scope) is ``counted``, when given."""

    def count() -> int:
        return sum(
            1
            for item in tuple(OPEN_HOPS.values())
            if item.reporter.service == service and (counted is None or counted(item.environ))
        )

    return count


def end_open_hops(status: int, note: str) -> None:
    """Report every open hop now, as ``status`` with ``note`` appended to its access line's
    message: gunicorn is killing this worker for a timeout, and these requests would otherwise
    vanish without a line. Each is taken out first, so its own end writes no second line."""
    now = time.perf_counter()
    for request_id in list(OPEN_HOPS):
        item = OPEN_HOPS.pop(request_id, None)
        if item is None:
            continue
        with context.bound(item.inbound.hop):
            item.reporter.report(item.environ, item.inbound, status, now - item.started, note=note)


def log_refused(
    logger: logging.Logger,
    service: str,
    rejections: Iterable[wire.Rejection],
    hop: Hop,
    *,
    before: str = "",
    after: str = "",
) -> None:
    """Count and log each refused inbound value (escaped, truncated) of ``hop``'s start, which
    carries a fresh ID instead: ``rejected <before><header><after> (<reason>): <value>; using <ID>``."""
    for rejection in rejections:
        metrics.count_rejected_id(service, rejection.reason)
        logger.warning(
            "rejected %s (%s): %s; using %s",
            f"{before}{rejection.header}{after}",
            rejection.reason,
            ids.printable(rejection.value),
            hop.correlation_id,
        )


def failure_origin(hop: Hop) -> str:
    """Whose failure a failed hop is (a 5xx, a failed task run): ``downstream`` when one of its
    outgoing calls failed first (:attr:`Hop.failed_calls`), else ``self``."""
    return ORIGIN_DOWNSTREAM if hop.failed_calls else ORIGIN_SELF


def end_http_hop(
    service: str,
    inbound: wire.Inbound,
    method: str,
    route: str,
    path: str,
    status: int,
    seconds: float,
    raised: type[BaseException] | None,
    pathname: str,
    *,
    note: str = "",
    metered: bool = True,
) -> None:
    """An HTTP request's end, for every web edge: RED metrics with the correlation ID as exemplar
    (``metered=False``: a websocket, whose lifetime would distort the request histogram), then its
    access line from ``pathname``, ``note`` appended to the message. ``raised``: the class of the
    exception behind a 5xx, written as its ``error_type``."""
    hop = inbound.hop
    origin = None if status < 500 else failure_origin(hop)
    if metered:
        metric_method = method if method in HTTP_METHODS else "other"  # the client's to choose: bounded
        metrics.observe_request(service, route, metric_method, status, seconds, hop.correlation_id, origin)
    # To the microsecond, as round(seconds * 1000, 3) would (but at exact halves, which it rounds
    # to even): round() with digits goes through a decimal conversion, three times the cost.
    duration_ms = (seconds * 1_000_000 + 0.5) // 1 / 1000
    fields = {
        METHOD: method,
        ROUTE: route,
        PATH: path,
        STATUS: status,
        DURATION_MS: duration_ms,
        CALLER: inbound.caller,
    }
    if inbound.client_correlation_id is not None:
        fields[CLIENT_CORRELATION_ID] = inbound.client_correlation_id
    if origin is not None and raised is not None:
        fields[ERROR_TYPE] = error_type(raised)
    level = logging.INFO if origin is None else logging.ERROR
    report_hop(level, pathname, "%s %s %d %.1fms%s", (method, path, status, duration_ms, note), hop, origin, fields)
