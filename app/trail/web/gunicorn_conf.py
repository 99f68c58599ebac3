"""gunicorn settings of the trail web app (``--config python:trail.web.gunicorn_conf "trail.web.app:create_app()"``).

A page spends its time waiting for Loki, so threads serve it well; two processes keep one slow
Loki answer from holding every page. ``TRAIL_WEB_BIND`` sets the address (``--bind`` overrides it).
"""

import os

bind = os.environ.get("TRAIL_WEB_BIND", "127.0.0.1:8090")
workers = 2
worker_class = "gthread"
threads = 4
# Longer than any page takes: each lookup is cut off after LOKI_TIMEOUT_SECONDS (default 10).
timeout = 30
graceful_timeout = 10
keepalive = 5
# One line per request on stdout: the app writes no access log of its own.
accesslog = "-"
# No control socket: several gunicorns on one host would claim the same default path.
control_socket_disable = True
