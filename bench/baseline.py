"""The library as it was at an earlier commit, to run beside this tree's in the same benchmark run.

``git archive <ref> app`` into a temporary directory; a process started with that ``app`` first on
``PYTHONPATH`` imports the baseline's ``correlation`` (before this tree's editable install) and
this tree's ``bench`` and ``fakes`` (from the repository root). Used by bench/attribution_asgi.py
and bench/p2_asgi.py (``BENCH_ASGI_BASELINE``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def baseline_app(ref: str) -> Iterator[str | None]:
    """The ``app`` directory of ``ref`` (None, with a note, when ``ref`` is empty or git cannot)."""
    if not ref:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as directory:
        archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "app"], capture_output=True, timeout=60,
                                 check=False)  # fmt: skip
        if archive.returncode != 0:
            print(f"  (no baseline: git archive {ref} failed: {archive.stderr.decode()[:200].strip()})")
            yield None
            return
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True, timeout=60)
        yield os.path.join(directory, "app")


def python_path(app_dir: str) -> str:
    """``PYTHONPATH`` for a process that runs ``app_dir``'s library with this tree's bench."""
    return os.pathsep.join([app_dir, ROOT, os.path.join(ROOT, "app")])
