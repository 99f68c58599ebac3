"""Celery tasks as hops of the trail: ``pip install 'correlation-trail[celery]'``, then::

    import correlation
    from correlation.integrations import celery as correlation_celery

    settings = correlation.Settings.from_env()  # SERVICE_NAME, LOKI_URL, ...
    correlation_celery.install(celery_app, settings)  # publisher and worker alike

Celery's signals do the work (they are process-wide: one call covers every app in the process):

- ``before_task_publish``: inside a hop (a request, or another task) the message headers carry the
  hop (:mod:`correlation.task_headers`: correlation ID, this hop's request ID as the task's
  parent, caller, ``traceparent`` and ``tracestate``) and the publish time (``X-Published-At``). A retry is published
  from inside the failing attempt, so the next attempt's parent is that attempt. Outside any hop
  (beat, a shell, a script) the task starts a fresh trail: a new ID, no parent.
- ``task_prerun``: the run becomes a hop with its own request ID, bound until ``task_postrun``, so
  every line any logger writes during it carries the context. A missing or refused header means a
  fresh ID; a refused value is logged escaped and counted (``correlation_rejected_ids_total``, the
  edge's reasons, plus ``bad_published_at``) and the task runs anyway. A broker is not a client
  address, so ``CORRELATION_TRUST_INBOUND`` does not apply: shapes are checked, senders are not.
- ``task_postrun``: one access line (logger ``correlation.access``, keys ``schema.TASK_ACCESS_KEYS``)
  and task RED metrics with the correlation ID as exemplar.
- ``setup_logging``: answered, so the worker keeps the process's handlers (Celery would otherwise
  replace the root logger's handlers and keep task loggers to itself).

:func:`send_task` publishes without ever failing the caller: for work (a confirmation email) that
must not fail the request that asks for it when the broker is down.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import signals

from correlation import context, hops, ids, metrics, schema, wire
from correlation.error_type import error_type
from correlation.log.access import report_hop
from correlation.settings import Settings
from correlation.setup import setup_logging
from correlation.task_headers import TASK_HEADERS, TaskInbound, publish_headers, read_headers

_log = logging.getLogger(schema.TASK_LOGGER)

#: Access-line status of each end of a run: what ``trail --last-error`` and the dashboards read.
#: A retry is not a failure of the request (the next attempt may succeed): 202, accepted again.
STATUS_OF_STATE = {schema.STATE_SUCCESS: 200, schema.STATE_RETRY: 202, "ignored": 204}
FAILURE_STATUS = 500
_header = schema.CORRELATION_HEADER
_W3C_HEADERS = frozenset({schema.TRACEPARENT_HEADER, schema.TRACESTATE_HEADER})
_install_lock = threading.Lock()
_installed = False


def rfc3339_ms(ms: int) -> str:
    """Unix milliseconds in the ``time`` key's format (RFC 3339 UTC, microseconds, ``Z``)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- publishing ----------------------------------------------------------------------------------


def _on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    hop = context.current()
    if hop is None and any(str(k).lower() == _header.lower() for k in headers):
        # Outside any hop with an ID already set: a publisher that chose it. Keep it.
        headers.setdefault(schema.PUBLISHED_AT_HEADER, str(int(time.time() * 1000)))
        return
    # Inside a hop its headers win: a retry's message copies the failed attempt's old ones. W3C
    # headers the hop does not send go too: an old tracestate is another trace's, or was refused.
    # (Outside a hop a publisher's own traceparent, an OpenTelemetry one say, is left alone.)
    ours = publish_headers(hop, context.service(), _header)
    if hop is not None:
        for name in [k for k in headers if str(k).lower() in _W3C_HEADERS and k not in ours]:
            del headers[name]
    headers.update(ours)


def send_task(
    app: Any, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
) -> Any:
    """``app.send_task`` that never raises: when the broker cannot take the message the failure
    is logged and counted (``task_publish_failures_total``) and None is returned. How long it may
    try is the app's ``task_publish_retry_policy`` and broker timeouts."""
    try:
        return app.send_task(name, args=args, kwargs=kwargs, **options)
    except Exception as exc:  # noqa: BLE001 - the boundary: the caller's own work must go on
        reason = "broker_unavailable" if isinstance(exc, OSError | ConnectionError) or _is_operational(exc) else "error"
        metrics.count_task_publish_failure(context.service(), name, reason)
        _log.error("could not publish task %s (%s): %s", name, reason, ids.printable(repr(exc), 300))
        return None


