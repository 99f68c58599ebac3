"""Test helpers that are not fakes: the shipper wired as in production (``shipper.py``), the real
Prometheus and Alertmanager binaries (``stack.py``), the checks of Grafana's JSON and its LogQL and
Explore links (``grafana.py``), the alerting path run for real (``alerting.py``) and several
processes of one component (``replicas.py``). Fakes are in ``fakes/`` at the repository root."""

from pathlib import Path

#: The repository root, for the files the tests read (README.md, docs/, the stack's configs, app/).
REPO = Path(__file__).resolve().parents[2]
