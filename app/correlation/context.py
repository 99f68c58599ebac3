"""The correlation context: which service this process is, and which request, hop and parent
hop the current code runs for.

One ContextVar holds a :class:`Hop`; Flask's threads, gunicorn's gthread workers and asyncio
tasks each see their own. Work handed to another thread does not inherit it by itself: wrap the
callable with :func:`wrap` (or submit through :func:`submit`).

The service name is the one process-wide value: set once at start (by ``setup_logging``,
``Correlation`` or :func:`set_service`), read by the log filter, the Loki handler's labels and
outgoing calls, so they cannot disagree. Until set, it is ``SERVICE_NAME`` (when valid) or ``app``.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import NamedTuple, ParamSpec, TypeVar

from correlation import ids

P = ParamSpec("P")
R = TypeVar("R")


class Hop(NamedTuple):
    """One service's part in a request.

    ``correlation_id`` is shared by every hop of the request; ``request_id`` is this hop's own;
    ``parent_request_id`` is the calling hop's (None at the edge), so the call tree can be
    rebuilt from the logs alone. Immutable but for ``failed_calls``. Make one with :meth:`start`.
    """

    correlation_id: str
    request_id: str
    parent_request_id: str | None
    #: Peers whose calls failed during this hop (5xx, no answer, timeout), in order. The one
    #: mutable part: shared by every thread the hop is handed to, read when the hop answers, so
    #: that a 5xx can say whether it was this hop's own failure or a downstream one.
    failed_calls: list[str]
    #: W3C Trace Context, sent on in ``traceparent`` and ``tracestate`` (see :mod:`correlation.wire`):
    #: the sampled flag the trace came with (True on a trail that starts here: every hop is logged),
    #: and the tracing systems' ``tracestate`` for this trace-id (None: none to pass on).
    sampled: bool = True
    tracestate: str | None = None

    @classmethod
    def start(
        cls,
        correlation_id: str | None = None,
        parent_request_id: str | None = None,
        sampled: bool = True,
        tracestate: str | None = None,
    ) -> Hop:
        """A new hop with its own request ID, joining ``correlation_id`` or starting a new one."""
        if correlation_id:
            request_id = ids.new_request_id()
        else:  # a new trail: both IDs from one call (this runs on every fresh request)
            correlation_id, request_id = ids.new_ids()
        fields: tuple[str, str, str | None, list[str], bool, str | None] = (
            correlation_id, request_id, parent_request_id, [], sampled, tracestate
        )  # fmt: skip
        return _new_tuple(cls, fields)

    def child(self) -> Hop:
        """A new hop of the same trail and trace, called by this one (a task run in the caller's thread)."""
        return Hop.start(self.correlation_id, self.request_id, self.sampled, self.tracestate)


_new_tuple = tuple.__new__  # one Hop a request: see bench/README.md, "Why the hot path's code looks as it does"
_current: contextvars.ContextVar[Hop | None] = contextvars.ContextVar("correlation_hop", default=None)
_env_service = os.environ.get("SERVICE_NAME", "").strip()
_service: str = _env_service if ids.is_valid_id(_env_service) else "app"


def service() -> str:
    """This process's service name: the ``service`` of every line, the caller name it sends."""
    return _service


def set_service(name: str) -> None:
    """Name this process's service (validated by :class:`correlation.Settings` before it gets here)."""
    global _service
    _service = name


def current() -> Hop | None:
    """The hop bound in this context, or None outside any request."""
    return _current.get()


def correlation_id() -> str | None:
    """The correlation ID of the current request, or None."""
    hop = _current.get()
    return hop.correlation_id if hop else None


#: ``bind(hop)`` makes ``hop`` current and returns a token; ``reset(token)`` restores the hop that
#: was current before the matching ``bind``: the ContextVar's own methods.
bind: Callable[[Hop | None], contextvars.Token[Hop | None]] = _current.set
reset: Callable[[contextvars.Token[Hop | None]], None] = _current.reset


@contextmanager
def bound(hop: Hop | None = None) -> Iterator[Hop]:
    """Run a block under ``hop`` (default: a fresh hop), e.g. a background job or a CLI command."""
    hop = hop or Hop.start()
    token = _current.set(hop)
    try:
        yield hop
    finally:
        _current.reset(token)


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Capture the current hop now; the returned callable runs ``fn`` under it, in any thread.

    Only the hop is carried (not a whole ``contextvars.Context``), so the wrapped callable may run
    in several threads at once.
    """
    hop = _current.get()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _current.set(hop)
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)

    return run


def submit(executor: Executor, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """``executor.submit`` that keeps the caller's correlation context in the worker thread."""
    return executor.submit(wrap(fn), *args, **kwargs)
