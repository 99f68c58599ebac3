"""A tiny Alertmanager webhook receiver for the demo.

``POST /alerts`` takes Alertmanager's webhook payload (version 4) and prints one line per alert:
status, alertname, service and every ``*_url`` annotation, so the links an on-call person would
click are visible in ``docker compose logs alert-receiver``. The last payloads are kept in memory
and served back at ``GET /alerts`` (newest last) for tests and the curious. ``GET /healthz`` is
the container's health check.

    python -m demo.alert_receiver [--host 127.0.0.1] [--port 9095] [--keep 50]

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

DEFAULT_PORT = 9095
DEFAULT_KEEP = 50
#: Alertmanager's payloads are small; refuse anything absurd rather than buffer it.
MAX_BODY_BYTES = 1024 * 1024


def format_alert(alert: dict[str, Any]) -> str:
    """One line for one alert: ``[firing] HighErrorRatio service=payments logs_url=...``."""
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    parts = [
        f"[{alert.get('status', '?')}]",
        str(labels.get("alertname", "?")),
        f"service={labels.get('service', '-')}",
    ]
    parts += [f"{key}={value}" for key, value in sorted(annotations.items()) if key.endswith("_url")]
    return " ".join(parts)


class AlertStore:
    """The last ``keep`` payloads, safe to share between request threads."""

    def __init__(self, keep: int = DEFAULT_KEEP) -> None:
        self._payloads: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self._payloads.append(payload)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._payloads)


def _handler(store: AlertStore, out: TextIO) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "demo-alert-receiver"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self._reply(200, {"status": "ok"})
            elif self.path == "/alerts":
                self._reply(200, store.snapshot())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/alerts":
                self._reply(404, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY_BYTES:
                self._reply(400, {"error": "need a JSON body of at most 1 MiB"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
                alerts = payload["alerts"]
                if not isinstance(alerts, list):
                    raise TypeError("alerts is not a list")
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, {"error": f"not an Alertmanager webhook payload: {exc}"})
                return
            store.add(payload)
            for alert in alerts:
                print(format_alert(alert), file=out, flush=True)
            self._reply(200, {"received": len(alerts)})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per alert is the output; access lines would drown it

    return Handler


def make_server(host: str = "127.0.0.1", port: int = DEFAULT_PORT, keep: int = DEFAULT_KEEP,
                out: TextIO | None = None) -> tuple[ThreadingHTTPServer, AlertStore]:
    """A ready-to-serve receiver (port 0 picks a free one) and its store."""
    store = AlertStore(keep)
    server = ThreadingHTTPServer((host, port), _handler(store, out or sys.stdout))
    server.daemon_threads = True
    return server, store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("ALERT_RECEIVER_HOST", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 in a container; default %(default)s)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ALERT_RECEIVER_PORT", DEFAULT_PORT)))
    parser.add_argument("--keep", type=int, default=int(os.environ.get("ALERT_RECEIVER_KEEP", DEFAULT_KEEP)),
                        help="payloads kept for GET /alerts (default %(default)s)")
    args = parser.parse_args(argv)
    server, _ = make_server(args.host, args.port, args.keep)
    host, port = str(server.server_address[0]), server.server_address[1]
    print(f"alert-receiver listening on http://{host}:{port}/alerts", flush=True)
    # As PID 1 in a container, SIGTERM has no default action: without this `docker stop` waits
    # for its timeout and kills.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
