"""A server with several worker processes that do not share their metrics is told so: once on
stderr and by ``correlation_metrics_unshared{service} 1``, at each worker's first request.

Without the shared directory each worker counts alone and a scrape answers whichever worker took
it: Prometheus reads every switch to a smaller count as a counter reset, and rates and alerts are
wrong without a sign. WSGI servers say whether other processes serve the same application
(``wsgi.multiprocess``; gunicorn sets it when it runs more than one worker).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from correlation.metrics import library, store

_warned = threading.Event()


def under_gunicorn() -> bool:
    """This process was started by gunicorn (its arbiter, or a worker forked from it)."""
    return "gunicorn.arbiter" in sys.modules


def check_server(environ: dict[str, Any], service: str) -> None:
    """Warn (once a process) when ``environ`` comes from a multi-process server and metrics are
    not shared."""
    if not environ.get("wsgi.multiprocess") or store.directory is not None:
        return
    library.UNSHARED.labels(service).set(1)
    if _warned.is_set():
        return
    _warned.set()
    sys.stderr.write(
        f"correlation: {service}: this server runs several worker processes, and their metrics are not "
        "shared: each scrape of /metrics answers one worker's counts, which Prometheus reads as counter "
        "resets. Add the hooks of correlation.gunicorn to the gunicorn config (see docs/library.md, "
        "'Several workers'), or set PROMETHEUS_MULTIPROC_DIR.\n"
    )
    sys.stderr.flush()
