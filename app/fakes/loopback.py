"""Loopback plumbing for every fake server in the tests: one way to run an HTTP server in a
thread, one way to get a free port, and a client for requests no ordinary client will send.

Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

#: How often a serving thread looks for shutdown: ``shutdown()`` waits up to this long, and the
#: standard library's 0.5 s default would add half a second to every test's teardown.
POLL_SECONDS = 0.02


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released: good enough on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port_url() -> str:
    """A loopback URL where nothing listens: for "connection refused" tests."""
    return f"http://127.0.0.1:{free_port()}"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps test output clean and answers in one call."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass

    def reply(
        self,
        status: int,
        body: bytes | str | dict[str, Any] | list[Any] = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a whole response: a dict or list goes as JSON, a str as UTF-8."""
        if isinstance(body, dict | list):
            body, content_type = json.dumps(body), "application/json"
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class LoopbackServer:
    """``with LoopbackServer(Handler) as server:`` serves on 127.0.0.1 in a daemon thread.

    ``handler`` is a request handler class, or an already built server (e.g. the demo's
    ``trail.notify.build``) to run the same way. ``server.url`` is the base URL; with
    ``tls`` it is ``https://localhost:<port>`` (the name a test certificate is issued for).
    Leaving the block stops the thread and closes the socket.
    """

    def __init__(
        self, handler: type[BaseHTTPRequestHandler] | ThreadingHTTPServer, tls: ssl.SSLContext | None = None
    ) -> None:
        if isinstance(handler, ThreadingHTTPServer):
            self.server = handler
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True  # a stalled handler must not hold the process at exit
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"loopback-{self.port}",
            daemon=True,
        )

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, as a Prometheus scrape target."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def raw_request(
    url: str, method: str, header_lines: list[bytes], body: bytes = b"", timeout: float = 10.0
) -> tuple[int, dict[str, str]]:
    """(status, headers) of the answer to a request built byte by byte: header values that
    ordinary clients refuse to send (hostile input tests). Header names come back lowercased."""
    parts = urlsplit(url)
    head = [f"{method} {parts.path or '/'} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode(), b"Connection: close"]
    head += header_lines
    head.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


class HeaderEcho(QuietHandler):
    """Answers GET with the request headers it received, as JSON (names lowercased). For
    propagation tests: ``/fail/<name>`` answers 503 as service ``<name>`` (``X-Service-Name``),
    ``/named/<name>`` 200 as service ``<name>``; any other path 200 with no name."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        parts = self.path.strip("/").split("/")
        self.send_response(503 if parts[0] == "fail" else 200)
        if len(parts) == 2:
            self.send_header("X-Service-Name", parts[1])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
