"""Poll with a deadline: the one way the tests and benchmarks wait for something to happen, and
the one way they run a server process until it answers (:func:`serving`)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

#: Errors that mean "not ready yet" while polling a server that is still starting.
NOT_YET = (OSError, urllib.error.URLError, ValueError, KeyError)


def wait_until(
    # None or False is "not yet", so what comes back is the rest: ``T`` (a predicate written
    # ``found or None`` or ``ready and found`` returns its found value, typed without None).
    predicate: Callable[[], T | Literal[False] | None],
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


@contextmanager
def serving(
    command: list[str],
    base: str,
    health_path: str,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 30,
) -> Iterator[str]:
    """Run a server process until ``base + health_path`` answers 2xx; yield ``base``; stop it
    (SIGTERM, then SIGKILL after 15 s). Its output goes to ``log`` (else nowhere); a process that
    exits while starting fails with that log."""
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]

    def healthy() -> bool:
        if proc.poll() is not None:
            shown = log.read_text(errors="replace")[-4000:] if log is not None else "(no log kept)"
            raise AssertionError(f"{command[0]} exited {proc.returncode} while starting:\n{shown}")
        with urllib.request.urlopen(base + health_path, timeout=2) as response:
            return 200 <= response.status < 300

    try:
        wait_until(healthy, timeout, f"{base}{health_path}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
