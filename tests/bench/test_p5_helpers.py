"""The P5 scale benchmark's helpers (bench/p5_*.py) build what they claim without a Loki: the
traffic in the shipper's streams (the library's own ``shard_of``), today's query without the shard
selector, and an interpreter that runs the CLI as an installed package (no editable finder)."""

from __future__ import annotations

import gzip
import json
import subprocess
import time

import pytest

from bench import __main__ as bench_main
from bench.p5_lookups import installed_python, today_query
from bench.p5_scale import self_check
from bench.p5_traffic import Span, bodies, ids_at
from correlation import schema
from correlation.ids import shard_of
from trail.logql import trail_query

NS = 1_000_000_000


@pytest.mark.unit
def test_the_traffic_is_in_the_streams_the_shipper_writes() -> None:
    span = Span(600, time.time_ns() - 70 * NS)
    (cid, _), *_ = ids_at(span, (0.5,))
    sharded = [json.loads(gzip.decompress(body)) for body in bodies(span, sharded=True)]
    mine = [s["stream"] for b in sharded for s in b["streams"] if any(cid in v[1] for v in s["values"])]
    assert mine and all(s[schema.SHARD_LABEL] == shard_of(cid) == cid[-1] for s in mine)
    plain = [json.loads(gzip.decompress(body)) for body in bodies(span, sharded=False)]
    assert all(schema.SHARD_LABEL not in s["stream"] for b in plain for s in b["streams"])
    assert "6,000 lines valid for Loki" in self_check()


@pytest.mark.unit
def test_today_is_the_query_before_the_shard_label() -> None:
    cid = "0190a1b2c3d47e8f9a0b1c2d3e4f5a6b"
    assert schema.SHARD_LABEL not in today_query(cid)
    assert today_query(cid).endswith(f'correlation_id="{cid}"')
    assert f'shard=~"{cid[-1]}|"' in trail_query(cid)


@pytest.mark.process
def test_the_cli_runs_as_an_installed_package() -> None:
    """The bare interpreter finds the dependencies but runs no editable-install finder."""
    with installed_python() as python:
        done = subprocess.run(
            [str(python), "-c", "import sys, flask; print(any('editable' in m for m in sys.modules))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.unit
def test_the_default_run_is_short_and_all_adds_the_long_ones() -> None:
    assert "p5scale" not in bench_main.DEFAULT and "p2w" not in bench_main.DEFAULT
    assert set(bench_main.ALL) == set(bench_main.DEFAULT) | {"p2asgi", "p2w", "p2django", "p5scale"}
    assert all(name in bench_main.BENCHMARKS for name in bench_main.ALL)
