"""The demo worker's Redis transport: kombu's, with one fix for a worker that loses Redis while it
holds messages (see :class:`RedisTransport`). Named in the Celery app by import path
(:data:`TRANSPORT`), kombu's documented way to choose a transport class.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class _RedisChannel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            # The connection was already collected: there is no Redis to talk to. Saying so with
            # the transport's own connection error lets the close that asked for it carry on.
            raise RedisConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous)


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with one fix, for the worker that loses Redis while it holds
    messages (a retry waiting for its countdown).

    Celery 5.7.0's consumer, on losing the broker, first ``collect()``s the connection (closing its
    channel fails half way, at the read of the pending BRPOP, and the transport is detached), then
    ``close()``s it (a close added by celery/celery#10242): the channel, still open, tries to hand
    the held messages back to Redis through a transport that has no client, raises AttributeError
    instead of a connection error, and the worker exits ("Unrecoverable error"). Here it raises
    the connection error, which Celery ignores while closing; the worker reconnects, and the held
    messages, still in Redis' unacknowledged set, are delivered again after the visibility timeout.
    """

    Channel = _RedisChannel


#: By its import path, kombu's documented way to name a transport class (its logs show it).
TRANSPORT = "demo.broker:RedisTransport"
