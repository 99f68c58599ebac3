"""Poll with a deadline: the one way the tests and benchmarks wait for something to happen."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Errors that mean "not ready yet" while polling a server that is still starting.
NOT_YET = (OSError, urllib.error.URLError, ValueError, KeyError)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    not_yet: tuple[type[BaseException], ...] = NOT_YET,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that; AssertionError
    naming ``what`` (and the last "not yet" error) when ``timeout`` seconds pass first.

    An exception in ``not_yet`` counts as "not yet"; any other propagates at once, so a
    predicate can fail fast (e.g. when the process it waits for has died).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except not_yet as exc:
            last_error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(min(interval, remaining))
