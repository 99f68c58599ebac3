"""The Django site of the docs' example (tests/support/django_site.py) under gunicorn, as users
deploy it: two workers, sync and gthread, the library's hooks, Django's ``LOGGING`` with the
library's handlers (stdout and a fake Loki). Every answer echoes its ID and the ID travels on
through ``requests`` and httpx; hostile IDs are replaced and counted; error bodies carry the ID;
the access line has the route pattern, a 500 its error_type and origin; every scrape answers the
sum of both workers, with exemplars whose lines were logged."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from correlation import ids, schema
from tests.fakes import FakeLoki, HeaderEcho, LoopbackServer, free_port, raw_request, wait_until
from tests.support.django_site import SERVICE

ROOT = Path(__file__).resolve().parents[1]
HOOKS = "from correlation.integrations.gunicorn import *  # noqa: F403\nlogconfig_dict = gunicorn_logconfig()\n"
CONF = textwrap.dedent("""
    workers = 2
    worker_class = {worker_class!r}
    threads = {threads}
    timeout = {timeout}
    accesslog = None
    control_socket_disable = True
""")
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
_COUNT = re.compile(r"^http_server_request_duration_seconds_count\{([^}]*)\} (\S+)", re.M)
_EXEMPLAR = re.compile(
    r'^http_server_request_duration_seconds_bucket\{[^}]*route="/orders/<int:order_id>"[^}]*\} \S+ '
    r'# \{correlation_id="([^"]+)"\}',
    re.M,
)


@dataclass
class Site:
    url: str
    output: Path
    loki: FakeLoki

    def lines(self) -> list[dict]:
        text = self.output.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def access(self, correlation_id: str) -> dict:
        """The one access line of ``correlation_id``'s request, once it is written."""

        def found() -> list[dict]:
            return [
                line
                for line in self.lines()
                if line.get("logger") == schema.ACCESS_LOGGER and line.get("correlation_id") == correlation_id
            ]

        (line,) = wait_until(found, 10, f"the access line of {correlation_id}")
        return line

    def scrape(self) -> str:
        response = requests.get(f"{self.url}/metrics", headers=OPENMETRICS, timeout=10)
        response.raise_for_status()
        return response.text


def get_order(site: Site, correlation_id: str) -> requests.Response:
    number = correlation_id.rsplit("-", 1)[1]
    return requests.get(f"{site.url}/orders/{number}", headers={"X-Correlation-ID": correlation_id}, timeout=10)


def counted(text: str, route: str) -> float:
    return sum(float(v) for labels, v in _COUNT.findall(text) if f'route="{route}"' in labels)


