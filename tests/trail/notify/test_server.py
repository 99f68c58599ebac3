"""The notifier's door (trail.notify.server, trail.notify.auth, trail.notify.links): forged, oversized,
malformed and slow requests are refused with their reason and counted; nothing they carry is
notified, and links point only where the notifier is configured to link."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from correlation.settings import ConfigError, LokiSettings
from fakes import LoopbackServer, wait_until
from tests.trail.notify.test_notifier import GRAFANA, TRAIL_WEB, alert, payload
from trail.notify.auth import NotifyAuth
from trail.notify.links import LinkBases
from trail.notify.notifier import NotifySettings, build, main
from trail.notify.server import HttpLimits

pytestmark = pytest.mark.unit  # the tests waiting on real time say process

TOKEN = "s3cret-token-for-tests"
JSON = {"Content-Type": "application/json"}
BEARER = {**JSON, "Authorization": f"Bearer {TOKEN}"}


@dataclass
class Door:
    url: str
    out: io.StringIO
    notifier: Any

    def post(self, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(self.url + "/alerts", data=data, headers=BEARER if headers is None else headers, timeout=5)

    def refused(self) -> dict[str, int]:
        intake: dict[str, Any] = requests.get(self.url + "/healthz", timeout=5).json()["intake"]
        return {reason: count for reason, count in intake["refused"].items() if count}

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


@contextmanager
def door(auth: NotifyAuth | None = None, limits: HttpLimits | None = None) -> Iterator[Door]:
    """A notifier on loopback (no Loki: links only) that wants ``auth`` (default: the bearer TOKEN)."""
    settings = NotifySettings(
        port=0,
        grafana_url=GRAFANA,
        trail_web_url=TRAIL_WEB,
        auth=auth if auth is not None else NotifyAuth(token=TOKEN),
        limits=limits or HttpLimits(),
    )
    out = io.StringIO()
    server, notifier = build(settings, LokiSettings(url=""), out=out)
    with LoopbackServer(server) as loopback:
        try:
            yield Door(loopback.url, out, notifier)
        finally:
            notifier.close(timeout=2)


def raw(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is on a fresh connection; everything the notifier answers before closing."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_all(sock)


def _read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def head(length: int | None, *extra: str) -> bytes:
    lines = ["POST /alerts HTTP/1.1", "Host: notify", "Content-Type: application/json"]
    lines.append(f"Authorization: Bearer {TOKEN}")
    lines += [f"Content-Length: {length}"] if length is not None else []
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


# --- who may post --------------------------------------------------------------------------------


def test_posts_without_the_credentials_are_refused_and_nothing_is_notified() -> None:
    with door() as d:
        for headers in (JSON, {**JSON, "Authorization": "Bearer wrong"}, {**JSON, "Authorization": f"Basic {TOKEN}"}):
            answer = d.post(payload(alert("resolved")), headers)
            assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), headers
        # What was received and sent is not for strangers either; health and runbooks are.
        assert requests.get(d.url + "/alerts", timeout=5).status_code == 401
        assert requests.get(d.url + "/notifications", timeout=5).status_code == 401
        assert d.refused() == {"unauthorized": 5}
        assert d.post(payload(alert("resolved"))).json() == {"received": 1, "notifying": 1, "repeats": 0}
        wait_until(d.lines, 5, "the authorised alert's notification")
        assert requests.get(d.url + "/alerts", headers=BEARER, timeout=5).status_code == 200
    assert [note["status"] for note in d.lines()] == ["resolved"], "only the authorised post is notified"


def test_basic_auth_as_alertmanager_sends_it() -> None:
    with door(NotifyAuth(username="alertmanager", password="pw:with:colons")) as d:
        good = base64.b64encode(b"alertmanager:pw:with:colons").decode()
        bad = base64.b64encode(b"alertmanager:pw").decode()
        assert d.post(payload(alert()), {**JSON, "Authorization": f"Basic {bad}"}).status_code == 401
        assert d.post(payload(alert()), {**JSON, "Authorization": "Basic %%%"}).status_code == 401
        assert d.post(payload(alert()), {**JSON, "Authorization": f"Basic {good}"}).status_code == 200


def test_a_browser_form_or_text_post_is_refused() -> None:
    """A page on any site can make a browser POST text/plain or a form without a CORS preflight."""
    with door(NotifyAuth()) as d:  # no credentials: the content type alone must stop it
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            answer = d.post(payload(alert()), {"Content-Type": content_type})
            assert answer.status_code == 415 and "application/json" in answer.json()["error"], content_type
        assert d.post(payload(alert()), {"Content-Type": "application/json; charset=utf-8"}).status_code == 200
        assert d.refused() == {"content_type": 3}


def test_settings_read_credentials_from_files_and_refuse_contradictions(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert NotifySettings.from_env({"NOTIFY_AUTH_TOKEN_FILE": str(token_file)}).auth == NotifyAuth(token=TOKEN)
    password_file = tmp_path / "password"
    password_file.write_text("pw\n")
    basic = NotifyAuth.from_env({"NOTIFY_AUTH_USERNAME": "am", "NOTIFY_AUTH_PASSWORD_FILE": str(password_file)})
    assert (basic.username, basic.password) == ("am", "pw")
    for env, message in (
        ({"NOTIFY_AUTH_TOKEN": "x", "NOTIFY_AUTH_TOKEN_FILE": str(token_file)}, "either NOTIFY_AUTH_TOKEN or"),
        ({"NOTIFY_AUTH_TOKEN_FILE": str(tmp_path / "missing")}, "cannot be read"),
        ({"NOTIFY_AUTH_USERNAME": "am"}, "must be set together"),
        ({"NOTIFY_AUTH": "none", "NOTIFY_AUTH_TOKEN": "x"}, "contradicts"),
        ({"NOTIFY_AUTH": "off"}, "NOTIFY_AUTH="),
        ({"NOTIFY_MAX_ALERTS": "0"}, "NOTIFY_MAX_ALERTS="),
        ({"NOTIFY_READ_SECONDS": "-1"}, "NOTIFY_READ_SECONDS="),
    ):
        with pytest.raises(ConfigError, match=message):
            NotifySettings.from_env(env)


def test_it_will_not_listen_beyond_loopback_without_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("NOTIFY_AUTH", "NOTIFY_AUTH_TOKEN", "NOTIFY_AUTH_TOKEN_FILE", "NOTIFY_AUTH_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "lets anyone who reaches it post alerts" in capsys.readouterr().err
    NotifyAuth(open_ok=True).check_listen("0.0.0.0")  # NOTIFY_AUTH=none: said, so allowed
    NotifyAuth(token="t").check_listen("0.0.0.0")
    NotifyAuth().check_listen("127.0.0.1")


# --- how much -------------------------------------------------------------------------------------


def test_too_many_alerts_in_one_body_are_refused_whole() -> None:
    """15k alerts fit in 1 MiB: enough to fill the delivery queue from one forged body."""
    with door(limits=HttpLimits(max_alerts=5)) as d:
        many = payload(*[alert(service=f"s{i}") for i in range(6)])
        answer = d.post(many)
        assert answer.status_code == 413 and "6 in one body, at most 5" in answer.json()["error"]
        assert d.post(payload(*[alert(service=f"s{i}") for i in range(5)])).status_code == 200
        assert d.refused() == {"too_many_alerts": 1}


def test_alerts_alertmanager_left_out_are_counted() -> None:
    with door() as d:
        cut = {**payload(alert()), "truncatedAlerts": 7}
        assert d.post(cut).status_code == 200
        assert requests.get(d.url + "/healthz", timeout=5).json()["intake"]["truncated_alerts"] == 7


def test_a_body_over_the_cap_or_without_a_length_is_refused_unread() -> None:
    with door() as d:
        # Only the head is sent: the answer comes without the notifier waiting for 2 MiB.
        answer = raw(d.url, head(2 * 1024 * 1024))
        assert answer.startswith(b"HTTP/1.0 413") and b"at most 1048576" in answer
        answer = raw(d.url, head(None) + b"{}")
        assert answer.startswith(b"HTTP/1.0 411")
        assert d.refused() == {"too_large": 1, "no_length": 1}


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"version": "4", "alerts": [' + b'{"a": ' * 50_000,
        b'{"version": "4", "alerts": [{"status": "firing", "labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}",
    ],
    ids=["brackets", "objects-in-alerts", "deep-but-closed"],
)
def test_json_nested_too_deeply_gets_a_400_not_a_dropped_connection(body: bytes) -> None:
    with door() as d:
        answer = d.post(body)
        assert answer.status_code == 400, answer.text
        assert "not an Alertmanager webhook payload" in answer.json()["error"]
        assert d.refused() == {"bad_payload": 1}
        assert requests.get(d.url + "/healthz", timeout=5).status_code == 200, "still serving"
    assert d.lines() == []


# --- how slowly -----------------------------------------------------------------------------------


@pytest.mark.process
def test_a_slow_client_is_cut_off_at_one_deadline_for_the_whole_request() -> None:
    """A byte every 0.1 s never lets a per-read timeout of 0.5 s fire; the request's deadline does."""
    with door(limits=HttpLimits(read_seconds=0.5)) as d:
        host, port = d.url.removeprefix("http://").split(":")
        body = json.dumps(payload(alert())).encode()
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head(len(body)))
            try:
                for byte in body[:30]:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass  # the notifier may close first: that is the point
            answer = _read_all(sock)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.0 408"), answer[:80]
        assert took < 3.0, f"held for {took:.1f} s"
        # Nothing at all: cut off too, without an answer (there was no request to answer).
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            assert _read_all(sock) == b""
        wait_until(lambda: d.refused() == {"timeout": 2}, 5, "both timeouts counted")
        assert d.lines() == []


