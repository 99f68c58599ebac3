"""The gunicorn config of the benchmarks' instrumented apps under several workers: the library's
hooks only (``gunicorn --config python:bench.gunicorn_hooks``), so every worker writes its metrics
to the shared directory as docs/library.md, "Several workers", asks.

The JSON logging comes from the app's own ``setup_logging`` (bench/apps.py), so
``logconfig_dict`` is left out: gunicorn's access log is off by default and its error log writes
nothing per request.
"""

from correlation.gunicorn import *  # noqa: F403
