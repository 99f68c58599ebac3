"""``METRICS_PORT``: ``/metrics`` on a listener of its own, for Prometheus only.

Exemplars carry correlation IDs of other people's requests; a ``/metrics`` on the service's public
port publishes them to anyone who can reach it. With ``METRICS_PORT`` set, the application does not
route ``/metrics``; this listener serves it instead, on a port that only Prometheus reaches (do not
publish it). Under gunicorn the arbiter serves it (``when_ready``, :mod:`correlation.gunicorn`),
reading every worker's file; in a single process, a thread of that process.
"""

from __future__ import annotations

import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from correlation.metrics import exposition

_log = logging.getLogger("correlation.metrics")


class _MetricsRequest(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body, content_type = exposition.render(self.headers.get("Accept"))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        pass  # one line per scrape would drown the service's own


def parse_address(value: str) -> tuple[str, int]:
    """``PORT`` (every interface) or ``HOST:PORT``."""
    host, _, port = value.rpartition(":")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(value)
    return host or "0.0.0.0", number  # noqa: S104 - a port for Prometheus; not published


def serve(address: str) -> ThreadingHTTPServer | None:
    """Serve ``/metrics`` on ``address`` from a daemon thread of this process; None, said on
    stderr, when the address cannot be bound (the application goes on serving its requests).

    The usual cause is a server of several processes that each build the application (``uvicorn
    --workers N``): the first binds the port, the next cannot. Raising here would fail every
    request of those workers (an ASGI app builds its middleware at its first request)."""
    try:
        server = ThreadingHTTPServer(parse_address(address), _MetricsRequest)
    except OSError as exc:
        sys.stderr.write(
            f"correlation: METRICS_PORT={address}: cannot listen ({exc.strerror or exc}); this process "
            "does not serve /metrics. With several worker processes only a server process can serve it: "
            "run under gunicorn with the hooks of correlation.gunicorn (docs/library.md, 'Several workers').\n"
        )
        sys.stderr.flush()
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="correlation-metrics-listener", daemon=True).start()
    _log.info("serving /metrics on %s", address)
    return server