@contextmanager
def django_under_gunicorn(tmp_path: Path, loki: FakeLoki, worker_class: str, timeout: int = 30) -> Iterator[Site]:
    threads = 4 if worker_class == "gthread" else 1
    (tmp_path / "django_conf.py").write_text(
        HOOKS + CONF.format(worker_class=worker_class, threads=threads, timeout=timeout)
    )
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{tmp_path}:{ROOT}:{ROOT / 'app'}",
        "SERVICE_NAME": SERVICE,
        "LOKI_URL": loki.url,
        "LOKI_BATCH_MAX_WAIT_SECONDS": "0.1",
        "DJANGO_SITE_LOGGING": "docs",  # Django's LOGGING: the docs' example, our handlers
    }
    output = tmp_path / "gunicorn.out"
    command = [sys.executable, "-m", "gunicorn", "--config", "python:django_conf", "--bind", f"127.0.0.1:{port}"]
    with output.open("wb") as log:
        process = subprocess.Popen(
            [*command, "tests.support.django_site:application()"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    site = Site(f"http://127.0.0.1:{port}", output, loki)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(output.read_text(errors="replace")[-3000:])
        try:
            return requests.get(f"{site.url}/pid", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, 30, "gunicorn answering")
        yield site
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_django_under_gunicorn_with_two_workers(tmp_path: Path, loki_sink: FakeLoki, worker_class: str) -> None:
    with django_under_gunicorn(tmp_path, loki_sink, worker_class) as site:
        before = counted(site.scrape(), "/orders/<int:order_id>")
        # Concurrent batches until both workers have answered some (which one accepts a
        # connection is up to the kernel), at most 20 batches.
        sent, pids = 0, set[int]()
        with ThreadPoolExecutor(8) as pool:
            while len(pids) < 2 and sent < 320:
                batch = [f"order-{worker_class}-{sent + i}" for i in range(16)]
                for cid, answer in zip(batch, pool.map(lambda cid: get_order(site, cid), batch), strict=True):
                    assert answer.headers["X-Correlation-ID"] == cid == answer.json()["correlation_id"]
                    pids.add(answer.json()["pid"])
                sent += len(batch)
        assert len(pids) == 2, "both workers answered"
        n = sent

        # Every scrape, whichever worker takes it, answers the sum; exemplars are logged requests.
        scrapes = [site.scrape() for _ in range(4)]
        assert [counted(text, "/orders/<int:order_id>") - before for text in scrapes] == [n] * 4
        exemplars = set(_EXEMPLAR.findall(scrapes[-1]))
        assert exemplars and all(e.startswith(f"order-{worker_class}-") for e in exemplars)
        for exemplar in exemplars:
            assert site.access(exemplar)["route"] == "/orders/<int:order_id>"

        # The ID travels on through requests and httpx.
        with LoopbackServer(HeaderEcho) as echo:
            calls = requests.get(
                f"{site.url}/calls?url={echo.url}/x", headers={"X-Correlation-ID": "calls-1"}, timeout=10
            )
        hop = site.access("calls-1")
        for client in ("requests", "httpx"):
            assert calls.json()[client]["x-correlation-id"] == "calls-1", client
            assert calls.json()[client]["x-parent-request-id"] == hop["request_id"], client

        # A hostile ID is replaced, logged escaped and counted (in the sum over the workers).
        # (gunicorn itself answers 400 to control characters: these get through to the edge.)
        hostile = ['<script>"x"</script>', "x" * 65, "caf\u00e9"]
        for value in hostile:
            status, headers = raw_request(f"{site.url}/orders/9", "GET", [b"X-Correlation-ID: " + value.encode()])
            assert status == 200 and ids.time_of(headers["x-correlation-id"]) is not None, value
        text = site.scrape()
        for reason in {ids.rejection_reason(value) for value in hostile}:
            count = re.search(
                rf'^correlation_rejected_ids_total\{{reason="{reason}",service="{SERVICE}"\}} (\S+)', text, re.M
            )
            assert count and float(count.group(1)) == sum(ids.rejection_reason(v) == reason for v in hostile), reason

        # Errors: the body carries the ID; a 500 names its exception and whose failure it is.
        missing = requests.get(f"{site.url}/nope", headers={"X-Correlation-ID": "nope-1"}, timeout=10)
        assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"
        assert missing.json()["correlation_id"] == "nope-1"
        assert site.access("nope-1")["route"] == schema.UNMATCHED_ROUTE
        failed = requests.get(f"{site.url}/fail", headers={"X-Correlation-ID": "fail-1"}, timeout=10)
        assert failed.status_code == 500 and failed.json()["correlation_id"] == "fail-1"
        line = site.access("fail-1")
        assert line["route"] == "/fail" and line["origin"] == schema.ORIGIN_SELF
        assert line["error_type"] == "tests.support.django_site.OrderLost"

        # Django's LOGGING of the docs' example ships to Loki, the ID in structured metadata.
        def shipped(entries: list) -> bool:
            return any(e.metadata.get("correlation_id") == "fail-1" and "OrderLost" in e.line for e in entries)

        entries = loki_sink.wait_for(shipped)
        django_line = next(e for e in entries if e.json.get("logger") == "django.request")
        assert django_line.labels["service_name"] == SERVICE
        assert "unrecognised" not in site.output.read_text(errors="replace")


def test_a_worker_killed_for_a_timeout_writes_the_requests_route(tmp_path: Path, loki_sink: FakeLoki) -> None:
    with django_under_gunicorn(tmp_path, loki_sink, "sync", timeout=2) as site:
        try:  # the worker dies mid-request: no answer, or whatever gunicorn sends then
            requests.get(f"{site.url}/slow", headers={"X-Correlation-ID": "slow-1"}, timeout=15)
        except requests.RequestException:
            pass
        line = site.access("slow-1")
        assert line["status"] == 500 and line["route"] == "/slow" and "worker timeout" in line["message"]
