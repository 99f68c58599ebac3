"""The Django example of docs/integrations.md, executed as written: what its ``settings.py`` and
``urls.py`` define. For the test site (tests/support/django_site.py) and the benchmark's Django
apps (bench/django_apps.py); importing this module configures nothing."""

from __future__ import annotations

from typing import Any

from tests.support.frontends import doc_example


def example_settings() -> dict[str, Any]:
    """The names ``settings.py`` of the docs' Django example defines."""
    names: dict[str, Any] = {}
    exec(doc_example("Django", 0), names)  # noqa: S102 - the documentation's own example, run as written
    return {name: value for name, value in names.items() if name.isupper()}


def example_urlpatterns() -> list[Any]:
    """``urlpatterns`` of the docs' example ``urls.py`` (the metrics view)."""
    names: dict[str, Any] = {}
    exec(doc_example("Django", 1), names)  # noqa: S102 - the documentation's own example, run as written
    return list(names["urlpatterns"])
