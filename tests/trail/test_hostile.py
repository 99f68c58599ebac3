"""Hostile input against the trail page, the ``trail`` CLI and the notifier's root cause (issue 22,
items 3, 4 and 6): windows too long or not numbers at all, lines whose fields cannot be true,
trails stuffed with lines, and text that would fake or reorder what is shown. Anyone who can push
to Loki (``auth_enabled: false``) can write such lines under any ID; none of them may crash a
page (500), the CLI (a traceback) or the notifier's finding. Property tests over arbitrary lines:
tests/trail/test_properties.py."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import flask.testing
import pytest

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import ConfigError, LokiSettings
from fakes import FakeLoki
from fakes.trail_lines import GATEWAY, INVENTORY, ORDERS, PAYMENTS, checkout_lines, log_line, push_all
from trail.cli.main import main
from trail.loki_query import LokiQueryClient
from trail.notify.finding import FOUND, TrailReader
from trail.notify.message import build_notification
from trail.notify.payload import AlertEvent
from trail.text import clean
from trail.web.app import TrailWebSettings, create_app

pytestmark = pytest.mark.unit

S = 1_000_000_000
MS = 1_000_000
T0 = 1_750_000_000_000 * MS  # the time inside CID
CID = new_correlation_id(now_ms=T0 // MS)
GRAFANA = "http://grafana.example.test:3000"
#: A right-to-left override, a line separator and a zero-width space: each would fake or hide text.
SPOOF = "paid\u202e\u2028fake row\u200b"
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``Infinity`` and ``NaN``: what strict readers (jq, browsers) do."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def unsafe_characters(text: str) -> set[str]:
    """Characters that must never reach a terminal, page or chat from a line (newlines are ours)."""
    return {ch for ch in text if ch != "\n" and unicodedata.category(ch) in UNSAFE_CATEGORIES}


def web_for(loki: FakeLoki, **limits: Any) -> flask.testing.FlaskClient:
    settings = TrailWebSettings(LokiSettings(url=loki.url, timeout_seconds=5.0), grafana_url=GRAFANA, **limits)
    return create_app(settings).test_client()


@pytest.fixture
def web(loki: FakeLoki) -> flask.testing.FlaskClient:
    return web_for(loki)


@pytest.fixture
def cli_env(loki: FakeLoki, monkeypatch: pytest.MonkeyPatch) -> FakeLoki:
    monkeypatch.setenv("LOKI_URL", loki.url)
    monkeypatch.delenv("TRAIL_MAX_WINDOW", raising=False)
    monkeypatch.delenv("TRAIL_MAX_LINES", raising=False)
    return loki


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI expecting argparse's exit 2; its message (no traceback)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    return err


# -- item 3: windows ------------------------------------------------------------------------------
HOSTILE_SINCE = ["inf", "-inf", "nan", "1e300", "9" * 60, "700h", "25h", "2d"]


@pytest.mark.parametrize("since", HOSTILE_SINCE)
@pytest.mark.parametrize("route", ["t", "go"])
def test_page_refuses_a_bad_or_long_since_with_a_400_naming_the_limit(
    loki: FakeLoki, web: flask.testing.FlaskClient, since: str, route: str
) -> None:
    response = web.get(f"/{route}/{CID}?since={since}")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    text = response.get_data(as_text=True)
    assert "bad time window" in text
    if since in ("700h", "25h", "2d"):
        assert "longer than the maximum 24h" in text and "TRAIL_MAX_WINDOW" in text
    assert loki.queries == []


@pytest.mark.parametrize(
    "query",
    [
        "from=0",  # 1970 to now: 56 years
        "from=1750000000&to=1750200000",  # 55 h
        "from=2025-06-15T00:00:00Z&to=2025-06-16T00:00:01Z",  # a second over 24 h
        "to=0&since=1h",  # starts before 1970
        "from=9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
        "to=1e300",
    ],
)
def test_page_refuses_other_bad_windows_before_any_query(
    loki: FakeLoki, web: flask.testing.FlaskClient, query: str
) -> None:
    response = web.get(f"/t/{CID}?{query}&format=json")
    assert response.status_code == 400 and strict_json(response.get_data())["error"] == "Bad request"
    assert loki.queries == []


def test_the_window_maximum_is_configurable(loki: FakeLoki) -> None:
    env = {"LOKI_URL": loki.url}
    assert TrailWebSettings.from_env(env).max_window_seconds == 24 * 3600
    assert TrailWebSettings.from_env({**env, "TRAIL_MAX_WINDOW": "48h"}).max_window_seconds == 48 * 3600
    for bad in ("inf", "nan", "0", "-1h", "forever", "1e300"):
        with pytest.raises(ConfigError, match="TRAIL_MAX_WINDOW"):
            TrailWebSettings.from_env({**env, "TRAIL_MAX_WINDOW": bad})
    web = web_for(loki, max_window_seconds=48 * 3600.0)
    assert web.get(f"/t/{CID}?since=30h").status_code == 404  # searched, found nothing
    (query,) = loki.queries
    assert query.end - query.start == 30 * 3600 * S
    refused = web.get(f"/t/{CID}?since=49h").get_data(as_text=True)
    assert "longer than the maximum 48h" in refused and len(loki.queries) == 1


@pytest.mark.parametrize("since", HOSTILE_SINCE)
def test_cli_refuses_a_bad_or_long_since_with_exit_2(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    err = usage_error(capsys, CID, "--since", since)
    assert "--since" in err or "--max-window" in err
    if since in ("700h", "25h", "2d"):
        assert "longer than the maximum 24h" in err and "--max-window" in err and "TRAIL_MAX_WINDOW" in err
    err = usage_error(capsys, "--last-error", "--since", since)
    assert cli_env.queries == []


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--from", "0"], "longer than the maximum 24h"),
        (["--from", "1750000000", "--to", "1750200000"], "longer than the maximum 24h"),
        (["--to", "0"], "before 1970"),
        (["--max-request-seconds", "inf"], "must be a number > 0"),
        (["--max-request-seconds", "nan"], "must be a number > 0"),
        (["--max-request-seconds", "1e300"], "half the window maximum"),
        (["--max-window", "inf"], "too long"),
        (["--max-window", "nan"], "not a duration"),
        (["--max-lines", "0"], "between 1 and"),
        (["--max-lines", "10" * 30], "between 1 and"),
        (["--max-lines", "many"], "not an integer"),
    ],
)
def test_cli_refuses_other_bad_limits_with_exit_2(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert says in usage_error(capsys, CID, *argv)
    assert cli_env.queries == []


def test_cli_window_maximum_from_the_flag_or_the_environment(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, CID, "--since", "30h", "--max-window", "48h")[0] == 1  # searched, nothing found
    assert cli_env.queries[-1].end - cli_env.queries[-1].start == 30 * 3600 * S
    monkeypatch.setenv("TRAIL_MAX_WINDOW", "31h")
    assert run(capsys, CID, "--since", "30h")[0] == 1
    assert "longer than the maximum 31h" in usage_error(capsys, CID, "--since", "32h")
    monkeypatch.setenv("TRAIL_MAX_WINDOW", "forever")
    code, _, err = run(capsys, CID)
    assert code == 2 and "TRAIL_MAX_WINDOW='forever' is not valid" in err
    monkeypatch.setenv("TRAIL_MAX_WINDOW", "24h")
    monkeypatch.setenv("TRAIL_MAX_LINES", "0")
    code, _, err = run(capsys, CID)
    assert code == 2 and "TRAIL_MAX_LINES='0' is not valid" in err
    assert len(cli_env.queries) == 2


# -- item 3: the line cap -------------------------------------------------------------------------
def stuffed(count: int) -> list[tuple[int, dict[str, Any]]]:
    """One hop's ``count`` lines under CID, no access line (so its trail looks incomplete)."""
    return [log_line(CID, GATEWAY, None, "gateway", T0 + i * MS, f"line {i}") for i in range(count)]


