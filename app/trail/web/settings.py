"""trail-web's settings, from the environment: where Loki is, and the addresses a browser uses."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from correlation.settings import ConfigError, LokiSettings
from trail.links import DEFAULT_GRAFANA_URL, DEFAULT_TRAIL_WEB_URL
from trail.lookup import DEFAULT_MAX_LINES, max_lines_from_env
from trail.window import DEFAULT_MAX_WINDOW_SECONDS, max_window_from_env

_BASE_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")


@dataclass(frozen=True)
class TrailWebSettings:
    """Where Loki is, and the addresses a browser uses for Grafana and for this app."""

    loki: LokiSettings
    grafana_url: str = DEFAULT_GRAFANA_URL
    trail_web_url: str = DEFAULT_TRAIL_WEB_URL
    #: The longest ``?since=`` / ``?from=&to=`` window (TRAIL_MAX_WINDOW).
    max_window_seconds: float = DEFAULT_MAX_WINDOW_SECONDS
    #: The most lines read and shown for one trail (TRAIL_MAX_LINES).
    max_lines: int = DEFAULT_MAX_LINES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrailWebSettings:
        env = os.environ if env is None else env
        loki = LokiSettings.from_env(env)
        if not loki.url:
            raise ConfigError("LOKI_URL is not set: the trail pages read Loki (e.g. LOKI_URL=http://localhost:3100)")
        return cls(
            loki,
            base_url_from_env(env, "GRAFANA_URL", DEFAULT_GRAFANA_URL),
            base_url_from_env(env, "TRAIL_WEB_URL", DEFAULT_TRAIL_WEB_URL),
            max_window_from_env(env),
            max_lines_from_env(env),
        )


def base_url_from_env(env: Mapping[str, str], name: str, default: str) -> str:
    """The address in ``env[name]`` (``default`` when unset or empty), without a trailing slash;
    :class:`ConfigError` naming the variable when it is not ``http(s)://host[:port][/path]``."""
    value = env.get(name, "").strip() or default
    if not _BASE_URL.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not valid: expected http(s)://host[:port][/path]")
    return value.rstrip("/")
