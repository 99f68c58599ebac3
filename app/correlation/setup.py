"""Attach the library's handlers to the root logger, from :class:`Settings`.

One call does it all for a service that does not configure logging itself; a service that does
(``logging.config.dictConfig``, gunicorn's ``logconfig_dict``) can build the same handlers there.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from correlation import context, schema
from correlation.log.formatter import JsonFormatter
from correlation.log.stdout import StdoutHandler
from correlation.settings import Settings


def setup_logging(settings: Settings, *, stream: Any = None) -> list[logging.Handler]:
    """Send the root logger's records as JSON lines to ``stream`` (stdout) and to Loki.

    Loki shipping is on when ``settings.loki.url`` is set; stdout unless ``settings.log_stdout``
    is False. A StdoutHandler or LokiHandler that a logging configuration (``dictConfig``)
    already put on the root logger is kept instead of adding a second one. Returns the handlers
    it installed (replacing earlier ones it installed), so a caller can flush or close them.
    """
    from correlation.loki.handler import LokiHandler  # the shipper is optional; import only when used

    context.set_service(settings.service)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_installed_by_correlation", False)]:
        root.removeHandler(old)
        old._installed_by_correlation = False  # type: ignore[attr-defined]  # noqa: SLF001 - replaced, not lost
        old.close()

    # Handlers a logging configuration already attached (dictConfig, gunicorn's logconfig_dict)
    # are kept, and not doubled: that configuration is the team's, this call fills the gaps.
    configured = {type(h) for h in root.handlers}
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = []
    if settings.log_stdout and StdoutHandler not in configured:
        handlers.append(StdoutHandler(stream or sys.stdout))
    if settings.loki.url and LokiHandler not in configured:
        labels = {schema.SERVICE_LABEL: settings.service, schema.ENV_LABEL: settings.env}
        handlers.append(LokiHandler(settings.loki, labels=labels))
    for handler in handlers:  # both stamp the correlation context themselves: no filter needed
        handler.setFormatter(formatter)
        handler._installed_by_correlation = True  # type: ignore[attr-defined]  # noqa: SLF001 - our mark
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handlers
