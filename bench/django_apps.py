"""The Django apps of the Django P2 (bench/p2_django.py): ``GET /ping`` -> "ok", bare and with the
library, each configured with ``settings.configure()`` (one app a process: gunicorn's).

- bare: Django with the docs example's other middleware (``CommonMiddleware``), no logging set up;
- instrumented: the docs' Django example as written (tests/support/django_docs.py): the middleware
  first, ``LOGGING`` with the library's stdout and Loki handlers (``LOKI_URL``: the bench's sink).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

from tests.support.django_docs import example_settings


def ping(request: HttpRequest) -> HttpResponse:  # noqa: ARG001 - a Django view's signature
    return HttpResponse("ok")


urlpatterns = [path("ping", ping)]


def application(*, instrumented: bool) -> Any:
    """The WSGI application of one of the two apps (configures this process's Django)."""
    values = example_settings()
    if not instrumented:
        values["MIDDLEWARE"] = [m for m in values["MIDDLEWARE"] if not m.startswith("correlation.")]
        del values["CORRELATION"], values["LOGGING"]
    settings.configure(
        **values,
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench-only-not-a-secret",
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()
