"""The load generator's error spikes (``--scenario spike``): when a spike is on, and the switch
that sets the fault target's error rate through its ``/admin/faults`` endpoint (with the target's
token when it has one: ``LOADGEN_FAULT_TOKEN`` or ``LOADGEN_FAULT_TOKEN_FILE``, the file read at
each change, so a token written after the load generator started is used)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

import requests

#: A fault target that does not answer is retried this often, not at every tick.
RETRY_FAULT_SECONDS = 5.0


def spike_active(elapsed: float, after: float, length: float) -> bool:
    """Whether a spike is on at ``elapsed`` seconds: calm for ``after``, spike for ``length``, repeat."""
    if length <= 0:
        return False
    return elapsed % (after + length) >= after


class FaultSwitch:
    """Sets the fault target's error rate, remembering what it last applied successfully."""

    def __init__(
        self, fault_url: str, service: str, timeout: float, out: TextIO, token: str = "", token_file: str = ""
    ) -> None:
        self._url = fault_url.rstrip("/") + "/admin/faults"
        self._token = token
        self._token_file = token_file
        self._name = service
        self._timeout = timeout
        self._out = out
        self._retry_at = 0.0
        self.applied: float | None = None  # unknown until the first successful POST

    def set(self, error_rate: float, force: bool = False) -> bool:
        if self.applied == error_rate:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            headers = {"Authorization": f"Bearer {token}"} if (token := self._current_token()) else {}
            resp = requests.post(self._url, json={"error_rate": error_rate}, headers=headers, timeout=self._timeout)
            resp.raise_for_status()
        except (requests.RequestException, OSError) as exc:
            print(f"loadgen: could not set {self._name} error_rate={error_rate}: {exc}", file=self._out, flush=True)
            self._retry_at = time.monotonic() + RETRY_FAULT_SECONDS
            return False
        self.applied = error_rate
        print(f"loadgen: {self._name} error_rate={error_rate}", file=self._out, flush=True)
        return True

    def _current_token(self) -> str:
        """The token to send; OSError when its file cannot be read (retried like a refusal)."""
        if self._token_file:
            return Path(self._token_file).read_text(encoding="utf-8").strip()
        return self._token
