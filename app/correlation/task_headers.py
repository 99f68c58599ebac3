"""A task message's headers: the hop a task carries from its publisher to its run.

What :mod:`correlation.wire` is to HTTP calls, this is to task messages: :func:`publish_headers`
writes the publishing hop (correlation ID, the publisher's request ID as the task's parent, caller,
``traceparent`` with the trace's sampled flag, and ``tracestate`` when the trace has one) and the
publish time (``X-Published-At``); :func:`read_headers` reads them back
when the task runs, refusing (never raising on) anything malformed, a publish time out of range
included. Header names live in :mod:`correlation.schema`. Plain data in, plain data out: no Celery
here; :mod:`correlation.integrations.celery` wires it to Celery's signals.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from correlation import context, ids, schema, wire

#: Publish times further from this host's clock than this are refused (a day back: a countdown
#: or a backlog; ten minutes ahead: clock skew between hosts).
MAX_PUBLISH_AGE_MS = 24 * 3600 * 1000
MAX_PUBLISH_SKEW_MS = 10 * 60 * 1000
BAD_PUBLISHED_AT = "bad_published_at"
_MS_DIGITS = re.compile(r"[0-9]{1,15}")

#: What a task message may say about its hop, besides the correlation header (which is configurable).
TASK_HEADERS = (
    schema.REQUEST_ID_HEADER,
    schema.PARENT_HEADER,
    schema.CALLER_HEADER,
    schema.TRACEPARENT_HEADER,
    schema.TRACESTATE_HEADER,
    schema.PUBLISHED_AT_HEADER,
)


@dataclass(frozen=True, slots=True)
class TaskInbound:
    """What a task message said: the hop of this run (``inbound``) and when it was published."""

    inbound: wire.Inbound
    published_ms: int | None
    #: Refused values, the ``published_at`` one included (``inbound.rejections`` has the IDs only).
    rejections: tuple[wire.Rejection, ...]


def publish_headers(
    hop: context.Hop | None, service: str, header: str = schema.CORRELATION_HEADER, now_ms: int | None = None
) -> dict[str, str]:
    """The headers a task message carries: ``hop``'s (the publisher's), or a fresh trail's when None."""
    published = str(int(time.time() * 1000) if now_ms is None else now_ms)
    if hop is None:  # no parent: a parent that wrote no line would make the task an orphan
        return {header: ids.new_correlation_id(), schema.CALLER_HEADER: service, schema.PUBLISHED_AT_HEADER: published}
    return {**wire.headers(hop, service, header), schema.PUBLISHED_AT_HEADER: published}


def read_headers(
    headers: Mapping[Any, Any], header: str = schema.CORRELATION_HEADER, now_ms: int | None = None
) -> TaskInbound:
    """The hop a task message asks for. Any JSON value may be in a message, so anything goes in;
    nothing raises: a refused value is reported in ``rejections`` and replaced."""
    names = {name.lower() for name in (header, *TASK_HEADERS)}
    # Names match case-insensitively (the last spelling wins, as in wire.from_headers); null is
    # absent. A value that is not text is refused, never read as text: 12345 or true is no ID.
    ours = {str(k).lower(): v for k, v in headers.items() if str(k).lower() in names}
    text = {k: v if isinstance(v, str) else f"<{type(v).__name__}> {v!r}" for k, v in ours.items() if v is not None}
    inbound = wire.from_headers(text, header)
    raw = text.get(schema.PUBLISHED_AT_HEADER.lower())
    if raw is None:
        return TaskInbound(inbound, None, inbound.rejections)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if _MS_DIGITS.fullmatch(raw) and now - MAX_PUBLISH_AGE_MS <= int(raw) <= now + MAX_PUBLISH_SKEW_MS:
        return TaskInbound(inbound, int(raw), inbound.rejections)
    refused = wire.Rejection(schema.PUBLISHED_AT_HEADER, BAD_PUBLISHED_AT, raw)
    return TaskInbound(inbound, None, (*inbound.rejections, refused))
