"""``python -m demo.grafana_dashboards SOURCE TARGET``: the stack's Grafana dashboards with the
address browsers use for trail-web (``TRAIL_WEB_URL``), written before Grafana starts (compose
service ``grafana-dashboards``, a one-shot; Grafana reads TARGET).

Why: the dashboards' links to trail-web (a request's trail page, the slowest request, Explore
through ``/go``) are built from the dashboard constant ``trail_web_url``. Grafana expands
environment variables in its provisioning files but not in the dashboard files themselves
(grafana.com/docs/grafana/latest/administration/provisioning/, "Use environment variables"), so
without this step a stack deployed with ``TRAIL_WEB_URL=https://trail.example.com`` would serve
dashboards whose links still point at ``http://localhost:8090``.

Each ``*.json`` of SOURCE is read as JSON, the constant's value set, and written to TARGET
atomically; nothing else in the dashboard changes. A value that is not ``http(s)://host[:port]
[/path]`` stops this (exit 2, naming the variable), and Grafana, which waits for this container,
does not start with broken links. TARGET is a volume of its own: a dashboard written by an
earlier run and since removed from SOURCE is deleted, found through the list this writes
(``.rendered``); no other file there is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from correlation.settings import ConfigError
from trail.links import DEFAULT_TRAIL_WEB_URL
from trail.web.settings import base_url_from_env

#: The dashboard constant every trail-web link is built from (``${trail_web_url:raw}/t/...``).
VARIABLE = "trail_web_url"
#: The names of the dashboards the last run wrote, one a line: what a later run may delete.
RENDERED_LIST = ".rendered"


def with_trail_web_url(dashboard: dict[str, Any], url: str) -> int:
    """Set the ``trail_web_url`` constant of ``dashboard`` (in place) to ``url``; how many were set."""
    found = 0
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("name") == VARIABLE and variable.get("type") == "constant":
            variable["query"] = url
            variable["current"] = {"text": url, "value": url}
            variable["options"] = [{"text": url, "value": url, "selected": True}]
            found += 1
    return found


def render(source: Path, target: Path, url: str) -> list[str]:
    """Write every dashboard of ``source`` to ``target`` with ``url``; what was done, a line each."""
    done = []
    written = []
    for path in sorted(source.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        count = with_trail_web_url(dashboard, url)
        partial = target / f".{path.name}.partial"
        partial.write_text(json.dumps(dashboard, indent=2) + "\n", encoding="utf-8")
        partial.chmod(0o644)  # Grafana runs as another user than this one-shot
        partial.replace(target / path.name)  # Grafana never reads half a dashboard
        written.append(path.name)
        done.append(f"{path.name}: {VARIABLE} = {url}" if count else f"{path.name}: copied (no {VARIABLE})")
    listed = target / RENDERED_LIST
    before = listed.read_text(encoding="utf-8").split() if listed.exists() else []
    for name in sorted(set(before) - set(written)):
        stale = target / name
        if stale.suffix == ".json" and stale.parent == target and not stale.is_symlink():
            stale.unlink(missing_ok=True)
            done.append(f"{name}: removed (no longer provisioned)")
    partial_list = target / f"{RENDERED_LIST}.partial"
    partial_list.write_text("".join(f"{name}\n" for name in written), encoding="utf-8")
    partial_list.replace(listed)
    return done


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m demo.grafana_dashboards", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("source", type=Path, help="the dashboards as in the repository (grafana/dashboards)")
    parser.add_argument("target", type=Path, help="where Grafana's dashboard provider reads them")
    args = parser.parse_args(argv)
    try:
        url = base_url_from_env(env, "TRAIL_WEB_URL", DEFAULT_TRAIL_WEB_URL)
    except ConfigError as exc:
        print(f"grafana-dashboards: {exc}", file=sys.stderr)
        return 2
    if not args.source.is_dir():
        print(f"grafana-dashboards: {args.source} is not a directory", file=sys.stderr)
        return 2
    args.target.mkdir(parents=True, exist_ok=True)
    for line in render(args.source, args.target, url):
        print(f"grafana-dashboards: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
