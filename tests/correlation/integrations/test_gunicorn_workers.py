"""Several gunicorn workers, for real: every scrape of any worker answers the server's exact
counts, with exemplars whose lines were logged; recycling and a SIGKILLed worker lose no count;
the server's process figures (CPU, memory, fds) are there, its CPU never going back; a server
without the hooks says so; METRICS_PORT serves /metrics from the arbiter only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fakes import free_port, wait_until

pytestmark = pytest.mark.process  # the test with a real Prometheus says stack

APP = textwrap.dedent("""
    import flask, correlation

    app = flask.Flask("workers")
    correlation.Correlation(app)

    @app.get("/ok")
    def ok():
        return "ok"

    @app.get("/fail")
    def fail():
        return "no", 500

    @app.get("/pid")
    def pid():
        import os
        return str(os.getpid())

    @app.get("/burn")
    def burn():
        import time
        started = time.process_time()
        while time.process_time() - started < 0.3:  # CPU this worker spends
            pass
        return "burnt"

    @app.get("/slow")
    def slow():
        import time
        time.sleep(30)  # past gunicorn's --timeout: the worker is killed
        return "late"
""")

HOOKS = "from correlation.gunicorn import *  # noqa: F403\nlogconfig_dict = gunicorn_logconfig()\n"
# What a config written before the hooks existed has: the logging and worker_abort only.
NO_HOOKS = "from correlation.gunicorn import gunicorn_logconfig, worker_abort\nlogconfig_dict = gunicorn_logconfig()\n"
CONF = textwrap.dedent("""
    workers = 3
    worker_class = {worker_class!r}
    threads = {threads}
    max_requests = {max_requests}
    max_requests_jitter = 0
    preload_app = {preload}
    timeout = {timeout}
    accesslog = None
    control_socket_disable = True
""")
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
_COUNT = re.compile(r"^http_server_request_duration_seconds_count\{([^}]*)\} (\S+)", re.M)
_EXEMPLAR = re.compile(r'^http_server_request_duration_seconds_bucket\{.*\} \S+ # \{correlation_id="([^"]+)"\}', re.M)
_ERRORS_EXEMPLAR = re.compile(r'^http_server_errors_total\{[^}]*\} \S+ # \{correlation_id="', re.M)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    output: Path
    directory: Path

    def scrape(self, base: str | None = None) -> str:
        response = requests.get(f"{base or self.url}/metrics", headers=OPENMETRICS, timeout=10)
        response.raise_for_status()
        return response.text

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def logged_ids(self) -> set[str]:
        found = set()
        for line in self.output.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.add(json.loads(line).get("correlation_id"))
        return found


def requests_counted(text: str, route: str | None = None) -> float:
    """The sum of the request histogram's counts (of one route)."""
    return sum(float(v) for labels, v in _COUNT.findall(text) if route is None or f'route="{route}"' in labels)


