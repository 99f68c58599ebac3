"""Moved to :mod:`correlation.integrations.gunicorn`: this old path is kept for one release (see CHANGELOG.md)."""

from correlation.integrations.gunicorn import (
    child_exit,
    gunicorn_logconfig,
    on_exit,
    on_starting,
    when_ready,
    worker_abort,
)

__all__ = [
    "child_exit",
    "gunicorn_logconfig",
    "on_exit",
    "on_starting",
    "when_ready",
    "worker_abort",
]
