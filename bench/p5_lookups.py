"""The ways of looking one request up that the P5 scale benchmark times side by side (issue 26).

In process, on the library's client: today's single query over the 40 s window, on lines without
the ``shard`` label (the code before issue 26); the lookup as every reader runs it now
(:func:`trail.lookup.lookup_trail`: the ID's own seconds first, its shard's streams), on lines the
shipper writes now and on lines written before; the same seconds split into time slices or one
query per service, run in parallel. Out of process: ``trail --json <id>`` and trail-web's
``/t/<id>?format=json``, of this tree and of the code before issue 26 (a ``git archive`` of
``BASELINE_REF``), as a user runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.p5_traffic import SERVICES

NS = 1_000_000_000
REPOSITORY = Path(__file__).resolve().parent.parent
#: The code before issue 26 (mergetrail's tip): today's CLI and page, run from a git archive of it.
BASELINE_REF = os.environ.get("BENCH_P5_BASELINE", "62aa878")
#: Each variant's answer: (lines found, trail complete).
Found = tuple[int, bool]


def today_query(correlation_id: str) -> str:
    """The trail query before issue 26: every stream of every service (no shard selector)."""
    from correlation import schema
    from trail.logql import check_correlation_id

    return f'{{{schema.SERVICE_LABEL}=~".+"}} | {schema.CORRELATION_ID}="{check_correlation_id(correlation_id)}"'


class Lookups:
    """The in-process variants against one Loki; a pool whose threads keep their own clients."""

    def __init__(self, url: str, threads: int = 5) -> None:
        from correlation.settings import LokiSettings

        self.settings = LokiSettings(url=url)
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="p5-lookup")

    def client(self) -> Any:
        from trail.loki_query import LokiQueryClient

        if not hasattr(self.local, "client"):
            self.local.client = LokiQueryClient(self.settings)
        return self.local.client

    def close(self) -> None:
        self.pool.shutdown()

    def _found(self, cid: str, entries: list[Any]) -> Found:
        from trail.lookup import trail_from_entries

        entries.sort(key=lambda e: e.ts_ns)
        return len(entries), trail_from_entries(cid, entries).complete

    def _window(self, cid: str, query: str, narrow: bool) -> Found:
        """``query`` over the ID's 40 s window (``narrow``) or its own first seconds."""
        from trail.window import first_window, id_window

        window = id_window(cid) if narrow else first_window(cid)
        assert window is not None
        return self._found(cid, self.client().query_all(query, window.start_ns, window.end_ns))

    def today(self, cid: str) -> Found:
        """One query over today's window, [t - 5 s, t + 35 s], every stream (before issue 26)."""
        return self._window(cid, today_query(cid), narrow=True)

    def now(self, cid: str) -> Found:
        """The lookup every reader runs now: the ID's own seconds first (widened only if the trail
        looks incomplete), the ID's shard's streams and the streams without the label."""
        from trail.lookup import lookup_trail

        found = lookup_trail(self.client(), cid)
        return len(found.entries), found.trail.complete

    def shard_40s(self, cid: str) -> Found:
        """Today's 40 s window with the shard selector: what the label gives alone."""
        from trail.logql import trail_query

        return self._window(cid, trail_query(cid), narrow=True)

    def _parallel(self, cid: str, queries: list[tuple[str, int, int]]) -> Found:
        def run(job: tuple[str, int, int]) -> list[Any]:
            query, start, end = job
            return list(self.client().query_all(query, start, end))

        entries = [e for part in self.pool.map(run, queries) for e in part]
        return self._found(cid, entries)

    def time_slices(self, cid: str, slices: int = 3) -> Found:
        """The ID's own seconds in ``slices`` time slices, queried in parallel."""
        from trail.window import first_window

        window = first_window(cid)
        assert window is not None
        step = (window.end_ns - window.start_ns) // slices
        bounds = [window.start_ns + i * step for i in range(slices)] + [window.end_ns]
        query = today_query(cid)
        return self._parallel(cid, [(query, bounds[i], bounds[i + 1]) for i in range(slices)])

    def per_service(self, cid: str) -> Found:
        """The ID's own seconds, one query per service stream, in parallel (the services known)."""
        from trail.window import first_window

        window = first_window(cid)
        assert window is not None
        jobs = [(f'{{service_name="{s}"}} | correlation_id="{cid}"', window.start_ns, window.end_ns) for s in SERVICES]
        return self._parallel(cid, jobs)

    def work(self, cid: str, asked: dict[str, tuple[str, bool]]) -> dict[str, dict[str, float]]:
        """What Loki did for one ID, from its own query statistics (lines read, execution ms), for
        each named (query, over the 40 s window rather than the ID's own seconds)."""
        import json
        import urllib.parse
        import urllib.request

        from trail.window import first_window, id_window

        out = {}
        for name, (query, narrow) in asked.items():
            window = id_window(cid) if narrow else first_window(cid)
            assert window is not None
            params = {"query": query, "start": window.start_ns, "end": window.end_ns, "limit": 1000}
            url = f"{self.settings.url}/loki/api/v1/query_range?{urllib.parse.urlencode(params)}"
            with urllib.request.urlopen(url, timeout=120) as answer:
                summary = json.load(answer)["data"]["stats"]["summary"]
            out[name] = {"lines read": summary["totalLinesProcessed"], "exec ms": summary["execTime"] * 1000}
        return out

    def by_service(self, cid: str) -> Found:
        """Not a lookup: one service's error lines over the whole minute, a query no ID narrows
        (last error, dashboards): what more streams cost the queries that cannot pick a shard."""
        from trail.logql import error_lines_query

        end = time.time_ns()
        return len(self.client().query_all(error_lines_query("gateway"), end - 600 * NS, end)), True


