"""A private redis-server for the Celery tests: started, stopped and started again on the same
port and data directory (queued messages survive, as with compose's appendonly Redis)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from demo import local_worker

#: The worker's retries in the tests: two, 0.2 s apart, so a failing run ends within a second.
RETRY_ENV = {"TASK_MAX_RETRIES": "2", "TASK_RETRY_DELAY_SECONDS": "0.2"}


@dataclass
class Broker:
    """A private redis-server that can be stopped and started again on the same port and data."""

    port: int
    data_dir: Path
    log: IO[bytes]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = local_worker.start_redis(self.port, str(self.data_dir), stdout=self.log)
        local_worker.wait_redis(self.port, self.proc, timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        return local_worker.stop(self.proc, timeout=10)
