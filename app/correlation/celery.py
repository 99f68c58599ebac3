"""Moved to :mod:`correlation.integrations.celery`: this old path is kept for one release (see CHANGELOG.md)."""

from correlation.integrations.celery import FAILURE_STATUS, STATUS_OF_STATE, install, rfc3339_ms, send_task, uninstall

__all__ = ["FAILURE_STATUS", "STATUS_OF_STATE", "install", "rfc3339_ms", "send_task", "uninstall"]
