"""A Django site in one module, no project tree: ``settings.configure()`` with the settings of
docs/integrations.md's Django example (executed, not copied), and this module as the URLconf.

Imported by the unit tests (Django's test client, in the pytest process) and served by gunicorn
(``tests.support.django_site:application()``) in tests/test_django_gunicorn.py. Django's
logging is the example's ``LOGGING`` only when ``DJANGO_SITE_LOGGING=docs``: in the pytest
process ``dictConfig`` would close every handler the other tests set up.
"""

# Django views take the request whether they read it or not.
# ruff: noqa: ARG001

from __future__ import annotations

import json
import os
from typing import Any

import django
import httpx
import requests
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET

from correlation import context
from tests.support.django_docs import example_settings, example_urlpatterns

#: The service name of the docs' example (its CORRELATION and the Loki handler's labels).
SERVICE = "orders"


def site_settings() -> dict[str, Any]:
    """What ``settings.configure`` gets: the docs' example, plus what a project tree would give."""
    values = example_settings()
    if os.environ.get("DJANGO_SITE_LOGGING") != "docs":
        values["LOGGING_CONFIG"] = None
    return {
        **values,
        "DEBUG": False,
        "ROOT_URLCONF": __name__,
        "ALLOWED_HOSTS": ["*"],
        "SECRET_KEY": "tests-only-not-a-secret",
        "INSTALLED_APPS": [],
        "DATABASES": {},
        "USE_TZ": True,
    }


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def order(request: HttpRequest, order_id: int) -> JsonResponse:
    """The hop as the view sees it, and which worker process answered."""
    return JsonResponse({"order_id": order_id, "correlation_id": context.correlation_id(), "pid": os.getpid()})


def calls(request: HttpRequest) -> JsonResponse:
    """``?url=``: the headers that URL (a header echo) received from a ``requests`` and an httpx call."""
    url = request.GET["url"]
    through_requests = requests.get(url, timeout=5).json()
    with httpx.Client(timeout=5) as client:
        through_httpx = client.get(url).json()
    return JsonResponse({"requests": through_requests, "httpx": through_httpx})


def downstream(request: HttpRequest) -> HttpResponse:
    """``?url=``: a call that fails (5xx), answered with a 502 of the view's own."""
    answer = requests.get(request.GET["url"], timeout=5)
    return HttpResponse(f"payments said {answer.status_code}", status=502)


class OrderLost(RuntimeError):
    """The failure /fail raises: its class is the access line's error_type."""


def fail(request: HttpRequest) -> HttpResponse:
    raise OrderLost("the order with card 4111 1111 1111 1111 is lost")  # a message no body may show


def missing(request: HttpRequest, order_id: int) -> HttpResponse:
    raise Http404(f"no order {order_id}")


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


def own_404(request: HttpRequest) -> HttpResponse:
    """A 404 the view chose, with its own body: left alone."""
    return HttpResponse(json.dumps({"mine": True}), status=404, content_type="application/json")


@require_GET
def get_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("got")


def pid(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(os.getpid()))


def slow(request: HttpRequest) -> HttpResponse:
    import time

    time.sleep(float(request.GET.get("seconds", "30")))  # past gunicorn's --timeout: the worker is killed
    return HttpResponse("late")


urlpatterns = [
    *example_urlpatterns(),
    path("ok", ok),
    path("orders/<int:order_id>", order),
    path("orders/<int:order_id>/missing", missing),
    path("calls", calls),
    path("downstream", downstream),
    path("fail", fail),
    path("forbidden", forbidden),
    path("own-404", own_404),
    path("get-only", get_only),
    path("pid", pid),
    path("slow", slow),
]
if not settings.configured:
    settings.configure(**site_settings())
    django.setup()  # no middleware loaded yet: importing this module patches nothing


def application() -> Any:
    """The WSGI application, for gunicorn (``tests.support.django_site:application()``): Django
    loads the middleware now, as a project's ``wsgi.py`` does at import."""
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()