@contextmanager
def gunicorn(
    tmp_path: Path,
    *,
    worker_class: str = "sync",
    max_requests: int = 0,
    hooks: bool = True,
    preload: bool = False,
    timeout: int = 30,
    env: dict | None = None,
) -> Iterator[Server]:
    (tmp_path / "workers_app.py").write_text(APP)
    # Threads for gthread only: gunicorn runs gthread when told "sync" with threads > 1.
    threads = 4 if worker_class == "gthread" else 1
    settings = CONF.format(
        worker_class=worker_class, threads=threads, max_requests=max_requests, preload=preload, timeout=timeout
    )
    conf = (HOOKS if hooks else NO_HOOKS) + settings
    (tmp_path / "workers_conf.py").write_text(conf)
    directory = tmp_path / "shared"
    port = free_port()
    environment = {**os.environ, "SERVICE_NAME": "workers", "PYTHONPATH": str(tmp_path), "LOG_LEVEL": "INFO"}
    environment.pop("LOKI_URL", None)
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(env or {})
    if "PROMETHEUS_MULTIPROC_DIR" in environment:
        directory = Path(environment["PROMETHEUS_MULTIPROC_DIR"])
    output = tmp_path / "gunicorn.out"
    with output.open("wb") as log:
        command = [sys.executable, "-m", "gunicorn", "--config", "python:workers_conf"]
        command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "workers_app:app"]
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, output, directory)
    try:
        wait_until(lambda: _answers(server), 30, "gunicorn answering")
        wait_until(lambda: len(server.workers()) == 3, 30, "three workers")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _answers(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(server.output.read_text(errors="replace")[-3000:])
    try:
        return requests.get(f"{server.url}/pid", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


class Scraper(threading.Thread):
    """Scrapes while the load runs: the count never goes down (no reset seen by Prometheus)."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.stop = server, threading.Event()
        self.seen: list[float] = []
        self.measure: Callable[[str], float] = requests_counted

    def run(self) -> None:
        while not self.stop.is_set():  # back to back: as many scrapes as the load leaves room for
            try:
                text = self.server.scrape()
            except requests.ConnectionError:  # answered by a worker being killed: a failed scrape
                continue
            self.seen.append(self.measure(text))


@pytest.mark.parametrize(("worker_class", "preload"), [("sync", False), ("gthread", False), ("gthread", True)])
def test_every_scrape_answers_the_sum_of_all_workers(tmp_path: Path, worker_class: str, preload: bool) -> None:
    with gunicorn(tmp_path, worker_class=worker_class, preload=preload) as server:
        scraper = Scraper(server)
        scraper.start()
        before = requests_counted(server.scrape(), "/ok")
        n = 90
        for _ in range(n // 2):  # new connections
            assert requests.get(f"{server.url}/ok", timeout=10).status_code == 200
        with requests.Session() as session:  # keep-alive (gthread keeps it; sync closes it)
            for _ in range(n // 2):
                assert session.get(f"{server.url}/ok", timeout=10).status_code == 200
        served_by = {requests.get(f"{server.url}/pid", timeout=10).text for _ in range(30)}
        # A fast load may end within a few scrapes: a few more, across its end, before stopping.
        wait_until(lambda: len(scraper.seen) > 3, 20, "four scrapes")
        scraper.stop.set()
        scraper.join(10)
        scrapes = [server.scrape() for _ in range(6)]
        assert [requests_counted(text, "/ok") - before for text in scrapes] == [n] * 6
        assert len(served_by) > 1, "the requests were spread over several workers"
        assert scraper.seen == sorted(scraper.seen) and len(scraper.seen) > 3, "no scrape saw a count go down"
        exemplars = set(_EXEMPLAR.findall(scrapes[-1]))
        assert exemplars
        logged = wait_until(lambda: server.logged_ids() >= exemplars and server.logged_ids(), 10, "the lines")
        assert exemplars <= logged, "every exemplar is a request whose lines were logged"


def test_recycled_and_killed_workers_lose_no_count(tmp_path: Path) -> None:
    with gunicorn(tmp_path, max_requests=50, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}) as server:
        foreign = server.directory / "notes.txt"
        foreign.write_text("not the library's")
        answered = failed = 0
        for _ in range(240):  # about five recycles
            answered += requests.get(f"{server.url}/ok", timeout=10).status_code == 200
        stop = threading.Event()

        def load() -> None:
            nonlocal answered, failed
            while not stop.is_set():
                try:
                    answered += requests.get(f"{server.url}/fail", timeout=10).status_code == 500
                except requests.RequestException:
                    failed += 1

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(0.5)
        os.kill(server.workers()[0], signal.SIGKILL)  # killed mid-load: what it counted stays
        time.sleep(0.5)
        stop.set()
        thread.join(20)
        wait_until(lambda: len(server.workers()) == 3, 20, "the killed worker replaced")
        counted = requests_counted(server.scrape())
        # A request counted by a worker killed before it sent the answer is counted, not answered.
        assert answered <= counted <= answered + failed + 1, (answered, failed, counted)
        files = sorted(p.name for p in server.directory.iterdir() if p.suffix == ".metrics")
        assert len(files) <= 3 + 2, f"dead workers' files are archived, not kept: {files}"
        assert _ERRORS_EXEMPLAR.search(server.scrape()), "the error counter carries an exemplar"
    assert foreign.exists(), "a file the library did not write is left alone"
    assert not [p for p in server.directory.iterdir() if p.suffix == ".metrics"], "the library's files removed"


def test_a_worker_killed_for_a_timeout_writes_its_500_and_its_counts_stay_summed(tmp_path: Path) -> None:
    """worker_abort under several workers: the killed worker's in-flight request gets its 500 access
    line, and what that worker counted (the 500 included) is still in every scrape once it is gone."""
    with gunicorn(tmp_path, timeout=2) as server:
        answered = sum(requests.get(f"{server.url}/ok", timeout=10).status_code == 200 for _ in range(30))
        before = set(server.workers())
        try:  # gunicorn may answer a bare 500 as the worker dies, or just close the connection
            requests.get(f"{server.url}/slow", headers={"X-Correlation-ID": "doomed-1"}, timeout=20)
        except requests.RequestException:
            pass
        wait_until(lambda: len(set(server.workers()) - before) == 1, 20, "the timed-out worker replaced")
        (gone,) = before - set(server.workers())
        for _ in range(6):  # whichever worker answers, and the arbiter has archived the dead one
            text = server.scrape()
            assert requests_counted(text, "/ok") == answered == 30
            slow = [(labels, float(v)) for labels, v in _COUNT.findall(text) if 'route="/slow"' in labels]
            assert [(('status="500"' in labels), count) for labels, count in slow] == [(True, 1.0)], slow
    lines = [json.loads(line) for line in server.output.read_text(errors="replace").splitlines() if line[:1] == "{"]
    aborted = [x for x in lines if x.get("correlation_id") == "doomed-1" and x["logger"] == "correlation.access"]
    assert [(a["status"], "worker timeout" in a["message"]) for a in aborted] == [(500, True)]
    assert f"WORKER TIMEOUT (pid:{gone})" in server.output.read_text(errors="replace")


def test_a_server_without_the_hooks_says_so(tmp_path: Path) -> None:
    with gunicorn(tmp_path, hooks=False) as server:
        for _ in range(12):
            requests.get(f"{server.url}/ok", timeout=10)
        warning = "their metrics are not shared"
        wait_until(lambda: warning in server.output.read_text(errors="replace"), 10, "the warning on stderr")
        assert 'correlation_metrics_unshared{service="workers"} 1.0' in server.scrape()


_FIGURE = re.compile(r"^((?:process|python)_\w+)(\{[^}]*\})? (\S+)$", re.M)


def process_figures(text: str) -> dict[str, float]:
    """``process_*`` and ``python_*`` samples of a scrape: name with labels -> value."""
    return {name + (labels or ""): float(value) for name, labels, value in _FIGURE.findall(text)}


def _naming_a_process(text: str, pids: list[int]) -> set[str]:
    """Label names or values of a scrape that name a process: none, or recycled workers would make
    new series without bound."""
    labels = set(re.findall(r'[{,](\w+)="([^"]*)"', text))
    return {f"{k}={v}" for k, v in labels if "pid" in k or "process" in k or v in {str(p) for p in pids}}


def _proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _resident(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _started(pid: int) -> float:
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:6] == "btime ")
    return boot + float(_proc_stat(pid)[19]) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_the_process_figures_are_the_servers_and_its_cpu_never_goes_back(tmp_path: Path, worker_class: str) -> None:
    """What a single process exports from prometheus_client's default registry, for the whole server:
    memory summed over the arbiter and the workers, the largest open fds, the arbiter's start, the
    CPU of every worker that ever ran (a SIGKILLed one and recycled ones kept), no label per pid."""
    with gunicorn(tmp_path, worker_class=worker_class, max_requests=40) as server:
        processes = [server.process.pid, *server.workers()]
        measured = sum(_resident(pid) for pid in processes)
        # Each worker samples its figures every second: wait until all three are in.
        text = wait_until(
            lambda: (
                (t := server.scrape())
                and process_figures(t).get("process_resident_memory_bytes", 0) > 0.8 * measured
                and t
            ),
            10,
            "every worker's memory in the sum",
        )
        figures = process_figures(text)
        resident = figures["process_resident_memory_bytes"]
        assert max(_resident(pid) for pid in processes) * 2 < resident < 1.25 * measured, (resident, measured)
        assert figures["process_start_time_seconds"] == pytest.approx(_started(server.process.pid), abs=0.02)
        fds = [len(os.listdir(f"/proc/{pid}/fd")) for pid in processes]
        assert max(fds) - 5 <= figures["process_open_fds"] <= max(fds) + 5 < sum(fds), (figures, fds)
        assert figures["process_max_fds"] > 0 and figures["process_virtual_memory_bytes"] > resident
        assert figures['python_gc_collections_total{generation="0"}'] > 0
        assert figures["process_cpu_seconds_total"] > 0
        labelled = {name for name in figures if "{" in name and not name.split("{")[0].endswith("_created")}
        assert labelled and all(re.search(r'\{(generation="\d"|implementation=.*)\}$', n) for n in labelled), labelled
        assert not _naming_a_process(text, processes)

        scraper = Scraper(server)
        scraper.measure = lambda text: process_figures(text)["process_cpu_seconds_total"]
        scraper.start()
        for _ in range(6):  # 0.3 s of CPU each, spread over the workers
            assert requests.get(f"{server.url}/burn", timeout=20).status_code == 200
        wait_until(lambda: scraper.seen and scraper.seen[-1] >= 1.8, 10, "the CPU summed")
        burnt = scraper.seen[-1]
        cpu = {pid: sum(float(x) for x in _proc_stat(pid)[11:13]) for pid in server.workers()}
        victim = max(cpu, key=cpu.__getitem__)  # the worker that spent most: its CPU must stay counted
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: victim not in server.workers() and len(server.workers()) == 3, 20, "the killed worker replaced"
        )
        for _ in range(120):  # recycles every worker (max_requests 40) at least once
            requests.get(f"{server.url}/ok", timeout=10)
        wait_until(lambda: len(scraper.seen) > 20 and len(server.workers()) == 3, 20, "scrapes across the recycling")
        scraper.stop.set()
        scraper.join(10)
        assert scraper.seen == sorted(scraper.seen), "the CPU total never went back"
        assert scraper.seen[-1] >= burnt
        assert not _naming_a_process(server.scrape(), [server.process.pid, *server.workers(), victim])


def test_metrics_port_serves_the_sum_from_the_arbiter_only(tmp_path: Path) -> None:
    port = free_port()
    with gunicorn(tmp_path, env={"METRICS_PORT": f"127.0.0.1:{port}"}) as server:
        for _ in range(30):
            requests.get(f"{server.url}/ok", timeout=10)
        assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 404, "not on the public port"
        metrics = f"http://127.0.0.1:{port}"
        assert requests_counted(server.scrape(metrics), "/ok") == 30
        assert '# {correlation_id="' in server.scrape(metrics)


@pytest.mark.stack
def test_prometheus_sees_no_reset_and_the_error_ratio_alert_fires_only_on_errors(tmp_path: Path) -> None:
    """The real Prometheus scraping a -w 3 service every second, with the repository's rules."""
    from tests.support.alerting import derived_rules
    from tests.support.stack import instant_query, prometheus_server

    rules = derived_rules()
    with gunicorn(tmp_path, worker_class="gthread") as server:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": sorted(rules),
            "scrape_configs": [
                {
                    "job_name": "workers",
                    "honor_labels": True,
                    "static_configs": [{"targets": [server.url.removeprefix("http://")]}],
                }
            ],
        }
        with prometheus_server(config, extra_files=rules) as prometheus:
            sent = {"n": 0}

            def traffic(seconds: float, fail_every: int) -> None:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    sent["n"] += 1
                    path = "/fail" if sent["n"] % fail_every == 0 else "/ok"
                    requests.get(f"{server.url}{path}", timeout=10)
                    time.sleep(0.01)

            def alerts() -> list[dict]:
                return instant_query(prometheus, 'ALERTS{alertname="HighErrorRatio",service="workers"}')["result"]

            wait_until(lambda: instant_query(prometheus, "up")["result"], 20, "a first scrape")
            healthy_until = time.monotonic() + 9  # longer than the rule's derived `for` (5 s)
            while time.monotonic() < healthy_until:
                traffic(0.5, fail_every=50)  # 2%: under the 5% threshold
                assert alerts() == [], "quiet under healthy load"
            total = 'sum(http_server_request_duration_seconds_count{service="workers",route=~"/ok|/fail"})'

            def stored() -> float:
                return float(instant_query(prometheus, total)["result"][0]["value"][1])

            wait_until(lambda: stored() == sent["n"], 10, f"Prometheus' count to equal the {sent['n']} requests sent")
            resets = instant_query(prometheus, "sum(resets(http_server_request_duration_seconds_count[1m]))")
            assert float(resets["result"][0]["value"][1]) == 0, "no scrape looked like a counter reset"

            def firing() -> bool:
                traffic(0.5, fail_every=2)  # 50%
                return any(a["metric"]["alertstate"] == "firing" for a in alerts())

            wait_until(firing, 40, "HighErrorRatio firing", interval=0)


def _shipper(text: str, name: str, reason: str | None = None) -> float:
    """A shipper figure of the service in a scrape (summed over the lines that match)."""
    labels = f'reason="{reason}",service="workers"' if reason else 'service="workers"'
    pattern = re.compile(rf"^loki_shipper_{name}(?:_total)?\{{{re.escape(labels)}\}} (\S+)", re.M)
    return sum(float(v) for v in pattern.findall(text))


@pytest.mark.parametrize("ending", ["killed", "stopped"])
def test_lines_a_killed_worker_held_are_counted_and_a_stopped_one_counts_its_own(tmp_path: Path, ending: str) -> None:
    """Loki answers no push: the workers hold their lines. SIGKILLed, a worker cannot count them;
    the server does, from its last sample (``worker_lost``). Stopped (SIGTERM), a worker closes its
    shipper, which counts what it could not send itself: nothing is counted twice."""
    from fakes import FakeLoki

    with FakeLoki(default="stall") as loki:
        env = {"LOKI_URL": loki.url, "LOKI_FLUSH_TIMEOUT_SECONDS": "0.5", "LOKI_TIMEOUT_SECONDS": "30"}
        with gunicorn(tmp_path, env=env) as server:
            for _ in range(30):
                assert requests.get(f"{server.url}/ok", timeout=10).status_code == 200
            held = 0.0

            def sampled() -> bool:  # every worker's last sample holds its lines (a second at most)
                nonlocal held
                held = _shipper(server.scrape(), "buffered_lines")
                return held >= 30

            try:
                wait_until(sampled, 30, "the workers' buffered lines sampled")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc} (held {held}): {server.output.read_text(errors='replace')[-2000:]}"
                ) from None
            time.sleep(1.2)  # a last sample of the scraping worker too (its scrape's lines are quiet)
            held = _shipper(server.scrape(), "buffered_lines")
            victims = server.workers()
            for pid in victims:
                os.kill(pid, signal.SIGKILL if ending == "killed" else signal.SIGTERM)
            wait_until(lambda: not set(victims) & set(server.workers()) and len(server.workers()) == 3, 30, "respawn")
            text = server.scrape()
            lost = _shipper(text, "dropped_lines", "worker_lost")
            closed = _shipper(text, "dropped_lines", "shutdown") + _shipper(
                text, "dropped_lines", "shutdown_unconfirmed"
            )
        loki.release_stalled()
    if ending == "killed":
        assert lost == held, (lost, held)
    else:
        assert lost == 0 and closed >= 30, (lost, closed, held)