def test_page_reads_at_most_the_line_cap_and_says_so(loki: FakeLoki) -> None:
    push_all(loki, stuffed(30))
    web = web_for(loki, max_lines=10)
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    assert 'id="line-cap"' in html and "only the first 10 lines were read" in html and "TRAIL_MAX_LINES" in html
    assert "line 9<" in html and "line 10<" not in html
    # Capped in the narrow window: a wider one would only hold more, so it is not searched.
    assert {(q.start, q.end) for q in loki.queries} == {(loki.queries[0].start, loki.queries[0].end)}
    document = strict_json(web.get(f"/t/{CID}?format=json").get_data())
    assert document["lines_capped"] is True and document["max_lines"] == 10
    assert len(document["hops"][0]["lines"]) == 10
    whole = strict_json(web_for(loki).get(f"/t/{CID}?format=json").get_data())
    assert whole["lines_capped"] is False and len(whole["hops"][0]["lines"]) == 30
    assert "line-cap" not in web_for(loki).get(f"/t/{CID}").get_data(as_text=True)


def test_cli_stops_paging_at_the_line_cap_and_says_so(cli_env: FakeLoki, capsys: pytest.CaptureFixture[str]) -> None:
    push_all(cli_env, stuffed(60))
    code, out, err = run(capsys, CID, "--max-lines", "10", "--page-size", "5")
    assert code == 0 and "only the first 10 lines were read" in err and "--max-lines" in err
    assert "Note: only the first 10 lines were read" in out and "1 hops, 10 lines" in out
    # 11 lines (one more than the cap tells "more") in pages of 5: far fewer than the 12+ pages of all 60.
    assert len(cli_env.queries) <= 4
    code, out, _ = run(capsys, CID, "--max-lines", "10", "--json")
    document = strict_json(out)
    assert (document["lines_capped"], document["max_lines"]) == (True, 10)
    code, out, err = run(capsys, CID, "--max-lines", "60", "--json")
    assert strict_json(out)["lines_capped"] is False and "only the first" not in err


