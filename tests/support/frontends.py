"""The library's logging as ``setup_logging`` installs it (stdout JSON into a buffer, Loki into a
fake), for the tests of the other logging front ends (structlog, loguru): what their lines become
on stdout and in Loki, and the sections of docs/integrations.md they run."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import flask

from correlation import schema
from correlation.integrations.flask import Correlation
from correlation.log.stdout import StdoutHandler
from correlation.settings import LokiSettings, Settings
from correlation.setup import setup_logging
from fakes import FakeLoki, PushedEntry
from tests.support import REPO

SERVICE = "shop"
DOCS = REPO / "docs" / "integrations.md"


@dataclass
class Installed:
    """What ``setup_logging`` installed on the root logger, and where its lines go."""

    stream: io.StringIO
    handlers: list[logging.Handler]
    loki: FakeLoki

    def stdout_lines(self) -> list[str]:
        for handler in self.handlers:
            if isinstance(handler, StdoutHandler):
                handler.flush()
        return self.stream.getvalue().splitlines()

    def loki_entry(self, message: str) -> PushedEntry:
        """The one entry whose line's message is ``message``, once it arrived."""

        def found(entries: list[PushedEntry]) -> list[PushedEntry]:
            return [e for e in entries if e.json.get(schema.MESSAGE) == message]

        entries = self.loki.wait_for(lambda entries: bool(found(entries)))
        (entry,) = found(entries)
        return entry

    def stdout_line(self, message: str) -> str:
        (line,) = [line for line in self.stdout_lines() if json.loads(line).get(schema.MESSAGE) == message]
        return line


@contextmanager
def library_logging(loki: FakeLoki, settings: Settings | None = None) -> Iterator[Installed]:
    """``setup_logging`` with stdout into a buffer and Loki into ``loki``; undone at the end."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    loki_settings = LokiSettings(url=loki.url, batch_max_wait_seconds=0.05, flush_timeout_seconds=5.0)
    handlers = setup_logging(settings or Settings(service=SERVICE, env="test", loki=loki_settings), stream=stream)
    try:
        yield Installed(stream, handlers, loki)
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler._installed_by_correlation = False  # type: ignore[attr-defined]  # noqa: SLF001 - a test's teardown, not a reconfiguration
            handler.close()
        root.setLevel(level)


def flask_app(view: Any) -> flask.Flask:
    """A Flask app with the extension, whose ``/order`` runs ``view`` inside the request's hop."""
    app = flask.Flask("frontends")
    app.add_url_rule("/order", "order", view)
    Correlation(app, Settings(service=SERVICE, env="test"), propagate_requests=False)
    return app


def unique_keys(line: str) -> dict[str, Any]:
    """The JSON object of ``line``; AssertionError if a key appears twice in it."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        assert len(keys) == len(set(keys)), f"a key twice in {line}"
        return dict(items)

    parsed: dict[str, Any] = json.loads(line, object_pairs_hook=pairs)
    return parsed


def doc_example(section: str, number: int = 0) -> str:
    """The ``python`` code block ``number`` (0: the first) under the ``## <section>`` heading of
    docs/integrations.md."""
    text = DOCS.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end != -1 else None], re.S)
    assert len(blocks) > number, f"no python example {number} under '## {section}' in {DOCS.name}"
    return str(blocks[number])
