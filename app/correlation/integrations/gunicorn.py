"""Gunicorn: its own log lines as JSON lines of the service, metrics summed over every worker, and
no request lost without a word when it kills a worker for a timeout.

In a gunicorn config file (``gunicorn --config python:myapp.gunicorn_conf``)::

    # The hooks: on_starting, when_ready, child_exit, on_exit, worker_abort; and gunicorn_logconfig.
    from correlation.integrations.gunicorn import *  # noqa: F403

    logconfig_dict = gunicorn_logconfig()

(A config with its own hook of one of these names calls ours from it.)

- ``logconfig_dict`` (built by :func:`gunicorn_logconfig` from the environment, as
  ``setup_logging`` would) sends gunicorn's error log (boot, worker exits, ``WORKER TIMEOUT``)
  through the same JSON stdout and Loki handlers as the application, and turns gunicorn's own
  access log off: the library writes a richer one per hop.
- :func:`worker_abort` runs in a worker gunicorn is killing for a timeout (SIGABRT). It writes,
  for each request still in flight there, the hop's access line as a 500 ending in
  ``worker timeout``, so the trail ends with the reason and ``trail --last-error`` finds it, then
  sends what is buffered to Loki (or to the disk spool) within :data:`ABORT_FLUSH_SECONDS`: the
  arbiter sends SIGKILL about a second later.
- :func:`on_starting`, :func:`child_exit` and :func:`on_exit` share the metrics of every worker
  (:mod:`correlation.metrics.store`): the arbiter makes a clean shared directory before it forks
  the workers (``PROMETHEUS_MULTIPROC_DIR`` when set, else a private temporary one), each worker
  writes its series to its own file there, any worker's ``/metrics`` answers their sum, the counts
  of a worker that exits are kept in an archive, and the library's files are removed at exit.
- :func:`when_ready` serves ``/metrics`` from the arbiter when ``METRICS_PORT`` is set
  (:mod:`correlation.metrics.listener`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from correlation import hops, schema
from correlation.metrics import listener, server
from correlation.settings import Settings

__all__ = ["child_exit", "gunicorn_logconfig", "on_exit", "on_starting", "when_ready", "worker_abort"]

#: What the aborted worker may spend sending its last lines (gunicorn's arbiter checks its
#: workers about once a second and then sends SIGKILL).
ABORT_FLUSH_SECONDS = 0.6

_log = logging.getLogger(schema.GUNICORN_LOGGER)


def gunicorn_logconfig(settings: Settings | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for gunicorn's ``logconfig_dict``: root to JSON stdout and
    Loki (when ``LOKI_URL`` is set), gunicorn's loggers through the root."""
    settings = settings or Settings.from_env()
    handlers: dict[str, dict[str, Any]] = {}
    if settings.log_stdout:
        handlers["stdout"] = {"class": "correlation.StdoutHandler", "stream": "ext://sys.stdout"}
    if settings.loki.url:  # the rest of LOKI_* is read by the handler itself
        handlers["loki"] = {
            "class": "correlation.LokiHandler",
            "labels": {"service_name": settings.service, "env": settings.env},
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": settings.log_level, "handlers": list(handlers)},
        "handlers": handlers,
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            # The library writes one access line per hop with the correlation fields; gunicorn's
            # would be a second, poorer one.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def worker_abort(worker: Any) -> None:
    """Gunicorn hook: log the requests this worker is abandoning, then flush the shipper."""
    timeout = getattr(getattr(worker, "cfg", None), "timeout", None)
    note = f" worker timeout (gunicorn --timeout {timeout}s killed the worker)" if timeout else " worker timeout"
    hops.end_open_hops(500, note)
    flush_all(ABORT_FLUSH_SECONDS)


def flush_all(seconds: float) -> None:
    """Send what every handler of the root logger holds, within ``seconds`` in all."""
    deadline = time.monotonic() + seconds
    for handler in logging.getLogger().handlers:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            close_within = getattr(handler, "close_within", None)
            if close_within is not None:
                close_within(remaining)  # the Loki handler: deliver, or spool, within the time left
            else:
                handler.flush()
        except Exception:  # noqa: BLE001 - the worker is dying: one handler must not stop the others
            pass


def on_starting(arbiter: Any) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Gunicorn hook (arbiter, before the workers are forked): workers share their metrics."""
    directory = server.start()
    _log.info("metrics of every worker shared through %s", directory)


def when_ready(arbiter: Any) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Gunicorn hook (arbiter, listening): serve ``/metrics`` on ``METRICS_PORT`` when it is set."""
    address = Settings.from_env().metrics_port
    if address:
        listener.serve(address)


def child_exit(arbiter: Any, worker: Any) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Gunicorn hook (arbiter, a worker exited, however): keep its counts, delete its file."""
    server.worker_exited(worker.pid)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():  # the application's own metrics
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(arbiter: Any) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Gunicorn hook (arbiter, stopping): remove the library's metrics files."""
    server.stop()
