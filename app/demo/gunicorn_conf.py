"""gunicorn settings shared by every demo service (``--config python:demo.gunicorn_conf``).

Two workers (``GUNICORN_WORKERS``): gthread workers with threads each (``GUNICORN_THREADS``) for
the Flask services, uvicorn workers for the ASGI one (inventory, ``demo.calls.ASGI_SERVICES``).
The library's hooks (on_starting, child_exit, on_exit) share every worker's metrics, either kind,
so any worker's ``/metrics`` answers the service's sums with the newest correlation-ID exemplars.
"""

import logging
import os

# The library's hooks (on_starting and on_exit are called from the demo's own, below).
from correlation.integrations import gunicorn as correlation_gunicorn
from correlation.integrations.gunicorn import child_exit, gunicorn_logconfig, when_ready, worker_abort  # noqa: F401 - hooks
from demo import faults
from demo.calls import ASGI_SERVICES

bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
if os.environ.get("SERVICE_NAME", "").strip() in ASGI_SERVICES:
    worker_class = "uvicorn_worker.UvicornWorker"  # one event loop a worker; sync endpoints in its threadpool
else:
    worker_class = "gthread"
    threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = None  # the library writes one JSON access line per request itself
# gunicorn's own lines (boot, worker exits, WORKER TIMEOUT) as JSON lines of the service, to Loki.
logconfig_dict = gunicorn_logconfig()
# No control socket: each service would claim the same default path, and nothing here uses it.
control_socket_disable = True


def worker_exit(server, worker):  # noqa: ARG001 - gunicorn's hook signature
    # Flush buffered log lines to Loki before the worker goes (bounded by LOKI_FLUSH_TIMEOUT_SECONDS).
    logging.shutdown()


def on_starting(server):
    correlation_gunicorn.on_starting(server)  # the workers' shared metrics
    # One fault switch for the service, whichever worker a POST /admin/faults reaches.
    server.demo_faults_file = faults.share_between_workers()


def on_exit(server):
    correlation_gunicorn.on_exit(server)
    server.demo_faults_file.unlink(missing_ok=True)
