"""demo.loadgen against a fake gateway on loopback: pacing, counting, spikes, clean stop."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import loadgen, spike
from fakes import LoopbackServer, QuietHandler, free_port, wait_until

pytestmark = pytest.mark.process


class FakeGateway:
    """POST /checkout counts requests and fails every other one while error_rate > 0 (with an
    X-Correlation-ID header, like the real edge); POST /admin/faults records each setting."""

    def __init__(self) -> None:
        self.checkouts = 0
        self.fault_posts: list[float] = []
        self.fault_auth: list[str | None] = []
        self.error_rate = 0.0
        self.lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.read_body() or b"{}")
                if self.path == "/admin/faults":
                    with fake.lock:
                        fake.error_rate = float(body["error_rate"])
                        fake.fault_posts.append(fake.error_rate)
                        fake.fault_auth.append(self.headers.get("Authorization"))
                    self.reply(200, {"error_rate": fake.error_rate})
                elif self.path == "/checkout":
                    assert body["items"], body
                    with fake.lock:
                        fake.checkouts += 1
                        n, failing = fake.checkouts, fake.error_rate > 0
                    status = 500 if failing and n % 2 else 201
                    self.reply(status, {}, headers={"X-Correlation-ID": f"id{n:04d}"})
                else:
                    self.reply(404, {})

        self.server = LoopbackServer(Handler)
        self.url = self.server.url


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway()
    with fake.server:
        yield fake


def settings(gateway: FakeGateway, **overrides: object) -> loadgen.LoadSettings:
    base = dict(
        gateway_url=gateway.url,
        fault_url=gateway.url,
        rate=40.0,
        duration=1.0,
        progress_every=0.25,
        timeout=2.0,
        workers=4,
    )
    base.update(overrides)
    return loadgen.LoadSettings(**base)  # type: ignore[arg-type]


def test_steady_run_is_paced_bounded_and_counted(gateway: FakeGateway) -> None:
    out = io.StringIO()
    stats = loadgen.run(settings(gateway), out=out)
    # 40/s for 1 s: the first request goes at t=0, so 40 or 41; allow for a slow machine.
    assert 30 <= stats.sent <= 42, stats
    assert stats.sent == gateway.checkouts == stats.ok
    assert stats.server_errors == stats.failed == 0
    assert gateway.fault_posts == [], "steady traffic never touches faults"
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("loadgen at ") for line in lines) >= 2, lines
    assert lines[-1].startswith("loadgen done ") and f"sent={stats.sent}" in lines[-1]


def test_spike_flips_faults_on_and_off_and_resets_at_exit(gateway: FakeGateway) -> None:
    out = io.StringIO()
    stats = loadgen.run(
        settings(gateway, scenario="spike", duration=1.6, spike_after=0.3, spike_seconds=0.4, spike_error_rate=0.5),
        out=out,
    )
    # Reset at start, then cycles of calm 0.3 s / spike 0.4 s, and 0 again at exit.
    assert gateway.fault_posts[:4] == [0.0, 0.5, 0.0, 0.5], gateway.fault_posts
    assert gateway.fault_posts[-1] == 0.0 and gateway.error_rate == 0.0
    assert stats.server_errors > 0 and stats.ok > 0
    assert stats.last_failed_id.startswith("id"), "the failed request's correlation ID is kept"
    assert f"last_failed={stats.last_failed_id}" in out.getvalue().splitlines()[-1]


def test_the_fault_switch_sends_the_token_its_file_holds_when_it_acts(gateway: FakeGateway, tmp_path: Path) -> None:
    """Compose writes the token (stack-secrets) while the load generator may already run."""
    token_file = tmp_path / "token"
    out = io.StringIO()
    switch = spike.FaultSwitch(gateway.url, "payments", 2.0, out, token_file=str(token_file))
    assert not switch.set(0.5, force=True), "no token yet: not applied, said, retried later"
    assert "could not set payments error_rate=0.5" in out.getvalue() and gateway.fault_posts == []
    token_file.write_text("t0k3n\n")
    assert switch.set(0.5, force=True) and switch.set(0.0, force=True)
    assert gateway.fault_auth == ["Bearer t0k3n", "Bearer t0k3n"]
    s = loadgen.parse_args([], env={"LOADGEN_FAULT_TOKEN_FILE": str(token_file), "LOADGEN_FAULT_TOKEN": ""})
    assert (s.fault_token_file, s.fault_token) == (str(token_file), "")
    assert "t0k3n" not in repr(loadgen.parse_args([], env={"LOADGEN_FAULT_TOKEN": "t0k3n"}))


def test_unreachable_gateway_is_counted_not_fatal() -> None:
    port = free_port()  # nothing listens there
    stats = loadgen.run(
        loadgen.LoadSettings(
            gateway_url=f"http://127.0.0.1:{port}", rate=20, duration=0.5, progress_every=1, timeout=1
        ),
        out=io.StringIO(),
    )
    assert stats.sent == stats.failed > 0


def test_stop_event_ends_an_unbounded_run(gateway: FakeGateway) -> None:
    stop = threading.Event()
    result: list[loadgen.Stats] = []
    runner = threading.Thread(
        target=lambda: result.append(
            loadgen.run(
                settings(gateway, duration=0.0, scenario="spike", spike_after=0.0, spike_seconds=60),
                out=io.StringIO(),
                stop=stop,
            )
        )
    )
    runner.start()
    wait_until(lambda: gateway.checkouts >= 5, 10, "five checkouts")
    assert gateway.error_rate == 0.5, "the spike is on"
    stop.set()
    runner.join(timeout=10)
    assert not runner.is_alive() and result
    assert gateway.error_rate == 0.0, "stopping resets the fault"


@pytest.mark.parametrize(
    "elapsed, expected",
    [(0.0, False), (9.9, False), (10.0, True), (14.9, True), (15.0, False), (25.0, True)],
)
def test_spike_cycle(elapsed: float, expected: bool) -> None:
    assert spike.spike_active(elapsed, after=10, length=5) is expected


def test_flags_env_and_defaults() -> None:
    s = loadgen.parse_args([], env={})
    assert (s.rate, s.scenario, s.fault_service, s.fault_url) == (5.0, "steady", "payments", "http://localhost:8082")
    env = {
        "LOADGEN_RATE": "7",
        "LOADGEN_SCENARIO": "spike",
        "LOADGEN_FAULT_URL": "http://payments:8082",
        "LOADGEN_SPIKE_AFTER": "30",
        "LOADGEN_GATEWAY_URL": "http://gateway:8080/",
    }
    s = loadgen.parse_args([], env=env)
    assert (s.rate, s.scenario, s.fault_url, s.spike_after, s.gateway_url) == (
        7.0,
        "spike",
        "http://payments:8082",
        30.0,
        "http://gateway:8080",
    )
    s = loadgen.parse_args(["--rate", "2", "--fault-service", "inventory"], env={"LOADGEN_RATE": "7"})
    assert (s.rate, s.fault_url) == (2.0, "http://localhost:8083")


@pytest.mark.parametrize(
    "argv", [["--rate", "0"], ["--spike-error-rate", "1.5"], ["--scenario", "chaos"], ["--workers", "0"]]
)
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        loadgen.parse_args(argv, env={})
