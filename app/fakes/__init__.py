"""Stand-ins for what the tests and benchmarks talk to over loopback, and the plumbing to run them.

A package of its own beside the demo in ``app/`` (source only, on the path of ``tests/`` and
``bench/`` alike), so that the benchmarks do not depend on the test suite. Not part of the
library's wheel or the image: a fake Loki with
scripted faults and a LogQL imitation is the project's tooling, not an API the library's users need.

- :class:`FakeLoki` (``loki.py``): Loki's push API (format checked, faults scripted) and its
  ``query_range`` API (a LogQL subset, ``loki_query.py``) over one store.
- ``loki_push.py``: Loki's push format, as Loki checks it.
- ``trail_lines.py``: sample lines of one checkout, for staging trails.
- ``loopback.py``: :class:`LoopbackServer` (any handler, in a thread), :class:`QuietHandler`,
  :func:`free_port`, :func:`closed_port_url`, :func:`raw_request`.
- ``waiting.py``: :func:`wait_until`, the one poll-with-a-deadline.
- ``webhook.py``: :class:`FakeWebhook`, the chat webhook the notifier posts to and the receiver
  Alertmanager notifies.

Helpers that are not fakes (real Prometheus, Grafana checks, the shipper wired for tests) live
in ``tests/support/``. Fixtures built on these are in ``tests/conftest.py``.
"""

from fakes.loki import FakeLoki, RecordedRequest
from fakes.loki_push import Push, PushedEntry, validate_push
from fakes.loopback import HeaderEcho, LoopbackServer, QuietHandler, closed_port_url, free_port, raw_request
from fakes.waiting import serving, wait_until
from fakes.webhook import Delivery, FakeWebhook

__all__ = [
    "Delivery",
    "FakeLoki",
    "FakeWebhook",
    "HeaderEcho",
    "LoopbackServer",
    "Push",
    "PushedEntry",
    "QuietHandler",
    "RecordedRequest",
    "closed_port_url",
    "free_port",
    "raw_request",
    "serving",
    "validate_push",
    "wait_until",
]
