"""The package the Dockerfile installs: built from exactly what the Dockerfile copies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"


def test_wheel_from_the_dockerfile_context_has_every_package_and_the_trail_command(tmp_path: Path) -> None:
    dockerfile = (APP / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+) \./", dockerfile, flags=re.M)
    assert copied[0] == "pyproject.toml" and {"correlation", "demo", "trail"} <= set(copied)
    context = tmp_path / "context"
    context.mkdir()
    for name in copied:
        source = APP / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, context / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(context)],
        check=True, capture_output=True, timeout=120,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ["correlation/flask.py", "correlation/loki/sender.py", "correlation/py.typed", "demo/services.py",
                   "demo/gunicorn_conf.py", "trail/cli.py"]:
        assert module in names, module
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "trail = trail.cli:main" in entry_points