# -- item 4: hostile fields -----------------------------------------------------------------------
#: (field of payments' access line, value): each crashed the page, the CLI or both before.
HOSTILE_FIELDS = [
    (schema.STATUS, "Infinity"),
    (schema.STATUS, float("inf")),  # the bare JSON literal Infinity, which Python's json accepts
    (schema.STATUS, 10**400),  # too large for a float
    (schema.STATUS, 7),
    (schema.DURATION_MS, 1e300),
    (schema.DURATION_MS, "NaN"),
    (schema.DURATION_MS, -5),
    (schema.TIME, "9999-12-31T23:59:59.999999-23:59"),
    (schema.TIME, "0001-01-01T00:00:00+23:59"),
]


def with_hostile_payments_access(field: str, value: Any) -> list[tuple[int, dict[str, Any]]]:
    lines = checkout_lines(CID, T0)
    for _, line in lines:
        if line[schema.REQUEST_ID] == PAYMENTS and line[schema.LOGGER] == schema.ACCESS_LOGGER:
            line[field] = value
    return lines


def push_json_lines(loki: FakeLoki, lines: list[tuple[int, dict[str, Any]]]) -> None:
    """Stage lines as Python's json writes them (``Infinity`` bare, huge integers whole)."""
    for ts_ns, line in lines:
        loki.push(
            ts_ns, json.dumps(line), service=line[schema.SERVICE], correlation_id=CID, request_id=line["request_id"]
        )


