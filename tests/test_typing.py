"""The library, the demo, the CLI, the tests and the benchmarks type-check (mypy, settings in
app/pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.process

APP = REPO / "app"

# Run from app/, so mypy reads app/pyproject.toml's [tool.mypy]. Import roots: app/ for the
# packages named here (correlation, trail, demo, fakes); for ../tests and ../bench mypy walks up
# their __init__.py files and checks them as the packages `tests` and `bench` with the repository
# root as their root (both import the fakes as `from fakes import ...`, with app/ on the path).
CHECKED = ["correlation", "trail", "demo", "fakes", "../tests", "../bench"]


def test_mypy_finds_no_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED],
        cwd=APP,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
