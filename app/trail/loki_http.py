"""The GET requests a trail lookup sends to Loki, over the standard library's ``http.client``.

Why not requests: ``trail <id>`` is a process per lookup, and importing requests (urllib3,
charset_normalizer, idna, certifi) took longer than the query itself at small volumes (bench
``p5scale``). A lookup needs one kind of call: a GET with headers, a timeout and TLS, on a
connection kept for the next page. When a proxy is set in the environment (``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY``, any case), requests is used after all, for its proxy handling
(``NO_PROXY``, proxy credentials), as every lookup did before.

TLS: ``LOKI_TLS_VERIFY=true`` checks Loki's certificate against the system's CA store, a path
against that CA bundle, ``false`` not at all. Answers may come gzip-compressed (asked for).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

from correlation.settings import LokiSettings

if TYPE_CHECKING:
    import ssl

#: Environment variables that route HTTP through a proxy (urllib's and requests' names).
PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})
USER_AGENT = "correlation-trail"


class TransportError(Exception):
    """Loki could not be reached, or the connection broke before a whole answer came."""


@dataclass(frozen=True)
class Answer:
    """Loki's answer to one GET: its status, reason phrase and body as text."""

    status: int
    reason: str
    text: str


def proxy_in_environment(env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether any proxy variable is set (non-empty) in ``env`` (default: the process's)."""
    env = os.environ if env is None else env
    return any(value.strip() and name.lower() in PROXY_VARIABLES for name, value in env.items())


class LokiGetter:
    """GETs to one Loki (scheme, host and port of ``settings.url``) on a kept connection, with
    the settings' tenant, bearer or basic credentials and TLS verification. Each thread has its
    own connection (``http.client`` connections are not thread-safe, and the notifier reads a
    trail and counts failures at once through one client)."""

    def __init__(self, settings: LokiSettings, headers: dict[str, str]) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"LOKI_URL must be an http:// or https:// URL, not {parts.scheme or 'no scheme'}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip", **headers}
        credentials = settings.basic_auth
        if credentials is None and parts.username is not None:  # user:password@ in LOKI_URL
            credentials = (unquote(parts.username), unquote(parts.password or ""))
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.tls = _tls_context(settings.tls_verify) if self.https else None
        self._local = threading.local()

    @property
    def connection(self) -> http.client.HTTPConnection | None:
        """This thread's kept connection, if any."""
        return getattr(self._local, "connection", None)

    @connection.setter
    def connection(self, value: http.client.HTTPConnection | None) -> None:
        self._local.connection = value

    def get(self, path: str, params: dict[str, str], timeout: float) -> Answer:
        """One GET of ``path`` (the URL's path, from its first ``/``) with ``params``; a kept
        connection that the server closed meanwhile is opened again once."""
        target = f"{path}?{urlencode(params)}"
        for attempt in (1, 2):
            reused = self.connection is not None
            connection = self.connection or self._connect(timeout)
            self.connection = connection
            try:
                if connection.sock is not None:
                    connection.sock.settimeout(timeout)
                connection.request("GET", target, headers=self.headers)
                response = connection.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # a keep-alive the server had closed: one fresh try
                raise TransportError(f"{type(exc).__name__}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise TransportError(_describe(exc)) from None
            if response.will_close:
                self.close()
            return Answer(response.status, response.reason, _decode(body, response.getheader("Content-Encoding")))
        raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    import ssl  # only for https: a plain-http lookup does not load OpenSSL's bindings

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def _decode(body: bytes, encoding: str | None) -> str:
    if encoding and encoding.strip().lower() == "gzip":
        try:
            body = zlib.decompress(body, wbits=31)
        except zlib.error as exc:
            raise TransportError(f"a gzip answer that does not decompress: {exc}") from None
    return body.decode("utf-8", errors="replace")


def _describe(exc: Any) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"timed out ({exc})"
    return f"{type(exc).__name__}: {exc}"
