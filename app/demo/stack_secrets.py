"""``python -m demo.stack_secrets``: the demo stack's shared secrets, written before anything that
needs them starts (compose service ``stack-secrets``, a one-shot), and its refusal to start with
the default passwords when the stack is reachable from elsewhere. docs/security.md explains both.

- ``--notify-dir``/token: the bearer token Alertmanager sends the notifier (``credentials_file``)
  and the notifier expects (``NOTIFY_AUTH_TOKEN_FILE``); from ``NOTIFY_AUTH_TOKEN`` when set.
- ``--fault-dir``/token: the token of the demo services' ``/admin/faults`` (``FAULT_TOKEN_FILE``),
  which the load generator sends (``LOADGEN_FAULT_TOKEN_FILE``); from ``FAULT_TOKEN`` when set.

A token not given is kept from an earlier run, else generated (``secrets.token_urlsafe``). Each
directory is a volume of its own, mounted only where that secret is used.

The defaults (Grafana ``admin``/``admin``, MinIO's ``loki-demo-secret``) are for a stack only
this machine reaches (every port is published on 127.0.0.1). When any address people use for it
(``GRAFANA_URL``, ``TRAIL_WEB_URL``, ...) names another host, the stack is meant to be reached from
elsewhere, and this exits 2 naming each password still at its default: Grafana and MinIO wait for
this container to succeed, so they do not start.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

#: Bytes of randomness in a generated token (43 characters of URL-safe base64).
TOKEN_BYTES = 32
TOKEN_FILE = "token"
#: The addresses people use for the stack, as docker-compose*.yml pass them (empty: the default,
#: on localhost).
PUBLIC_URL_VARIABLES = (
    "GRAFANA_URL",
    "TRAIL_WEB_URL",
    "RUNBOOK_BASE_URL",
    "PROMETHEUS_URL",
    "ALERTMANAGER_URL",
    "PROMETHEUS_2_URL",
    "ALERTMANAGER_2_URL",
)
#: Password variables and the demo defaults docker-compose*.yml fall back to. MINIO_ROOT_PASSWORD
#: is checked only where it is passed (docker-compose.ha.yml runs MinIO).
DEFAULT_PASSWORDS = {"GRAFANA_ADMIN_PASSWORD": "admin", "MINIO_ROOT_PASSWORD": "loki-demo-secret"}


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1); an empty one is the
    default, which does."""
    if not url.strip():
        return True
    host = (urllib.parse.urlsplit(url.strip()).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_password_problems(env: Mapping[str, str]) -> list[str]:
    """What must be set before the stack may be reached from elsewhere; empty when nothing."""
    public = [f"{name}={env[name]}" for name in PUBLIC_URL_VARIABLES if not is_loopback_url(env.get(name, ""))]
    if not public:
        return []
    return [
        f"{name} is {'unset' if not env[name].strip() else 'the demo default'}, and the stack is reached "
        f"beyond this machine ({', '.join(public)}): set {name}"
        for name, default in DEFAULT_PASSWORDS.items()
        if name in env and env[name].strip() in ("", default)
    ]


def write_token(directory: Path, given: str) -> str:
    """Make ``directory``/token hold ``given``, or keep the token it has, or write a new one;
    returns what was done. Readable by all (Alertmanager and the app run as other users than this
    one-shot): the directory's volume is mounted only where the token is used."""
    path = directory / TOKEN_FILE
    given = given.strip()
    try:
        current = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        current = ""
    if current and (not given or given == current):
        return f"{path}: kept"
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{TOKEN_FILE}.partial"
    partial.write_text((given or secrets.token_urlsafe(TOKEN_BYTES)) + "\n", encoding="utf-8")
    partial.chmod(0o644)
    partial.replace(path)  # readers never see half a token
    return f"{path}: {'from the environment' if given else 'generated'}"


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m demo.stack_secrets", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--notify-dir", type=Path, required=True, help="volume of the notifier's token")
    parser.add_argument("--fault-dir", type=Path, required=True, help="volume of the fault switch's token")
    args = parser.parse_args(argv)
    problems = default_password_problems(env)
    for problem in problems:
        print(f"stack-secrets: {problem} (docs/security.md)", file=sys.stderr)
    if problems:
        return 2
    for directory, variable in ((args.notify_dir, "NOTIFY_AUTH_TOKEN"), (args.fault_dir, "FAULT_TOKEN")):
        print(f"stack-secrets: {write_token(directory, env.get(variable, ''))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
