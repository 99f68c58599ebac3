"""A webhook receiver on loopback: a chat's incoming webhook for the notifier, or the webhook
receiver Alertmanager notifies."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from fakes.loopback import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class Delivery:
    """One POST the webhook accepted."""

    #: ``time.monotonic()`` when it arrived.
    at: float
    body: Any
    authorization: str | None
    content_type: str | None


class FakeWebhook:
    """Keeps every JSON body POSTed to it, with when it arrived and its headers.

    It answers each POST from :attr:`script` while that holds statuses (a refused POST is not
    kept), then 200. Run it with ``with webhook.server:``; its address is ``webhook.server.url``.
    """

    def __init__(self) -> None:
        #: Statuses for the next POSTs, in order; 200 when empty.
        self.script: list[int] = []
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.read_body())
                with webhook._lock:
                    status = webhook.script.pop(0) if webhook.script else 200
                    if status == 200:
                        delivery = Delivery(
                            time.monotonic(), body, self.headers.get("Authorization"), self.headers.get("Content-Type")
                        )
                        webhook._deliveries.append(delivery)
                self.reply(status, "ok" if status == 200 else "no")

        self.server = LoopbackServer(Handler)

    @property
    def deliveries(self) -> list[Delivery]:
        """What was accepted so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._deliveries)

    @property
    def bodies(self) -> list[Any]:
        """The bodies accepted so far, in arrival order (a copy)."""
        return [delivery.body for delivery in self.deliveries]
