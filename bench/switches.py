"""Parts of the instrumented app switched off from the bench side, to attribute its cost.

``BENCH_OFF=access,metrics`` (read by :func:`bench.apps.instrumented`) patches the running
library after the app is built; the library itself has no such flags. Stdout and Loki are
switched off through the library's own settings instead (``LOG_STDOUT=false``, no ``LOKI_URL``):
see :data:`ENV_PARTS`. ``BENCH_THREAD_NAMES=1`` gives every Python thread its name at the OS
level too, so that the per-thread CPU in ``/proc/<pid>/task`` says which thread spent it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

#: Parts patched off here, with what switching each off removes.
PATCHED_PARTS = {
    "access": "the access line: its logger disabled (no record, no JSON, no handler)",
    "metrics": "RED metrics: observe_request does nothing (no histogram, no exemplar)",
    "propagation": "the requests/httpx patch (no outgoing call in P2: its cost is at import)",
}
#: Parts switched off through the library's settings (environment of the app process).
ENV_PARTS = {
    "stdout": ({"LOG_STDOUT": "false"}, "JSON lines to stdout"),
    "loki": ({"LOKI_URL": ""}, "the Loki handler (buffer, sender thread)"),
}


def off_parts() -> set[str]:
    raw = os.environ.get("BENCH_OFF", "")
    parts = {p.strip() for p in raw.split(",") if p.strip()}
    unknown = parts - set(PATCHED_PARTS) - set(ENV_PARTS)
    if unknown:
        raise ValueError(f"BENCH_OFF: unknown parts {sorted(unknown)}; known: {[*PATCHED_PARTS, *ENV_PARTS]}")
    return parts


def apply(parts: set[str]) -> None:
    """Switch ``parts`` off in the running library (after ``Correlation(app)``)."""
    from correlation import metrics, schema
    from correlation.integrations.requests import uninstrument_requests

    if "access" in parts:
        logging.getLogger(schema.ACCESS_LOGGER).disabled = True
    if "metrics" in parts:
        setattr(metrics, "observe_request", lambda *args, **kwargs: None)
    if "propagation" in parts:
        uninstrument_requests()


def name_os_threads() -> None:
    """From now on every new thread sets its OS name (15 bytes) to its Python name."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_name = 15
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]  # noqa: SLF001 - bench-only

    def named(self: threading.Thread) -> None:
        prctl(pr_set_name, self.name.encode()[:15], 0, 0, 0)
        bootstrap(self)

    setattr(threading.Thread, "_bootstrap_inner", named)
