"""The ``trail`` command against a real Loki (runs only when LOKI_URL is set, e.g. the compose stack).

Pushes one sample checkout through Loki's JSON push API with structured metadata, the way our
shipper does, then follows it with the CLI.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pytest
import requests

from correlation import schema
from correlation.ids import new_correlation_id
from correlation.settings import LokiSettings
from fakes.trail_lines import GATEWAY, INVENTORY, ORDERS, PAYMENTS, checkout_lines, log_line
from trail.cli.main import main

pytestmark = [
    pytest.mark.real_loki,
    pytest.mark.skipif(not os.environ.get("LOKI_URL"), reason="needs a real Loki: set LOKI_URL"),
]

MS = 1_000_000


def push(settings: LokiSettings, lines: list[tuple[int, dict[str, Any]]]) -> None:
    streams: dict[str, dict[str, Any]] = {}
    for ts_ns, line in lines:
        stream = streams.setdefault(
            line["service"], {"stream": {"service_name": line["service"], "env": "trail-test"}, "values": []}
        )
        metadata = {
            "correlation_id": line["correlation_id"],
            "request_id": line["request_id"],
            "level": line["level"].lower(),
        }
        stream["values"].append([str(ts_ns), json.dumps(line), metadata])
    response = requests.post(
        settings.push_url,
        json={"streams": list(streams.values())},
        headers=settings.auth_headers(),
        auth=settings.basic_auth,
        verify=settings.tls_verify,
        timeout=10,
    )
    assert response.status_code // 100 == 2, response.text


def test_trail_of_a_pushed_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    settings = LokiSettings.from_env()
    t0 = time.time_ns() - 2_000 * MS
    cid = new_correlation_id(now_ms=t0 // MS)
    push(settings, checkout_lines(cid, t0))

    document: dict[str, Any] = {}
    deadline = time.monotonic() + 20  # ingestion to queryable is quick, but not instant
    while time.monotonic() < deadline:
        code = main([cid, "--json"])
        out = capsys.readouterr().out
        if code == 0:
            document = json.loads(out)
            if len(document["hops"]) == 4 and document["complete"]:
                break
        time.sleep(1)
    assert document, "the pushed lines never became queryable"
    assert [(h["request_id"], h["depth"], h["service"], h["status"]) for h in document["hops"]] == [
        (GATEWAY, 0, "gateway", 502),
        (ORDERS, 1, "orders", 502),
        (PAYMENTS, 2, "payments", 500),
        (INVENTORY, 2, "inventory", 201),
    ]
    assert sum(len(h["lines"]) for h in document["hops"]) == 11 and document["unknown_lines"] == []
    assert document["widened"] is False  # found in the narrow window around the ID's own time

    assert main([cid]) == 0
    rows = capsys.readouterr().out.split("\n\n")[1].splitlines()[1:]
    assert [len(r) - len(r.lstrip()) for r in rows] == [0, 2, 4, 4]


def test_a_task_name_with_hidden_characters_is_found_through_its_escaped_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """trail writes a bidi override, a zero-width space and a tag character in a task name as
    \\u/\\U escapes (so the printed query shows them); Loki must read them back to the same name."""
    task = f"notify.{uuid.uuid4().hex[:8]}\u202eeciovni\u200b\U000e0001"
    t_run = time.time_ns() - 2_000 * MS
    cid = new_correlation_id(now_ms=t_run // MS)
    fields = {schema.KIND: schema.KIND_TASK, schema.TASK: task, schema.STATE: "failure", schema.STATUS: 500}
    _, line = log_line(cid, "e0000000000000a1", None, "notifications", t_run, "task failure", "ERROR",
                       schema.ACCESS_LOGGER, **fields)  # fmt: skip
    push(LokiSettings.from_env(), [(t_run, line)])
    deadline = time.monotonic() + 20
    code, err = 1, ""
    while time.monotonic() < deadline:
        code = main(["--last-error", "--service", "notifications", "--task", task, "--since", "5m"])
        err = capsys.readouterr().err
        if code == 0:
            break
        time.sleep(1)
    assert code == 0 and f"most recent failed request: {cid}" in err, err
    assert main(["--last-error", "--service", "notifications", "--task", task + "x", "--since", "5m"]) == 1
    assert "\\u202e" in capsys.readouterr().err
