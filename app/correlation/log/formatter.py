"""Log records that carry the correlation context, written as one JSON object per line.

:class:`CorrelationFilter` copies the current hop and service onto every record a handler sees
(:func:`~correlation.log.entry.stamp`); :class:`JsonFormatter` writes the record as a line
(:func:`~correlation.log.entry.line_entry`).
Where they are attached to the root logger: :mod:`correlation.setup`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import filterfalse
from typing import Any

from correlation import schema
from correlation.log import jsonline
from correlation.log.entry import line_entry, stamp

_CONTEXT_FIELDS = schema.CONTEXT_FIELDS
#: Where a JsonFormatter leaves the line it made, so the next handler does not format it again.
LINE_ATTR = "_correlation_json_line"
#: Where a record made from another library's event (structlog, loguru) keeps the event's fields
#: that cannot be record attributes (``name``, ``args``, ``filename``: a LogRecord's own names).
#: The formatter writes them as extras under their own names; see :func:`event_extra`.
FIELDS_ATTR = "_correlation_fields"
#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is written.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_RECORD_ATTRS |= {LINE_ATTR, FIELDS_ATTR}
#: Line keys the formatter takes from the record itself: an event field of the same name would be
#: hidden by them, so :func:`event_extra` writes it as ``<name>_``.
_RECORD_LINE_KEYS = frozenset((schema.TIME, schema.LEVEL, schema.LOGGER, schema.MESSAGE))
#: Not extras: the record's own attributes and the context fields (written in their place).
_NOT_EXTRA = _RECORD_ATTRS | frozenset(_CONTEXT_FIELDS)
#: A record with no more attributes than this (the context and formatters' own aside) has no extras.
_PLAIN_RECORD_SIZE = len(logging.makeLogRecord({}).__dict__)
_SERVICE, _CORRELATION_ID, _REQUEST_ID, _PARENT_ID = _CONTEXT_FIELDS
_STR_OR_NONE = frozenset({str, type(None)})
_NO_EXTRAS: dict[str, Any] = {}


def _plain_context(entry: dict[str, Any]) -> bool:
    """The values of a line without extras that can be other than str: level and logger names
    (an application's), the context fields (``extra=`` may set them)."""
    return (
        type(entry[schema.LEVEL]) is str
        and type(entry[schema.LOGGER]) is str
        and type(entry[_SERVICE]) in _STR_OR_NONE
        and type(entry[_CORRELATION_ID]) in _STR_OR_NONE
        and type(entry[_REQUEST_ID]) in _STR_OR_NONE
        and type(entry[_PARENT_ID]) in _STR_OR_NONE
    )


def event_extra(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``extra=`` for a record made from another logging library's event, so that the line carries
    each of the event's ``fields`` as an extra, none lost and none twice.

    Fields are record attributes (other handlers and formatters see them, as with ``extra=``) but
    for those a record cannot hold under their names (a LogRecord attribute such as ``name`` or
    ``args``), which ride in :data:`FIELDS_ATTR` and are written under their own names. A field
    named like a line key the record provides (``time``, ``level``, ``logger``, ``message``) is
    written as ``<name>_``. Context fields (``correlation_id``, ...) win over the current hop's, as
    with ``extra=``.
    """
    extra: dict[str, Any] = {}
    hidden: dict[str, Any] = {}
    for name, value in fields.items():
        if name in _RECORD_LINE_KEYS:
            hidden[f"{name}_"] = value
        elif name in _RECORD_ATTRS:
            hidden[name] = value
        else:
            extra[name] = value
    if hidden:
        extra[FIELDS_ATTR] = hidden
    return extra


class CorrelationFilter(logging.Filter):
    """Adds ``service``, ``correlation_id``, ``request_id`` and ``parent_request_id`` to records.

    Attach it to handlers (not loggers) so records of every logger, third-party ones included,
    get the fields. Values already on a record (passed with ``extra=``) are kept. Our own
    handlers stamp records themselves; the filter is for the application's other handlers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        stamp(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context fields, extras, exception.

    The line is kept on the record, so several handlers (stdout and Loki) format it once.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = record.__dict__.get(LINE_ATTR)
        if line is None:
            line = self._format(record)
            setattr(record, LINE_ATTR, line)
        return line

    def _format(self, record: logging.LogRecord) -> str:
        stamp(record)  # a handler without CorrelationFilter must not lose the ID
        attrs = record.__dict__
        get = attrs.get
        entry = line_entry(
            record.created, record.levelname, record.name, record.getMessage(),
            get(_SERVICE), get(_CORRELATION_ID), get(_REQUEST_ID), get(_PARENT_ID), _NO_EXTRAS,
        )  # fmt: skip
        # Extras (``extra=``) only when the record holds more attributes than a plain one plus
        # what the library and formatters add.
        known = (_SERVICE in attrs) + (_CORRELATION_ID in attrs) + (_REQUEST_ID in attrs) + (_PARENT_ID in attrs)
        known += ("message" in attrs) + ("asctime" in attrs) + (LINE_ATTR in attrs)
        plain = len(attrs) - known <= _PLAIN_RECORD_SIZE
        if not plain:
            for name in filterfalse(_NOT_EXTRA.__contains__, attrs):  # in the record's order
                if name not in entry:
                    entry[name] = attrs[name]
            hidden = attrs.get(FIELDS_ATTR)
            if hidden:  # an event's fields named like record attributes (event_extra)
                for name, value in hidden.items():
                    if name not in entry:
                        entry[name] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry[schema.EXCEPTION] = record.exc_text
        if record.stack_info:
            entry[schema.STACK] = self.formatStack(record.stack_info)
        if plain and _plain_context(entry):  # the usual line: only str and None, no check of each
            return jsonline.plain_line(entry)
        return jsonline.line(entry)
