"""Who may post alerts to the notifier: a bearer token, or a user name and password (HTTP basic),
as Alertmanager's webhook ``http_config`` sends them (``authorization`` or ``basic_auth``).

Without credentials anyone who reaches the port can forge an alert (a fake "resolved", links to
any host), so the notifier refuses to listen beyond loopback without them unless told to
(``NOTIFY_AUTH=none``). Secrets come from the environment or, better, from a file
(``*_FILE``): Alertmanager reads the same file through ``credentials_file``/``password_file``,
so the secret never appears in a config file or a process listing. Comparisons take constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from correlation.settings import ConfigError

_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class NotifyAuth:
    """The credentials a request must carry; none set means: no check (loopback only)."""

    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    #: Explicitly open (``NOTIFY_AUTH=none``): may listen beyond loopback without credentials.
    open_ok: bool = False

    @property
    def required(self) -> bool:
        return bool(self.token or self.username)

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        return 'Bearer realm="trail-notify"' if self.token else 'Basic realm="trail-notify"'

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the configured credentials."""
        if not self.required:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if self.token and scheme.lower() == "bearer":
            return hmac.compare_digest(value.encode(), self.token.encode())
        if self.username and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(user.encode(), self.username.encode())
            return hmac.compare_digest(password.encode(), self.password.encode()) and user_ok
        return False

    def check_listen(self, host: str) -> None:
        """ConfigError when listening on ``host`` would let anyone post alerts."""
        if self.required or self.open_ok or host in _LOOPBACK_HOSTS or host.startswith("127."):
            return
        raise ConfigError(
            f"listening on {host} without credentials lets anyone who reaches it post alerts: set "
            "NOTIFY_AUTH_TOKEN_FILE (or NOTIFY_AUTH_TOKEN, or NOTIFY_AUTH_USERNAME with "
            "NOTIFY_AUTH_PASSWORD_FILE), or NOTIFY_AUTH=none to accept that"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifyAuth:
        """``NOTIFY_AUTH_TOKEN[_FILE]``, ``NOTIFY_AUTH_USERNAME`` + ``NOTIFY_AUTH_PASSWORD[_FILE]``,
        ``NOTIFY_AUTH`` (``none`` to run open beyond loopback)."""
        mode = env.get("NOTIFY_AUTH", "").strip().lower()
        if mode not in ("", "none"):
            raise ConfigError(f"NOTIFY_AUTH={mode!r} is not valid: expected none or nothing")
        token = _secret(env, "NOTIFY_AUTH_TOKEN")
        username = env.get("NOTIFY_AUTH_USERNAME", "").strip()
        password = _secret(env, "NOTIFY_AUTH_PASSWORD")
        if bool(username) != bool(password):
            raise ConfigError("NOTIFY_AUTH_USERNAME and NOTIFY_AUTH_PASSWORD[_FILE] must be set together (basic auth)")
        if ":" in username:
            raise ConfigError("NOTIFY_AUTH_USERNAME must not contain ':' (HTTP basic auth)")
        if mode == "none" and (token or username):
            raise ConfigError("NOTIFY_AUTH=none contradicts the credentials set: drop one")
        return cls(token=token, username=username, password=password, open_ok=mode == "none")


def _secret(env: Mapping[str, str], name: str) -> str:
    """``name`` from the environment, or the content of the file ``name_FILE`` names (not both)."""
    value = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    if value and path:
        raise ConfigError(f"set either {name} or {name}_FILE, not both")
    if not path:
        return value
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}_FILE={path!r} cannot be read: {exc}") from None
    if not value or any(c.isspace() or ord(c) < 32 for c in value):
        raise ConfigError(f"{name}_FILE={path!r} must hold one secret on one line, without spaces")
    return value
