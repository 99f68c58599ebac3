"""The notifications worker: a Celery worker (service ``notifications``) behind a Redis broker.

After a successful checkout, orders publishes ``notifications.send_confirmation``; the worker logs
a line, looks the reservation up at inventory over HTTP and "sends" the email. The correlation ID
goes queue -> worker -> HTTP, and each run (each retry too) is a hop of the checkout's trail.

    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 INVENTORY_URL=http://127.0.0.1:8083 python -m demo.notifications

One process, tasks in a thread pool (``--pool threads``), for the reason the web services run one
gunicorn worker with threads: prometheus_client keeps exemplars only in single-process mode. The
process also serves a small control endpoint on ``PORT`` (8084): ``GET /healthz`` (200 once the
worker consumes), ``GET /metrics`` and ``GET|POST /admin/faults`` (the fault switch: a run fails
with ``InjectedFault`` at ``error_rate`` and is retried, ``TASK_MAX_RETRIES`` times,
``TASK_RETRY_DELAY_SECONDS`` apart; ``latency_ms`` delays each run).

A retry waiting for its countdown is a message the worker holds unacknowledged. If Redis goes away
meanwhile the worker drops its copy on reconnecting, and Redis delivers it again once
``BROKER_VISIBILITY_TIMEOUT_SECONDS`` have passed since the worker took it (kombu's
``visibility_timeout``; 1 hour by default, 60 s here): see :func:`make_celery` and
:class:`demo.broker.RedisTransport`.

Running the worker and a private redis-server next to the chain (``make run-local``, the tests):
:mod:`demo.local_worker`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import flask
import requests
from celery import Celery
from celery import signals as celery_signals
from werkzeug.serving import BaseWSGIServer, make_server

import correlation
from correlation.integrations import celery as correlation_celery
from correlation.settings import ConfigError
from demo import broker
from demo.calls import WORKER_SERVICE, DownstreamError, call, downstream_url
from demo.faults import FaultAccess, Faults, FaultSettings, InjectedFault, admin_blueprint

SERVICE = WORKER_SERVICE
TASK_NAME = "notifications.send_confirmation"
QUEUE = "notifications"
DEFAULT_PORT = 8084
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: How long a publisher may try when the broker is down: a checkout waits this long at most
#: (two quick retries, then ``send_task`` logs and counts the loss) instead of Celery's default.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
BROKER_TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0}
#: kombu's default is an hour: a retry the worker held when Redis went away would wait that long.
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 60.0

log = logging.getLogger("demo")


def broker_url(env: Mapping[str, str]) -> str | None:
    """``CELERY_BROKER_URL``, or None when the demo runs without a broker."""
    return env.get("CELERY_BROKER_URL", "").strip() or None


def make_celery(url: str, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_SECONDS) -> Celery:
    """The Celery app both sides use: orders publishes with it, the worker consumes with it.
    ``visibility_timeout``: when Redis delivers again a message the worker took and has not
    acknowledged (lost with a broker outage); it must exceed the longest retry countdown."""
    app = Celery(SERVICE, broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,  # nothing reads results: no result backend
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_connection_timeout=BROKER_TIMEOUTS["socket_connect_timeout"],
        broker_transport=broker.TRANSPORT,
        broker_transport_options={
            **BROKER_TIMEOUTS,
            "visibility_timeout": visibility_timeout,
            # Look for such messages every tenth of it (kombu: every 10 s, scanning every 10th time).
            "unacked_restore_interval": max(1, round(visibility_timeout / 10)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,  # a message waits in Redis, not in a worker that may lose it
        # Messages are acknowledged when a run starts: a run that loses the broker finishes anyway.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class Confirmations:
    """The orders side: publish a confirmation; a broker outage never fails the order."""

    def __init__(self, url: str) -> None:
        self.app = make_celery(url)
        correlation_celery.install(self.app)  # published tasks carry the request's hop

    def send(self, order_id: str, reservation_id: str) -> bool:
        kwargs = {"order_id": order_id, "reservation_id": reservation_id}
        return correlation_celery.send_task(self.app, TASK_NAME, kwargs=kwargs) is not None


def _retry_settings(env: Mapping[str, str]) -> tuple[int, float]:
    try:
        retries, delay = int(env.get("TASK_MAX_RETRIES", "2")), float(env.get("TASK_RETRY_DELAY_SECONDS", "1"))
    except ValueError:
        raise ConfigError("TASK_MAX_RETRIES must be an integer, TASK_RETRY_DELAY_SECONDS a number") from None
    if not (0 <= retries <= 10 and 0 <= delay <= 300):
        raise ConfigError("TASK_MAX_RETRIES must be in [0, 10], TASK_RETRY_DELAY_SECONDS in [0, 300]")
    return retries, delay


def visibility_timeout_seconds(env: Mapping[str, str]) -> float:
    """``BROKER_VISIBILITY_TIMEOUT_SECONDS``; by default 60 s, or twice the retry delay if more.
    Redis delivers again a message held longer than this, even while the worker still holds it, so
    it must exceed the retry delay (else a retry waiting for its countdown would run twice)."""
    _, delay = _retry_settings(env)
    raw = env.get("BROKER_VISIBILITY_TIMEOUT_SECONDS", "").strip()
    if not raw:
        return max(DEFAULT_VISIBILITY_TIMEOUT_SECONDS, 2 * delay)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not delay < seconds <= 86400:
        raise ConfigError(
            f"BROKER_VISIBILITY_TIMEOUT_SECONDS={raw!r} is not valid: expected seconds, more than "
            f"TASK_RETRY_DELAY_SECONDS ({delay:g}) and at most a day"
        )
    return seconds


def register_tasks(app: Celery, faults: Faults, env: Mapping[str, str]) -> Any:
    """The worker's one task; returns it."""
    inventory_url = downstream_url(env, "inventory")
    max_retries, delay = _retry_settings(env)
    session = requests.Session()

    @app.task(
        name=TASK_NAME,
        bind=True,
        autoretry_for=(InjectedFault, DownstreamError),
        max_retries=max_retries,
        default_retry_delay=delay,
    )
    def send_confirmation(self: Any, order_id: str, reservation_id: str) -> str:
        log.info("sending confirmation for order %s (attempt %d)", order_id, self.request.retries + 1)
        faults.apply()
        reservation = call(session, "GET", f"{inventory_url}/reservations/{reservation_id}")
        log.info("confirmation for order %s sent (reservation %s)", order_id, reservation.get("status"))
        return order_id

    return send_confirmation


