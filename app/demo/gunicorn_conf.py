"""gunicorn settings shared by every demo service (``--config python:demo.gunicorn_conf``).

One worker with threads, on purpose: prometheus_client's multiprocess mode drops exemplars, and
the correlation-ID exemplars are what link a latency spike to a request's trail. Scale by running
more replicas of the service, not more workers.
"""

import logging
import os

from correlation.gunicorn import gunicorn_logconfig, worker_abort  # noqa: F401 - worker_abort is a hook

bind = f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = 1
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
