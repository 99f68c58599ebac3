"""structlog events as the library's lines: the correlation fields in structlog's own output, or
each event handed to ``logging`` and written by the library's handlers (stdout JSON, Loki).

Optional: ``pip install 'correlation-trail[structlog]'``. Two ways, by who renders the line:

- structlog renders it (its ``JSONRenderer``, ``ConsoleRenderer``): put :func:`add_correlation`
  in the processor chain; it adds ``service``, ``correlation_id``, ``request_id`` and
  ``parent_request_id`` to each event.
- the library renders it (after :func:`correlation.setup_logging` or a ``dictConfig`` with our
  handlers): call :func:`configure_structlog` once. Events then go through ``logging`` as records
  of the logger structlog names, and every handler writes them as its own lines: the event as
  the message, its key-value pairs as extras (not a JSON string inside the message), the
  exception and the correlation context as on any record. :func:`to_logging` is the chain's last
  processor that does it, for a chain of your own.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

try:
    import structlog
except ImportError as error:  # the extra is not installed: say which one to install
    raise ImportError(
        "correlation.integrations.structlog needs structlog: pip install 'correlation-trail[structlog]'",
        name="structlog",
    ) from error

from correlation import context, schema
from correlation.log.formatter import event_extra

#: structlog's event-dict keys that are ``Logger.log`` arguments, not fields of the line.
_LOG_KWARGS = ("exc_info", "stack_info", "stacklevel")
_POSITIONAL_ARGS = "positional_args"  # structlog.stdlib.BoundLogger's name for ``log.info("%s", x)``'s args
_EVENT = "event"
#: The level each BoundLogger method logs at, lowercased, where the method's name is not it.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error", "fatal": "critical", "msg": "info"}


def add_correlation(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:  # noqa: ARG001 - structlog's processor signature
    """structlog processor: add the service and the current hop's IDs (None outside a request)
    to the event, unless it has them already (values bound or passed explicitly win)."""
    if schema.CORRELATION_ID not in event_dict:
        hop = context.current()
        event_dict[schema.CORRELATION_ID] = hop.correlation_id if hop else None
        event_dict.setdefault(schema.REQUEST_ID, hop.request_id if hop else None)
        event_dict.setdefault(schema.PARENT_REQUEST_ID, hop.parent_request_id if hop else None)
    event_dict.setdefault(schema.SERVICE, context.service())
    return event_dict


def to_logging(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """structlog's last processor, with ``structlog.stdlib.LoggerFactory``: the arguments of the
    ``logging.Logger`` call that makes the event a record.

    ``event`` is the message (with structlog's positional arguments as the record's ``args``);
    ``exc_info``, ``stack_info`` and ``stacklevel`` are passed to ``logging``; every other key is a
    field of the line (:func:`correlation.log.formatter.event_extra`). ``level`` and ``logger`` keys that
    repeat the record's level and logger name (``add_log_level``, ``add_logger_name``) are left
    out, so the line does not say them twice.
    """
    fields = dict(event_dict)
    message = fields.pop(_EVENT, None)
    args = (message, *fields.pop(_POSITIONAL_ARGS, ()))
    kwargs: dict[str, Any] = {name: fields.pop(name) for name in _LOG_KWARGS if name in fields}
    level = fields.get(schema.LEVEL)
    if isinstance(level, str) and level.lower() == _LEVEL_OF_METHOD.get(method_name, method_name):
        del fields[schema.LEVEL]
    if fields.get(schema.LOGGER) == getattr(logger, "name", None):
        del fields[schema.LOGGER]
    if fields:
        kwargs["extra"] = event_extra(fields)
    return args, kwargs


def configure_structlog(processors: Iterable[Any] = ()) -> None:
    """Send every structlog event to ``logging``, where the library's handlers write it.

    The chain: structlog's level filter (the stdlib logger's level), the context structlog binds
    (``structlog.contextvars``), then ``processors`` (yours), then :func:`to_logging`. Leave out
    renderers and the processors that add a level, logger name, time or formatted exception: the
    line has them. Other settings of ``structlog.configure`` (``cache_logger_on_first_use``) are
    left as they are.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            *processors,
            to_logging,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


__all__ = ["add_correlation", "configure_structlog", "to_logging"]
