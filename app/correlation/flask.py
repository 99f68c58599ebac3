"""Moved to :mod:`correlation.integrations.flask`: this old path is kept for one release (see CHANGELOG.md)."""

from correlation.integrations.flask import Correlation

__all__ = ["Correlation"]
