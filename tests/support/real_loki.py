"""A real Loki for the tests that need one, and how they skip without it.

- ``LOKI_BIN`` (a Loki 3.7 binary): :func:`real_loki` starts loki/loki.yaml, the compose stack's
  config, as one Loki process of the test's own on 127.0.0.1; only its addresses and directories
  change. Nothing else writes to it, so every line in it is the test's.
- else ``LOKI_URL``: a Loki already running (the compose stack's, or one started by hand), which
  other runs may share.
- neither: :data:`needs_real_loki` skips the test, saying how to run it.

Everything listens on 127.0.0.1; every wait is a poll with a deadline; the Loki started here is
stopped here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes import free_port
from tests.support import REPO
from tests.support.replicas import LOKI_READY_SECONDS, Server

LOKI_BIN = os.environ.get("LOKI_BIN", "")
LOKI_URL = os.environ.get("LOKI_URL", "")
#: The marks of a test that needs a real Loki: its tier, and the skip when there is none.
needs_real_loki = [
    pytest.mark.real_loki,
    pytest.mark.skipif(
        not (LOKI_BIN or LOKI_URL),
        reason="needs a real Loki: set LOKI_BIN to a Loki 3.7 binary (the test starts loki/loki.yaml) "
        "or LOKI_URL to a running one",
    ),
]
#: Where loki/loki.yaml keeps its data in the container; every such path moves under the test's root.
CONTAINER_DATA = "/loki"


def single_loki_config(root: Path, http_port: int, grpc_port: int) -> dict[str, Any]:
    """loki/loki.yaml with only the addresses (127.0.0.1 and the given ports) and the data
    directories (under ``root``) changed."""
    config: dict[str, Any] = yaml.safe_load((REPO / "loki/loki.yaml").read_text())
    server = config["server"]
    assert (server["http_listen_port"], server["grpc_listen_port"]) == (3100, 9096), "loki.yaml's ports moved"
    server.update(
        http_listen_address="127.0.0.1",
        http_listen_port=http_port,
        grpc_listen_address="127.0.0.1",
        grpc_listen_port=grpc_port,
    )
    assert config["common"]["instance_addr"] == "127.0.0.1"

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: moved(item) for key, item in value.items()}
        if isinstance(value, list):
            return [moved(item) for item in value]
        if isinstance(value, str) and (value == CONTAINER_DATA or value.startswith(CONTAINER_DATA + "/")):
            return str(root) + value[len(CONTAINER_DATA) :]
        return value

    derived: dict[str, Any] = moved(config)
    assert derived["common"]["path_prefix"] == str(root), "loki.yaml keeps its data elsewhere now"
    return derived


@contextmanager
def real_loki(root: Path) -> Iterator[str]:
    """A real Loki's base URL: one started from ``LOKI_BIN`` (stopped at the end), else ``LOKI_URL``."""
    if not LOKI_BIN:
        assert LOKI_URL, "guard the test with needs_real_loki"
        yield LOKI_URL.rstrip("/")
        return
    http_port, grpc_port = free_port(), free_port()
    config_path = root / "loki.yaml"
    config_path.write_text(yaml.safe_dump(single_loki_config(root / "data", http_port, grpc_port), sort_keys=False))
    loki = Server("loki", [LOKI_BIN, f"-config.file={config_path}"], root / "loki.log").start()
    try:
        url = f"http://127.0.0.1:{http_port}"
        # /ready answers 200 once the ingester has joined its ring (about 15 s after the start).
        loki.wait_answering(url + "/ready", LOKI_READY_SECONDS, "/ready")
        yield url
    finally:
        loki.stop()
