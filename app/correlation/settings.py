"""One typed place for configuration, parsed once from the environment.

Bad values are refused at start with a message naming the variable, the value and what is
expected: a service that cannot ship its logs should say so before it takes traffic.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TypeVar

from correlation import schema
from correlation.trust import TrustPolicy

T = TypeVar("T")

DEFAULT_HEADER = schema.CORRELATION_HEADER
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _parse(env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError):
        raise ConfigError(f"{name}={raw!r} is not valid: expected {expected}") from None


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        if not value > 0:  # type: ignore[operator]
            raise ValueError(raw)
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _address(raw: str) -> str:
    host, _, port = raw.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or (host and not re.fullmatch(r"[A-Za-z0-9.\-]+", host)):
        raise ValueError(raw)
    return raw


def _as_text(value: object) -> str:
    """A plain option value as its environment variable would hold it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _name(env: Mapping[str, str], var: str, default: str, pattern: re.Pattern[str], what: str) -> str:
    value = _get(env, var, default)
    if not pattern.fullmatch(value):
        raise ConfigError(f"{var}={value!r} is not valid: expected {what}")
    return value


@dataclass(frozen=True)
class LokiSettings:
    """Where and how to push logs to Loki. ``url`` empty means: do not ship."""

    url: str = ""
    tenant: str = ""
    username: str = ""
    password: str = ""
    bearer_token: str = ""
    #: True, False, or a path to a CA bundle (as ``requests`` takes it).
    tls_verify: bool | str = True
    #: A batch is sent when it holds this many bytes of log lines, or is this old.
    batch_max_bytes: int = 1024 * 1024
    batch_max_wait_seconds: float = 1.0
    #: Memory bound for lines waiting to be sent; past it lines are dropped and counted.
    buffer_max_bytes: int = 64 * 1024 * 1024
    timeout_seconds: float = 10.0
    #: How long closing the handler (process exit) may wait to flush what is buffered.
    flush_timeout_seconds: float = 10.0
    #: Give up a batch after retrying this long (Loki rejects entries over 1 h behind).
    max_retry_seconds: float = 300.0
    #: On-disk spool for batches Loki cannot take (empty: none; lines then wait in memory only).
    spool_dir: str = ""
    spool_max_bytes: int = 1024 * 1024 * 1024
    #: Jittered exponential backoff between retries: first pause, and the cap (Promtail: 0.5 s).
    backoff_min_seconds: float = 0.5
    backoff_max_seconds: float = 30.0

    @property
    def push_url(self) -> str:
        return self.url.rstrip("/") + "/loki/api/v1/push"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LokiSettings:
        env = os.environ if env is None else env
        url = _get(env, "LOKI_URL", "")
        if url and not re.match(r"https?://[^/\s]+", url):
            raise ConfigError(f"LOKI_URL={url!r} is not valid: expected http(s)://host[:port]")
        username = _get(env, "LOKI_USERNAME", "")
        password = _get(env, "LOKI_PASSWORD", "")
        token = _get(env, "LOKI_BEARER_TOKEN", "")
        if bool(username) != bool(password):
            raise ConfigError("LOKI_USERNAME and LOKI_PASSWORD must be set together (basic auth)")
        if token and username:
            raise ConfigError("set either LOKI_BEARER_TOKEN or LOKI_USERNAME/LOKI_PASSWORD, not both")
        verify_raw = _get(env, "LOKI_TLS_VERIFY", "true")
        try:
            tls_verify: bool | str = _bool(verify_raw)
        except ValueError:
            if not os.path.isfile(verify_raw):
                raise ConfigError(
                    f"LOKI_TLS_VERIFY={verify_raw!r} is not valid: expected true, false "
                    "or the path of an existing CA bundle file"
                ) from None
            tls_verify = verify_raw
        return cls(
            url=url,
            tenant=_get(env, "LOKI_TENANT", ""),
            username=username,
            password=password,
            bearer_token=token,
            tls_verify=tls_verify,
            batch_max_bytes=_parse(
                env, "LOKI_BATCH_MAX_BYTES", cls.batch_max_bytes, _positive(int), "a positive integer"
            ),
            batch_max_wait_seconds=_parse(
                env, "LOKI_BATCH_MAX_WAIT_SECONDS", cls.batch_max_wait_seconds, _positive(float), "seconds > 0"
            ),
            buffer_max_bytes=_parse(
                env, "LOKI_BUFFER_MAX_BYTES", cls.buffer_max_bytes, _positive(int), "a positive integer"
            ),
            timeout_seconds=_parse(env, "LOKI_TIMEOUT_SECONDS", cls.timeout_seconds, _positive(float), "seconds > 0"),
            flush_timeout_seconds=_parse(
                env, "LOKI_FLUSH_TIMEOUT_SECONDS", cls.flush_timeout_seconds, _positive(float), "seconds > 0"
            ),
            max_retry_seconds=_parse(
                env, "LOKI_MAX_RETRY_SECONDS", cls.max_retry_seconds, _positive(float), "seconds > 0"
            ),
            spool_dir=_get(env, "LOKI_SPOOL_DIR", ""),
            spool_max_bytes=_parse(
                env, "LOKI_SPOOL_MAX_BYTES", cls.spool_max_bytes, _positive(int), "a positive integer"
            ),
            backoff_min_seconds=_parse(
                env, "LOKI_BACKOFF_MIN_SECONDS", cls.backoff_min_seconds, _positive(float), "seconds > 0"
            ),
            backoff_max_seconds=_parse(
                env, "LOKI_BACKOFF_MAX_SECONDS", cls.backoff_max_seconds, _positive(float), "seconds > 0"
            ),
        )

    def with_options(self, options: Mapping[str, object]) -> LokiSettings:
        """These settings with some fields given as plain values (``url="http://loki:3100"``,
        ``batch_max_bytes=1048576``), as ``logging.config.dictConfig`` passes them; each is checked
        like its ``LOKI_*`` variable, and an unknown name is refused."""
        if not options:
            return self
        names = {f.name for f in fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ConfigError(
                f"unknown Loki option(s) {', '.join(unknown)}: expected some of {', '.join(sorted(names))}"
            )
        current = {name: getattr(self, name) for name in names}
        env = {f"LOKI_{name.upper()}": _as_text(value) for name, value in {**current, **options}.items()}
        try:
            return LokiSettings.from_env(env)
        except ConfigError as exc:
            message = str(exc)
            for name in names:
                message = message.replace(f"LOKI_{name.upper()}=", f"{name}=")
            raise ConfigError(message) from None

    def auth_headers(self) -> dict[str, str]:
        """Tenant and bearer headers for every call to Loki (basic auth goes through requests)."""
        headers = {}
        if self.tenant:
            headers["X-Scope-OrgID"] = self.tenant
        if self.bearer_token:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        return headers

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username else None


@dataclass(frozen=True)
class Settings:
    """Everything the library reads from the environment."""

    service: str = "app"
    env: str = "local"
    header: str = DEFAULT_HEADER
    log_level: str = "INFO"
    #: JSON lines on stdout too. Off saves a write per line when Loki gets them anyway.
    log_stdout: bool = True
    #: Whose inbound IDs are kept (``CORRELATION_TRUST_INBOUND``: private, all, none, or CIDR
    #: ranges). The default, private networks and this machine, keeps the IDs a system's own
    #: services send each other and starts a fresh trail for anyone else (correlation.trust).
    trust_inbound: TrustPolicy = field(default_factory=TrustPolicy.private)
    #: Error responses carry the correlation ID (RFC 9457 problem+json, or the HTML page + ID).
    error_bodies: bool = True
    loki: LokiSettings = field(default_factory=LokiSettings)
    #: ``METRICS_PORT``: serve ``/metrics`` on this port (or ``host:port``) only, not on the
    #: application's; empty: on the application's (see :mod:`correlation.metrics.listener`).
    metrics_port: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``SERVICE_NAME``, ``DEPLOY_ENV``, ``CORRELATION_*``, ``LOG_LEVEL``, ``LOG_STDOUT``, ``LOKI_*``.

        Keyword arguments win over the environment (e.g. ``service="orders"``).
        """
        env = os.environ if env is None else env
        label = "1-64 characters from [A-Za-z0-9._-]"
        values: dict[str, object] = {
            "service": _name(env, "SERVICE_NAME", cls.service, _LABEL_VALUE, label),
            "env": _name(env, "DEPLOY_ENV", cls.env, _LABEL_VALUE, label),
            "header": _name(env, "CORRELATION_HEADER", DEFAULT_HEADER, _HEADER_NAME, "an HTTP header name"),
            "log_level": _get(env, "LOG_LEVEL", cls.log_level).upper(),
            "log_stdout": _parse(env, "LOG_STDOUT", cls.log_stdout, _bool, "true or false"),
            "trust_inbound": _parse(
                env,
                "CORRELATION_TRUST_INBOUND",
                TrustPolicy.private(),
                TrustPolicy.parse,
                "private, all, none or CIDR ranges (10.0.0.0/8,...)",
            ),
            "error_bodies": _parse(env, "CORRELATION_ERROR_BODIES", cls.error_bodies, _bool, "true or false"),
            "loki": LokiSettings.from_env(env),
            "metrics_port": _parse(env, "METRICS_PORT", "", _address, "a port (9464) or host:port"),
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if not _LABEL_VALUE.fullmatch(self.service):
            raise ConfigError(
                f"service name {self.service!r} is not valid: expected 1-64 characters from [A-Za-z0-9._-]"
            )
        if not self.log_stdout and not self.loki.url:
            raise ConfigError("LOG_STDOUT=false needs LOKI_URL: the logs would go nowhere")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                f"LOG_LEVEL={self.log_level!r} is not valid: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
