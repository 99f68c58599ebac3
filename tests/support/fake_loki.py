"""The one way the tests run a :class:`~fakes.FakeLoki` for a fixture: for the fixture's
scope, and failing the test if anything pushed to it broke Loki's format."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytest

from fakes import FakeLoki

#: What ``trail`` reads besides ``LOKI_URL``: unset, so that the machine running the tests cannot
#: change what the tests see.
TRAIL_ENV = ("LOKI_TENANT", "LOKI_USERNAME", "LOKI_PASSWORD", "LOKI_BEARER_TOKEN", "LOKI_TLS_VERIFY", "NO_COLOR")

Scope = Literal["function", "module", "session"]


@contextmanager
def checked_fake_loki(**options: Any) -> Iterator[FakeLoki]:
    """A running FakeLoki (``options`` as FakeLoki takes them); on leaving, no push may have broken
    Loki's format."""
    with FakeLoki(**options) as fake:
        yield fake
    assert not fake.violations, f"pushes that break Loki's format: {fake.violations}"


def fake_loki_fixture(scope: Scope = "function", *, as_loki_url: bool = False) -> Callable[..., Any]:
    """A fixture running one :func:`checked_fake_loki` for ``scope``; assign it to the fixture's
    name (``loki_sink = fake_loki_fixture()``).

    ``as_loki_url``: for ``trail``, ``LOKI_URL`` points at it and no other ``LOKI_*`` setting is set.
    """

    @pytest.fixture(scope=scope)
    def fake_loki() -> Iterator[FakeLoki]:
        with checked_fake_loki() as fake, pytest.MonkeyPatch.context() as env:
            if as_loki_url:
                for name in TRAIL_ENV:
                    env.delenv(name, raising=False)
                env.setenv("LOKI_URL", fake.url)
            yield fake

    return fake_loki
