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
# packages named here (correlation, trail, demo); for ../tests, ../bench and ../fakes mypy walks up
# their __init__.py files and checks them as the packages `tests`, `bench` and `fakes` with the
# repository root as their root, which is how they import each other (`from fakes import ...`).
CHECKED = ["correlation", "trail", "demo", "../tests", "../bench", "../fakes"]


def test_mypy_finds_no_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED],
        cwd=APP,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