@pytest.mark.process
def test_idle_connections_beyond_the_cap_are_closed_and_the_door_reopens() -> None:
    with door(limits=HttpLimits(read_seconds=1.0, max_connections=2)) as d:
        host, port = d.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
        try:
            wait_until(lambda: raw(d.url, head(2)) == b"", 5, "a third connection refused while two are held")
            assert d.notifier.intake_stats()["refused"]["busy"] >= 1
        finally:
            for sock in idle:
                sock.close()
        # Once the held ones time out or leave, requests are served again.
        wait_until(lambda: requests.get(d.url + "/healthz", timeout=5).ok, 5, "the door to reopen")


# --- where links may point ------------------------------------------------------------------------


def test_links_outside_the_configured_addresses_are_dropped_and_named() -> None:
    forged = alert()
    forged["labels"]["grafana_url"] = "http://grafana.evil.test:3000"
    forged["annotations"]["runbook_url"] = "https://evil.test/alerts/runbooks/HighErrorRatio.md"
    forged["annotations"]["dashboard_url"] = f"{GRAFANA}@evil.test/d/x"
    with door() as d:
        assert d.post(payload(forged)).status_code == 200
        (note,) = wait_until(d.lines, 5, "the notification")
        stats = requests.get(d.url + "/healthz", timeout=5).json()["intake"]
    assert note["runbook_url"] is None and note["dashboard_url"] is None
    assert note["logs_url"].startswith(GRAFANA + "/explore?"), "links under the configured Grafana stay"
    assert note["dropped_links"] == ["dashboard_url", "runbook_url"]
    assert "evil" not in note["text"] and "Links dropped" in note["text"]
    assert stats["links_dropped"] == 2


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://localhost:3000/d/x", True),
        ("http://LOCALHOST:3000", True),
        ("http://localhost:3000@evil.test/", False),
        ("http://localhost:3001/", False),
        ("https://localhost:3000/", False),
        ("http://git.example.test/team/repo/blob/main/alerts/runbooks/X.md", True),
        ("http://git.example.test/team/repo-evil/x", False),
        ("http://git.example.test/other", False),
        ("https://grafana.example.test/grafana/explore", True),
        ("https://grafana.example.test:443/grafana", True),
        ("javascript:alert(1)", False),
        ("http://[::1", False),
    ],
)
def test_a_link_is_allowed_only_under_a_base(url: str, allowed: bool) -> None:
    bases = LinkBases(
        "http://localhost:3000", "http://git.example.test/team/repo/", "https://grafana.example.test/grafana"
    )
    assert bases.allows(url) is allowed
