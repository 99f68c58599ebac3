"""Fault injection for the demo services: an error rate and added latency, changeable at runtime.

``GET /admin/faults`` shows the current setting; ``POST /admin/faults`` with JSON
``{"error_rate": 0.0-1.0, "latency_ms": 0-60000}`` changes it (either key may be left out).
``FAULT_ERROR_RATE`` and ``FAULT_LATENCY_MS`` set it at start.

Who may use it: with ``FAULT_TOKEN`` (or ``FAULT_TOKEN_FILE``, read at each call, so a token
written after the service started counts) only a request with ``Authorization: Bearer <token>``;
without one only a peer on this machine (loopback), as in a local run. The gateway is the demo's
public edge, and a switch that makes every request fail is not for the public (docs/security.md).

Under gunicorn with several workers the setting is one for the service, not one per worker: the
arbiter makes a file for it at start (:func:`share_between_workers`, from the demo's
``on_starting``) and names it in ``DEMO_FAULTS_FILE``, which the workers inherit; a POST to any
worker changes it for all.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import flask

from correlation.settings import ConfigError

MAX_LATENCY_MS = 60_000


class InjectedFault(RuntimeError):
    """Raised inside a request chosen to fail; Flask logs it with its traceback and answers 500."""


@dataclass
class FaultSettings:
    error_rate: float = 0.0
    latency_ms: int = 0

    @classmethod
    def parse(cls, values: Mapping[str, Any], base: FaultSettings | None = None) -> FaultSettings:
        """Validated settings from ``values``; keys left out keep ``base``'s value. ValueError says why."""
        base = base or cls()
        unknown = set(values) - {"error_rate", "latency_ms"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}: expected error_rate and/or latency_ms")
        rate = values.get("error_rate", base.error_rate)
        latency = values.get("latency_ms", base.latency_ms)
        try:
            rate = float(rate)
            latency_f = float(latency)
        except (TypeError, ValueError):
            raise ValueError("error_rate must be a number in [0, 1] and latency_ms an integer") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error_rate={rate} is outside [0, 1]")
        if not latency_f.is_integer() or not 0 <= latency_f <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms={latency} must be an integer in [0, {MAX_LATENCY_MS}]")
        return cls(rate, int(latency_f))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultSettings:
        values = {}
        if env.get("FAULT_ERROR_RATE", "").strip():
            values["error_rate"] = env["FAULT_ERROR_RATE"]
        if env.get("FAULT_LATENCY_MS", "").strip():
            values["latency_ms"] = env["FAULT_LATENCY_MS"]
        try:
            return cls.parse(values)
        except ValueError as exc:
            raise ConfigError(f"FAULT_ERROR_RATE/FAULT_LATENCY_MS: {exc}") from None


#: The file holding the setting shared by a service's gunicorn workers.
SHARED_FILE_ENV = "DEMO_FAULTS_FILE"


def share_between_workers(env: Mapping[str, str] = os.environ) -> Path:
    """Make the shared setting's file (from ``FAULT_*``) and name it in ``DEMO_FAULTS_FILE`` for
    the workers to be forked (the gunicorn arbiter calls this)."""
    handle, name = tempfile.mkstemp(prefix="demo-faults-", suffix=".json")
    os.close(handle)
    path = Path(name)
    _write(path, FaultSettings.from_env(env))
    os.environ[SHARED_FILE_ENV] = str(path)
    return path


def _write(path: Path, settings: FaultSettings) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(settings)))
    os.replace(temporary, path)


class Faults:
    """The current fault setting of one service, shared by its request threads (and by its
    workers when ``DEMO_FAULTS_FILE`` names the file: read again whenever it changed)."""

    def __init__(self, initial: FaultSettings, shared_file: str | None = None) -> None:
        self._settings = initial
        self._lock = threading.Lock()
        self._path = Path(shared_file) if shared_file else None
        self._seen: tuple[int, int] | None = None

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._current()

    def _current(self) -> FaultSettings:
        if self._path is not None:
            stat = self._path.stat()
            if (stat.st_mtime_ns, stat.st_ino) != self._seen:
                self._settings = FaultSettings.parse(json.loads(self._path.read_text()))
                self._seen = (stat.st_mtime_ns, stat.st_ino)
        return self._settings

    def update(self, values: Mapping[str, Any]) -> FaultSettings:
        with self._lock:
            self._settings = FaultSettings.parse(values, self._current())
            if self._path is not None:
                _write(self._path, self._settings)
            return self._settings

    def apply(self) -> None:
        """Delay and maybe fail the current request, as configured."""
        current = self.settings
        if current.latency_ms:
            time.sleep(current.latency_ms / 1000)
        if current.error_rate and random.random() < current.error_rate:
            raise InjectedFault(f"injected fault (error_rate={current.error_rate})")


@dataclass(frozen=True)
class FaultAccess:
    """Who may use ``/admin/faults``: bearers of the token, or, without one, loopback peers."""

    token: str = field(default="", repr=False)
    token_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultAccess:
        token, path = env.get("FAULT_TOKEN", "").strip(), env.get("FAULT_TOKEN_FILE", "").strip()
        if token and path:
            raise ConfigError("set either FAULT_TOKEN or FAULT_TOKEN_FILE, not both")
        return cls(token, path)

    def refusal(self, authorization: str | None, peer: str | None) -> tuple[int, str] | None:
        """None when the request may pass, else (status, reason)."""
        if not self.token and not self.token_file:
            if _loopback(peer):
                return None
            return 403, "the fault switch answers only this machine unless FAULT_TOKEN(_FILE) is set"
        token = self.token
        if self.token_file:
            try:
                token = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError:
                token = ""
            if not token:
                return 503, "the fault switch's token file is not written yet"
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return None
        return 401, "the fault switch needs Authorization: Bearer <FAULT_TOKEN>"


def _loopback(peer: str | None) -> bool:
    try:
        address = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def admin_blueprint(faults: Faults, access: FaultAccess | None = None) -> flask.Blueprint:
    admin = flask.Blueprint("admin", __name__)
    access = access or FaultAccess()

    @admin.before_request
    def allowed() -> Any:
        refused = access.refusal(flask.request.headers.get("Authorization"), flask.request.remote_addr)
        if refused is not None:
            status, reason = refused
            return {"error": reason}, status, ({"WWW-Authenticate": "Bearer"} if status == 401 else {})
        return None

    @admin.get("/admin/faults")
    def show() -> Any:
        return asdict(faults.settings)

    @admin.post("/admin/faults")
    def change() -> Any:
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            return {"error": 'expected a JSON object like {"error_rate": 0.5, "latency_ms": 100}'}, 400
        try:
            updated = faults.update(body)
        except ValueError as exc:
            return {"error": str(exc)}, 400
        flask.current_app.logger.warning("faults changed: %s", asdict(updated))
        return asdict(updated)

    return admin
