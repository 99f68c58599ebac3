"""The wheel (the library and `trail`, no demo) and the image built from app/Dockerfile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO

pytestmark = pytest.mark.process

APP = REPO / "app"
DOCKERFILE = (APP / "Dockerfile").read_text()
#: Where the Dockerfile copies the sources it builds the wheel from (`COPY <name> /tmp/build/...`).
BUILD_COPY = re.compile(r"^COPY (\S+) /tmp/build/", re.M)
LIBRARY_PACKAGES = ("correlation", "trail")
#: What app/.dockerignore keeps out of the image's build context (caches, build output).
NOT_IN_CONTEXT = shutil.ignore_patterns("__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache", "build", "dist")


def build_wheel(context: Path, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(context)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `pip install ./app` installs: the wheel built from the whole app/ directory."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(APP, work / "app", ignore=NOT_IN_CONTEXT)
    return build_wheel(work / "app", work)


@pytest.fixture(scope="module")
def image_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the image installs, built from exactly what the Dockerfile copies to /tmp/build."""
    work = tmp_path_factory.mktemp("image-wheel")
    context = work / "context"
    context.mkdir()
    for name in BUILD_COPY.findall(DOCKERFILE):
        source = APP / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=NOT_IN_CONTEXT)
        else:
            shutil.copy(source, context / name)
    return build_wheel(context, work)


def test_the_wheel_holds_every_library_module_and_the_trail_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in LIBRARY_PACKAGES:
        # Every module and every data file (py.typed, the trail page's templates) is shipped.
        for source in (APP / package).rglob("*"):
            caches = [part for part in source.relative_to(APP).parts if part.startswith(".") or part == "__pycache__"]
            if source.is_file() and not caches:
                path = source.relative_to(APP).as_posix()
                assert path in names, f"{path} is missing from the wheel"
    assert "correlation/py.typed" in names, "type hints are shipped (PEP 561)"
    templates = {t.relative_to(APP).as_posix() for t in (APP / "trail" / "web" / "templates").glob("*.html")}
    assert templates and templates <= names, "the trail page's templates are package data"
    scripts = tomllib.loads((APP / "pyproject.toml").read_text())["project"]["scripts"]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[console_scripts]" in entry_points and f"trail = {scripts['trail']}" in entry_points
    script_module = scripts["trail"].split(":")[0].replace(".", "/") + ".py"
    assert script_module in names, "the console script's module is in the wheel"


def test_the_wheel_installs_no_demo_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == set(LIBRARY_PACKAGES), f"the wheel installs {sorted(top_level)} into site-packages"
    assert not [name for name in names if name.startswith("demo/")]


def test_the_image_command_runs_the_demo_from_source_with_the_library_from_the_wheel(
    wheel: Path, image_wheel: Path, tmp_path: Path
) -> None:
    """Lay out the image (wheel in site-packages, demo in WORKDIR, PYTHONPATH) and load its CMD."""
    assert sorted(zipfile.ZipFile(image_wheel).namelist()) == sorted(zipfile.ZipFile(wheel).namelist()), (
        "the Dockerfile copies everything the library's wheel is built from"
    )
    workdir = re.search(r"^WORKDIR (\S+)", DOCKERFILE, re.M)
    python_path = re.search(r"^ENV PYTHONPATH=(\S+)", DOCKERFILE, re.M)
    assert workdir and python_path and python_path.group(1) == workdir.group(1), "the demo is importable by path"
    assert re.search(r"^COPY demo \./demo$", DOCKERFILE, re.M), "the demo is copied into WORKDIR"
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd
    command: list[str] = json.loads(cmd.group(1))  # the exec form is JSON

    site_packages = tmp_path / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site_packages), str(image_wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    srv = tmp_path / "srv"
    shutil.copytree(APP / "demo", srv / "demo", ignore=NOT_IN_CONTEXT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        {
            "PYTHONPATH": f"{srv}{os.pathsep}{site_packages}",
            "SERVICE_NAME": "gateway",
            "PORT": "8080",
            "LOKI_URL": "",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    # Run from elsewhere: PYTHONPATH, not the working directory, must make the demo importable.
    where = subprocess.run(
        [sys.executable, "-c", "import correlation, trail, demo.services; print(correlation.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(site_packages)), "the library comes from the wheel"

    assert command[0] == "gunicorn"
    check = [sys.executable, "-m", "gunicorn", *command[1:-1], "--check-config", command[-1]]
    loaded = subprocess.run(check, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
