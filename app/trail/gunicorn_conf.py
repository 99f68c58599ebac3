"""The gunicorn settings' path of the previous release (``--config python:trail.gunicorn_conf``),
kept for one release (CHANGELOG.md); use ``python:trail.web.gunicorn_conf``."""

from trail.web.gunicorn_conf import *  # noqa: F403