def _is_operational(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError  # kombu comes with celery

    return isinstance(exc, OperationalError)


# -- running --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One task run in progress: kept on Celery's request object from prerun to postrun."""

    hop: context.Hop
    token: Any
    caller: str | None
    published_ms: int | None
    queue_wait_ms: float | None
    started: float = field(default_factory=time.perf_counter)


_RUN_ATTR = "_correlation_run"


def _message_headers(request: Any) -> dict[str, Any]:
    """The message's headers: Celery puts custom headers both on ``request.headers`` and as
    attributes of the request (which one depends on how the task was sent)."""
    found: dict[str, Any] = dict(request.headers) if isinstance(getattr(request, "headers", None), dict) else {}
    attributes = vars(request)
    for name in (_header, *TASK_HEADERS):
        if name in attributes:
            found.setdefault(name, attributes[name])
    return found


def _on_prerun(task: Any = None, **_: Any) -> None:
    if task is None:
        return
    request = task.request
    current = context.current()
    if getattr(request, "is_eager", False) and current is not None:
        # Run in the caller's thread (apply(), task_always_eager): a child of the calling hop.
        read = TaskInbound(wire.Inbound(current.child(), context.service(), ()), None, ())
    else:
        read = read_headers(_message_headers(request), _header)
    hop = read.inbound.hop
    token = context.bind(hop)
    service = context.service()
    hops.log_refused(_log, service, read.rejections, hop, after=f" of task {task.name}")
    wait_ms = None if read.published_ms is None else max(0.0, time.time() * 1000 - read.published_ms)
    setattr(request, _RUN_ATTR, _Run(hop, token, read.inbound.caller, read.published_ms, wait_ms))
    metrics.TASK_IN_PROGRESS.labels(service).inc()


def _on_postrun(task: Any = None, state: str | None = None, retval: Any = None, **_: Any) -> None:
    run: _Run | None = getattr(getattr(task, "request", None), _RUN_ATTR, None)
    if run is None:
        return
    try:
        # A failed run's retval is the exception that failed it (Celery's trace).
        raised = retval if isinstance(retval, BaseException) else None
        _report(task, run, (state or "").lower(), time.perf_counter() - run.started, raised)
    finally:
        delattr(task.request, _RUN_ATTR)
        metrics.TASK_IN_PROGRESS.labels(context.service()).dec()
        try:
            context.reset(run.token)
        except ValueError:  # bound in another context (should not happen): leave none bound
            context.bind(None)


def _report(task: Any, run: _Run, state: str, seconds: float, raised: BaseException | None = None) -> None:
    """The run's end: metrics with the ID as exemplar, then the access line."""
    service, name, hop = context.service(), str(task.name), run.hop
    state = state or "unknown"  # Celery's end states, lowercased: success, retry, failure, ignored, rejected
    status = STATUS_OF_STATE.get(state, FAILURE_STATUS)
    origin = None if status < 500 else hops.failure_origin(hop)
    wait_seconds = None if run.queue_wait_ms is None else run.queue_wait_ms / 1000
    metrics.observe_task(service, name, state, status, seconds, wait_seconds, hop.correlation_id, origin)
    level = logging.ERROR if origin else logging.WARNING if state == schema.STATE_RETRY else logging.INFO
    request = task.request
    delivery = getattr(request, "delivery_info", None) or {}
    duration_ms = round(seconds * 1000, 3)
    fields: dict[str, Any] = {
        schema.KIND: schema.KIND_TASK,
        schema.TASK: name,
        schema.TASK_ID: getattr(request, "id", None),
        schema.STATE: state,
        schema.ATTEMPT: int(getattr(request, "retries", 0) or 0) + 1,
        schema.QUEUE: delivery.get("routing_key") if isinstance(delivery, dict) else None,
        schema.PUBLISHED_AT: None if run.published_ms is None else rfc3339_ms(run.published_ms),
        schema.QUEUE_WAIT_MS: None if run.queue_wait_ms is None else round(run.queue_wait_ms, 3),
        schema.STATUS: status,
        schema.DURATION_MS: duration_ms,
        schema.CALLER: run.caller,
    }
    if origin is not None and raised is not None:
        fields[schema.ERROR_TYPE] = error_type(type(raised))
    waited = "" if run.queue_wait_ms is None else f" (queued {run.queue_wait_ms:.1f}ms)"
    report_hop(level, __file__, "task %s %s %.1fms%s", (name, state, duration_ms, waited), hop, origin, fields)


# -- installing -----------------------------------------------------------------------------------


def install(app: Any = None, settings: Settings | None = None) -> None:
    """Make published tasks carry the current hop and task runs become hops. Idempotent.

    ``settings``: the correlation header's name, and the logging a worker sets up when Celery
    would configure its own (without them: ``X-Correlation-ID``, and the process keeps the logging
    it has). ``app``: also told not to touch the root logger, for a worker started in a way that
    skips the signal.
    """
    global _installed, _header
    if settings is not None:
        _header = settings.header
    if app is not None:
        app.conf.worker_hijack_root_logger = False

    def keep_logging(**_: Any) -> None:
        if settings is not None:
            setup_logging(settings)

    with _install_lock:
        # One receiver, the latest call's: its settings set up the worker's logging.
        signals.setup_logging.disconnect(dispatch_uid="correlation.celery.logging")
        signals.setup_logging.connect(keep_logging, weak=False, dispatch_uid="correlation.celery.logging")
        if _installed:
            return
        signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="correlation.celery.publish")
        signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="correlation.celery.prerun")
        signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="correlation.celery.postrun")
        _installed = True


def uninstall() -> None:
    """Disconnect every receiver :func:`install` connected (for tests)."""
    global _installed, _header
    with _install_lock:
        for signal, uid in (
            (signals.setup_logging, "logging"),
            (signals.before_task_publish, "publish"),
            (signals.task_prerun, "prerun"),
            (signals.task_postrun, "postrun"),
        ):
            signal.disconnect(dispatch_uid=f"correlation.celery.{uid}")
        _installed, _header = False, schema.CORRELATION_HEADER
