"""Where a notification may link: only under the bases the notifier is configured with (Grafana,
the trail page, the runbooks).

A link comes from the alert (its annotations, and the ``grafana_url``/``trail_web_url`` labels the
Trail buttons are built on), so whoever can post an alert could otherwise put a phishing page
behind the "Runbook" button of a real-looking page. A link elsewhere is dropped, named in the
notification's ``dropped_links`` and counted; the rest of the notification still goes out.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Base:
    scheme: str
    host: str
    port: int
    path: str  # without the trailing slash


def _parse(url: str) -> _Base | None:
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return None
    return _Base(parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme], parts.path.rstrip("/"))


class LinkBases:
    """The configured bases; :meth:`allows` says whether a URL lies under one of them."""

    def __init__(self, *bases: str) -> None:
        parsed = [_parse(base) for base in bases if base]
        self._bases = tuple(base for base in parsed if base is not None)
        self.urls = tuple(base for base in bases if base)

    def allows(self, url: str) -> bool:
        """Same scheme, host and port as a base, and a path at or below the base's path
        (``/grafana`` allows ``/grafana/d/x``, not ``/grafana-evil``). User info is never allowed:
        ``http://localhost:3000@evil.test/`` is a link to evil.test."""
        link = _parse(url)
        if link is None:
            return False
        return any(
            (link.scheme, link.host, link.port) == (base.scheme, base.host, base.port)
            and (link.path == base.path or link.path.startswith(base.path + "/") or not base.path)
            for base in self._bases
        )
