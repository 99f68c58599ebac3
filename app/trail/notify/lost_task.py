"""The tasks behind a TaskPublishFailures alert: a service could not queue a task (the broker is
down), so the request that asked for it succeeded and no request failed for the notifier to name.

Each loss is one ERROR line of ``correlation.celery.send_task``, ``could not publish task <task>
(<reason>): <error>``, written inside the publishing request, so it carries that request's
correlation ID. :func:`find_lost_task` reads the newest such lines of the alerted service (of the
alert's task and reason, when it has them) in the alert's window, a bounded number of them: the newest names
the request whose task was lost, and how many were read says how big the loss is.

Everything read here is log content: the ID is validated like any inbound ID before a link is
built from it; the task, reason and error are shown escaped (:mod:`trail.notify.message`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from correlation import schema
from correlation.ids import is_valid_id
from trail.logql import PUBLISH_FAILURE_MESSAGE, publish_failures_query
from trail.loki_query import LokiQueryClient, QueriedEntry
from trail.window import Window, id_window

#: The alert these findings explain (alerts/correlation-demo.rules.yml).
PUBLISH_FAILURE_ALERT = "TaskPublishFailures"
#: How many of the newest lost-task lines are read: the count a notification gives stops here.
LOST_TASK_SCAN = 100
#: The message's parts. The task's name is free text, so when the alert names the task the known
#: name is cut off first; otherwise the shortest name before `` (<reason>): `` is taken.
_REASON_AND_ERROR = re.compile(r"\((?P<reason>[A-Za-z0-9_]{1,64})\): (?P<error>.*)", re.DOTALL)
_TASK_REASON_AND_ERROR = re.compile(r"(?P<task>.+?) " + _REASON_AND_ERROR.pattern, re.DOTALL)


@dataclass(frozen=True)
class LostTask:
    """The newest task a service could not queue in a window, and how many it lost there."""

    #: What its line says (None when the message is not in the library's shape).
    task: str | None
    reason: str | None
    error: str | None
    #: The publishing request (None when the line carries no usable ID: published outside any).
    correlation_id: str | None
    request_id: str | None
    ts_ns: int
    #: Lost-task lines read in ``window``; ``count_capped``: the scan stopped at its bound.
    count: int
    count_capped: bool
    window: Window

    def trail_window(self) -> Window:
        """Where the publishing request's lines are: around the ID's own time when it carries one
        that holds the lost-task line, else the window searched."""
        around = id_window(self.correlation_id) if self.correlation_id else None
        if around is not None and around.start_ns <= self.ts_ns < around.end_ns:
            return around
        return self.window


def find_lost_task(
    client: LokiQueryClient,
    service: str,
    task: str | None,
    window: Window,
    deadline: float | None,
    reason: str | None = None,
) -> LostTask | None:
    """The newest lost task of ``service`` (of ``task``, for ``reason``, when given) in ``window``;
    None when there is none. ValueError for a service, task or reason that cannot be searched for;
    LokiQueryError for Loki's trouble."""
    newest_first = client.query_range(
        publish_failures_query(service, task, reason),
        window.start_ns,
        window.end_ns,
        limit=LOST_TASK_SCAN,
        direction="backward",
        deadline=deadline,
    )
    if not newest_first:
        return None
    newest = newest_first[0]
    fields = _fields(newest)
    message = fields.get(schema.MESSAGE)
    named, reason, error = _parts(message if isinstance(message, str) else "", task)
    return LostTask(
        task=named,
        reason=reason,
        error=error,
        correlation_id=_valid_id(fields.get(schema.CORRELATION_ID)) or _valid_id(newest.label(schema.CORRELATION_ID)),
        request_id=_text(fields.get(schema.REQUEST_ID)) or newest.label(schema.REQUEST_ID),
        ts_ns=newest.ts_ns,
        count=len(newest_first),
        count_capped=len(newest_first) >= LOST_TASK_SCAN,
        window=window,
    )


def _fields(entry: QueriedEntry) -> dict[str, Any]:
    try:
        fields = json.loads(entry.line)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _parts(message: str, task: str | None) -> tuple[str | None, str | None, str | None]:
    """(task, reason, error) of ``could not publish task <task> (<reason>): <error>``; the whole
    rest of the message as the error when it is not in that shape."""
    rest = message.removeprefix(PUBLISH_FAILURE_MESSAGE).removeprefix(" ")
    if task is not None and rest.startswith(task + " "):
        found = _REASON_AND_ERROR.fullmatch(rest[len(task) + 1 :])
        if found:
            return task, found["reason"], found["error"]
    found = _TASK_REASON_AND_ERROR.fullmatch(rest)
    if found:
        return found["task"], found["reason"], found["error"]
    return task, None, rest or None


def _valid_id(value: Any) -> str | None:
    # The ID comes from log content: validate it like any inbound ID before building links with it.
    return value if isinstance(value, str) and is_valid_id(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
