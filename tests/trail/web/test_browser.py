"""The trail page in a real browser: headless Chromium (Debian's ``chromium``) loads the page of a
real failed checkout of the demo chain, served by trail-web under gunicorn as compose runs it.

The chain ships to a real Loki when LOKI_URL is set, else to the tests' fake Loki; trail-web reads
from the same one. The checkout carries a hostile ``X-Correlation-ID``, which the gateway refuses
and logs (escaped for a terminal, not for a browser): the page must show that ``<script>`` as text.

Chromium is driven from its command line (``--dump-dom``, ``--screenshot``): no browser download,
no driver. The screenshot lands in the test's temp dir; with TRAIL_PAGE_SCREENSHOT=<path> it is
also copied there (how docs/trail-page.png is made, see docs/testing.md).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from correlation import schema
from fakes import free_port, serving, wait_until
from tests.support import REPO
from tests.support.fake_loki import checked_fake_loki
from tests.support.stack import load_yaml, require_tool

pytestmark = pytest.mark.process

HOSTILE_ID = "<script>alert(1)</script>"
WINDOW = (1200, 900)
CHROMIUM_SECONDS = 60
#: Flags for a headless run that touches nothing but 127.0.0.1 (no sync, updates, QUIC, first-run).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@pytest.fixture(scope="module")
def chain_sink() -> Iterator[Any]:
    """The Loki the chain ships to and trail-web reads: the real one at LOKI_URL, else the fake
    (this overrides conftest's fixture of the same name for this module's ``chain``)."""
    real = os.environ.get("LOKI_URL", "").strip()
    if real:
        yield SimpleNamespace(url=real)
        return
    with checked_fake_loki() as fake:
        yield fake


@pytest.fixture(scope="module")
def trail_web(chain_sink: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """trail-web under gunicorn with the compose service's config, on a free loopback port."""
    command = load_yaml("docker-compose.yml")["services"]["trail-web"]["command"]
    assert command[0] == "gunicorn"
    port = free_port()
    log = tmp_path_factory.mktemp("trail-web") / "gunicorn.log"
    env = {"LOKI_URL": chain_sink.url, "LOKI_TIMEOUT_SECONDS": "5", "TRAIL_WEB_BIND": f"127.0.0.1:{port}"}
    with serving([sys.executable, "-m", *command], f"http://127.0.0.1:{port}", "/healthz", env=env, log=log) as base:
        yield base


@pytest.fixture(scope="module")
def failed_checkout(chain: Any, trail_web: str) -> dict[str, Any]:
    """One checkout that payments fails (error rate 1), sent with a hostile correlation ID; its
    trail document once every hop's lines are queryable."""
    faults = f"{chain.urls['payments']}/admin/faults"
    assert requests.post(faults, json={"error_rate": 1.0}, timeout=5).status_code == 200
    try:
        response = requests.post(
            f"{chain.urls['gateway']}/checkout", json={}, headers={schema.CORRELATION_HEADER: HOSTILE_ID}, timeout=10
        )
    finally:
        requests.post(faults, json={"error_rate": 0.0}, timeout=5)
    assert response.status_code == 502
    correlation_id = response.headers[schema.CORRELATION_HEADER]
    assert correlation_id != HOSTILE_ID

    def whole_trail() -> dict[str, Any] | None:
        answer = requests.get(f"{trail_web}/t/{correlation_id}", params={"format": "json"}, timeout=10)
        document: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
        return document if len(document.get("hops", [])) == 4 and document["complete"] else None

    document: dict[str, Any] = wait_until(whole_trail, 30, "the checkout's four hops in Loki", interval=0.3)
    return document


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class DomReader(HTMLParser):
    """The elements of a serialized DOM with their attributes and text (descendants' included)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text.append(data)

    def having(self, css_class: str) -> list[Element]:
        return [e for e in self.elements if css_class in e.classes]


def chromium(*args: str, profile: Path) -> str:
    """Run headless Chromium once; its stdout."""
    binary = require_tool("chromium")
    proc = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_SECONDS,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_page_of_a_real_failed_checkout_in_chromium(
    trail_web: str, failed_checkout: dict[str, Any], tmp_path: Path
) -> None:
    correlation_id = failed_checkout["correlation_id"]
    url = f"{trail_web}/t/{correlation_id}"
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    page = DomReader()
    page.feed(dom)

    # Every hop is on the page: a bar in the waterfall and a section with its lines.
    hops = {hop["request_id"]: hop for hop in failed_checkout["hops"]}
    rows = page.having("wf-row")
    sections = [e for e in page.having("hop") if e.tag == "section"]
    assert [r.attrs["data-request-id"] for r in rows] == list(hops)  # tree order, as the CLI's
    assert [s.attrs["data-request-id"] for s in sections] == list(hops)
    assert {"".join(r.text).split()[0] for r in rows} == {"gateway", "orders", "payments", "inventory"}

    # The failing hops are marked; the root cause is payments, with the injected fault expanded.
    states = {hops[r.attrs["data-request-id"]]["service"]: r.attrs["data-state"] for r in rows}
    assert states == {"gateway": "failed", "orders": "failed", "payments": "failed", "inventory": "ok"}
    (cause,) = [r for r in rows if "root cause" in "".join(r.text)]
    assert hops[cause.attrs["data-request-id"]]["service"] == "payments"
    payments = next(s for s in sections if hops[s.attrs["data-request-id"]]["service"] == "payments")
    assert "demo.faults.InjectedFault: injected fault" in "".join(payments.text)
    assert any(e.tag == "details" and "open" in e.attrs for e in page.elements), "error lines are expanded"

    # The hostile ID the gateway logged is shown as text, and no script element exists.
    messages = ["".join(e.text) for e in page.having("message")]
    assert any(HOSTILE_ID in message for message in messages), messages
    assert not [e for e in page.elements if e.tag == "script"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom

    # The window used, and the Explore button over it.
    window = page.having("window")[0]
    assert f'correlation_id="{correlation_id}"' in "".join(window.text)
    (explore,) = [e for e in page.elements if e.attrs.get("id") == "explore-link"]
    assert explore.attrs["href"].startswith("http://localhost:3000/explore?")

    screenshot = tmp_path / "trail-page.png"
    chromium(f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url, profile=tmp_path / "p2")
    assert png_size(screenshot) == WINDOW and screenshot.stat().st_size > 20_000
    keep = os.environ.get("TRAIL_PAGE_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, Path(keep) if Path(keep).is_absolute() else REPO / keep)


def test_trail_serve_runs_without_gunicorn(chain_sink: Any, tmp_path: Path) -> None:
    """``trail serve --port``: the same app on Werkzeug's server, for local use."""
    port = free_port()
    env = {"LOKI_URL": chain_sink.url}
    trail = shutil.which("trail", path=str(Path(sys.executable).parent))
    assert trail, "the trail console script is installed next to this Python"
    command = [trail, "serve", "--port", str(port)]
    with serving(command, f"http://127.0.0.1:{port}", "/healthz", env=env, log=tmp_path / "serve.log") as base:
        refused = requests.get(f"{base}/t/bad%20id", timeout=5)
        assert refused.status_code == 400 and "bad_characters" in refused.text