@pytest.mark.parametrize("field, value", HOSTILE_FIELDS, ids=lambda v: str(v)[:24])
def test_page_shows_a_hostile_field_as_unknown(
    loki: FakeLoki, web: flask.testing.FlaskClient, field: str, value: Any
) -> None:
    push_json_lines(loki, with_hostile_payments_access(field, value))
    response = web.get(f"/t/{CID}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html[:500]
    assert f"unreadable: {field} (shown as unknown)" in html
    document = strict_json(web.get(f"/t/{CID}?format=json").get_data())
    payments = next(hop for hop in document["hops"] if hop["request_id"] == PAYMENTS)
    assert field in payments["unreadable"]
    if field != schema.TIME:
        assert payments[field] is None  # unknown, never a made-up value
    else:  # Loki's timestamp stands in for the line's own time
        assert payments["start"].startswith("2025-06-15T15:06:40")


@pytest.mark.parametrize("field, value", HOSTILE_FIELDS, ids=lambda v: str(v)[:24])
def test_cli_shows_a_hostile_field_as_unknown(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    push_json_lines(cli_env, with_hostile_payments_access(field, value))
    code, out, err = run(capsys, CID)
    assert code == 0 and "Traceback" not in err
    assert f"unreadable: {field} (shown as unknown)" in out
    code, out, _ = run(capsys, CID, "--json")
    payments = next(hop for hop in strict_json(out)["hops"] if hop["request_id"] == PAYMENTS)
    assert code == 0 and field in payments["unreadable"]
    access = next(line for line in payments["lines"] if line["logger"] == schema.ACCESS_LOGGER)
    if value == float("inf"):  # the line's bare Infinity, kept as text: strict JSON has no such number
        assert access["fields"][field] == "Infinity"


def test_lines_that_are_not_sane_json_stay_text_on_page_and_cli(
    cli_env: FakeLoki, web: flask.testing.FlaskClient, capsys: pytest.CaptureFixture[str]
) -> None:
    push_all(cli_env, checkout_lines(CID, T0))
    meta = {"correlation_id": CID, "request_id": ORDERS}
    cli_env.push(T0 + 6 * MS, "[" * 100_000, service="orders", **meta)  # nests past any recursion limit
    cli_env.push(T0 + 7 * MS, '{"message": ' + "[" * 40 + "]" * 40 + "}", service="orders", **meta)
    cli_env.push(T0 + 8 * MS, '{"message": "lone \\ud800 surrogate", "request_id": "' + ORDERS + '"}', **meta)
    cli_env.push(T0 + 9 * MS, '{"message": 1' + "0" * 4000 + ', "request_id": "' + ORDERS + '"}', **meta)
    response = web.get(f"/t/{CID}")
    assert response.status_code == 200
    assert "lone \\ud800 surrogate" in response.get_data(as_text=True)
    code, out, err = run(capsys, CID)
    assert code == 0 and "lone \\ud800 surrogate" in out and "Traceback" not in err
    code, out, _ = run(capsys, CID, "--json")
    assert code == 0 and strict_json(out)["hops"]


def test_notifier_root_cause_survives_hostile_lines(loki: FakeLoki) -> None:
    """The notifier explains an alert with this code (trail.last_error, root_cause): a hop with
    status "Infinity" made it give up ("could not be read: OverflowError") before."""
    now_ns = time.time_ns()
    start = now_ns - 2 * S
    cid = new_correlation_id(now_ms=start // MS)
    lines = checkout_lines(cid, start)
    for _, line in lines:
        if line[schema.REQUEST_ID] == INVENTORY and line[schema.LOGGER] == schema.ACCESS_LOGGER:
            line[schema.STATUS] = "Infinity"
        if line[schema.REQUEST_ID] == PAYMENTS and line[schema.LOGGER] == schema.ACCESS_LOGGER:
            line[schema.DURATION_MS] = 1e300
        if line[schema.REQUEST_ID] == PAYMENTS and line.get(schema.EXCEPTION):
            line[schema.EXCEPTION] = f"Traceback\nTimeoutError: {SPOOF}"
            line[schema.TIME] = "9999-12-31T23:59:59.999999-23:59"
    push_all(loki, lines)
    event = AlertEvent(
        "firing",
        {"alertname": "HighErrorRatio", "service": "payments", "severity": "critical"},
        {},
        datetime.now(UTC),
        None,
        "fp-hostile",
    )
    reader = TrailReader(LokiQueryClient(LokiSettings(url=loki.url)), budget_seconds=5.0)
    finding = reader.read(event, time.monotonic() + 5.0)
    assert finding.state == FOUND, finding.note
    assert finding.correlation_id == cid and finding.root_cause is not None
    assert (finding.root_cause.request_id, finding.root_cause.status) == (PAYMENTS, 500)
    assert finding.root_cause.duration_ms is None  # 1e300 ms is unknown, not shown as a number
    assert finding.error_type == "TimeoutError" and finding.error_message == SPOOF
    note = build_notification(event, finding, GRAFANA)
    strict_json(json.dumps(note))
    assert all(unsafe_characters(value) == set() for value in strings_in(note))
    assert "paid\\u202e\\u2028fake row\\u200b" in note["text"]


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


# -- item 6: text that spoofs lines ---------------------------------------------------------------
def test_clean_escapes_every_invisible_or_reordering_character() -> None:
    """Every character of Unicode's Cc, Cf, Cs, Zl and Zp categories (as this Python knows them)."""
    unsafe = "".join(chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) in UNSAFE_CATEGORIES)
    assert {"\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069", "\u200b", "\ufeff", "\ud800"} <= set(unsafe)
    cleaned = clean(unsafe)
    assert unsafe_characters(cleaned) == set() and "\n" not in cleaned
    assert clean(SPOOF) == "paid\\u202e\\u2028fake row\\u200b"
    assert clean("plain café → ok") == "plain café → ok"  # visible text is left alone


def spoofing_checkout() -> list[tuple[int, dict[str, Any]]]:
    """Orders' lines missing (so the lookup widens and says why, naming payments' parent) and
    text with bidi, line-separator and zero-width characters in every field shown."""
    lines = [pair for pair in checkout_lines(CID, T0) if pair[1][schema.REQUEST_ID] != ORDERS]
    for _, line in lines:
        line[schema.MESSAGE] = f"{line[schema.MESSAGE]} {SPOOF}"
        if line[schema.REQUEST_ID] == PAYMENTS:
            line[schema.SERVICE] = f"pay{SPOOF}"
            line[schema.PARENT_REQUEST_ID] = f"{ORDERS}{SPOOF}"
    return lines


def test_cli_escapes_spoofing_text_also_in_the_widening_reasons(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    push_all(cli_env, spoofing_checkout())
    code, out, err = run(capsys, CID)
    assert code == 0 and "widened the window once" in err
    assert unsafe_characters(out) == set() and unsafe_characters(err) == set()
    assert f"has no parent {ORDERS}paid\\u202e\\u2028fake row\\u200b" in err
    assert "paid\\u202e\\u2028fake row\\u200b" in out


def test_page_escapes_spoofing_text_also_in_the_widening_reasons(
    loki: FakeLoki, web: flask.testing.FlaskClient
) -> None:
    push_all(loki, spoofing_checkout())
    html = web.get(f"/t/{CID}").get_data(as_text=True)
    assert "so the window was widened once" in html
    assert unsafe_characters(html) == set()
    assert html.count("paid\\u202e\\u2028fake row\\u200b") >= 5


def test_cli_last_error_escapes_the_service_label_it_prints(
    cli_env: FakeLoki, capsys: pytest.CaptureFixture[str]
) -> None:
    now_ns = time.time_ns()
    cid = new_correlation_id(now_ms=(now_ns - 2 * S) // MS)
    for ts_ns, line in checkout_lines(cid, now_ns - 2 * S):
        cli_env.push(ts_ns, line, service=f"{line[schema.SERVICE]}\u202e")
    code, _, err = run(capsys, "--last-error")
    assert code == 0 and "most recent failed request" in err
    assert unsafe_characters(err) == set() and "\\u202e access line" in err