def control_app(
    settings: correlation.Settings, faults: Faults, ready: threading.Event, access: FaultAccess | None = None
) -> flask.Flask:
    """The worker's control endpoint: health, metrics and the fault switch (``access``: who may)."""
    app = flask.Flask(SERVICE)
    correlation.Correlation(app, settings)  # /metrics, and outgoing requests (the task's) carry the hop
    app.register_blueprint(admin_blueprint(faults, access))

    @app.get("/healthz")
    def healthz() -> Any:
        if not ready.is_set():
            return {"status": "starting", "service": SERVICE}, 503
        return {"status": "ok", "service": SERVICE}

    return app


def serve_control(app: flask.Flask, host: str, port: int) -> BaseWSGIServer:
    """Serve ``app`` from a daemon thread (werkzeug, threaded: a scrape never waits for a task)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # our access lines say it better
    server = make_server(host, port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("BIND_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", str(DEFAULT_PORT))))
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    env = os.environ
    url = broker_url(env)
    if url is None:
        print(f"notifications: CELERY_BROKER_URL is not set (e.g. {DEFAULT_BROKER_URL})", file=sys.stderr)
        return 2
    settings = correlation.Settings.from_env(env, service=SERVICE)
    correlation.setup_logging(settings)
    faults = Faults(FaultSettings.from_env(env))
    app = make_celery(url, visibility_timeout_seconds(env))
    register_tasks(app, faults, env)
    correlation_celery.install(app, settings)  # the worker logs with these settings, not Celery's own

    ready = threading.Event()
    celery_signals.worker_ready.connect(lambda **_: ready.set(), weak=False)
    access = FaultAccess.from_env(env)
    server = serve_control(control_app(settings, faults, ready, access), args.host, args.port)
    log.info("notifications worker starting (broker %s, control :%d)", url.split("@")[-1], args.port)
    try:
        worker = ["worker", "--pool=threads", f"--concurrency={args.concurrency}", f"--queues={QUEUE}"]
        # No gossip, mingle or heartbeats: one worker, and they would only add broker chatter.
        worker += ["--without-gossip", "--without-mingle", "--without-heartbeat", f"--hostname={SERVICE}@%h"]
        return app.start(["--quiet", *worker]) or 0
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