@contextmanager
def baseline_tree() -> Iterator[Path | None]:
    """``app/`` of BASELINE_REF in a temporary directory (None, with a note, when git cannot)."""
    with tempfile.TemporaryDirectory(prefix="p5-baseline-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", BASELINE_REF, "app"], capture_output=True, timeout=60
        )
        if archive.returncode != 0:
            print(f"  (no baseline: git archive {BASELINE_REF} failed: {archive.stderr.decode()[:200].strip()})")
            yield None
            return
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True, timeout=60)
        yield Path(directory) / "app"


@contextmanager
def installed_python() -> Iterator[Path]:
    """An interpreter that sees the packages as a regular ``pip install`` leaves them, as the
    image's ``pip install`` does: a bare venv whose one ``.pth`` line puts this venv's
    site-packages on ``sys.path`` (a path in a ``.pth`` file is added without running the ``.pth``
    files in it). This venv's editable install of the library runs a finder at every start (~30 ms
    of CPU here) that an installed package does not: it would be counted against both CLIs."""
    import sysconfig
    import venv

    with tempfile.TemporaryDirectory(prefix="p5-python-") as directory:
        venv.EnvBuilder(with_pip=False).create(directory)
        bare = Path(directory) / "bin" / "python"
        purelib = subprocess.run(
            [str(bare), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (Path(purelib) / "p5-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        yield bare


def cli_runner(loki_url: str, app_dir: Path, python: Path) -> Callable[[str], Found]:
    """``trail --json <id>``, the code in ``app_dir`` as installed (``python``), timed whole."""
    import json

    env = {**os.environ, "LOKI_URL": loki_url, "PYTHONPATH": str(app_dir)}

    def run(cid: str) -> Found:
        done = subprocess.run(
            [str(python), "-m", "trail", "--json", cid],
            capture_output=True,
            env=env,
            timeout=120,
            cwd=tempfile.gettempdir(),
        )
        if done.returncode != 0:
            return 0, False
        document = json.loads(done.stdout)
        lines = sum(len(hop["lines"]) for hop in document["hops"]) + len(document["unknown_lines"])
        return lines, bool(document["complete"])

    return run


@contextmanager
def trail_web(loki_url: str, app_dir: Path | None) -> Iterator[str]:
    """trail-web under gunicorn (as compose runs it) reading ``loki_url``; its base URL."""
    from bench.trail_lookup import TRAIL_WEB_COMMAND
    from fakes import free_port, serving

    port = free_port()
    env = {"TRAIL_WEB_BIND": f"127.0.0.1:{port}", "LOKI_URL": loki_url}
    if app_dir is not None:
        env["PYTHONPATH"] = str(app_dir)
    base = f"http://127.0.0.1:{port}"
    with serving(
        [sys.executable, *TRAIL_WEB_COMMAND], base, "/healthz", env=env, cwd=Path(tempfile.gettempdir()), timeout=60
    ):
        yield base


def page_runner(base: str) -> Callable[[str], Found]:
    """``GET /t/<id>?format=json`` on a trail-web, on a kept connection (as a browser keeps one)."""
    import requests

    session = requests.Session()

    def run(cid: str) -> Found:
        answer = session.get(f"{base}/t/{cid}?format=json", timeout=120)
        if answer.status_code != 200:
            return 0, False
        document = answer.json()
        lines = sum(len(hop["lines"]) for hop in document["hops"]) + len(document["unknown_lines"])
        return lines, bool(document["complete"])

    return run
