"""The trail page: ``trail serve`` and trail-web under gunicorn (:mod:`trail.web.app`)."""

# The gunicorn app path "trail.web:create_app()" of the previous release, kept for one release
# (CHANGELOG.md); use "trail.web.app:create_app()".
from trail.web.app import create_app as create_app
