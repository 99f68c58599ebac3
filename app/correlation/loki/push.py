"""Loki's push API body: JSON, gzip-compressed.

``{"streams":[{"stream":{labels},"values":[["<unix ns>","<line>",{metadata}], ...]}, ...]}``
The labels are a small fixed set (service_name, env) and, for a line with a correlation ID, its
``shard`` (one of 16 values): at most 17 streams a push. Per-request values such as the
correlation ID go in the third element, structured metadata, never in labels.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from itertools import groupby
from operator import itemgetter

from correlation.loki.buffer import PushEntry
from correlation.schema import SHARD_LABEL

_FRAGMENT, _SHARD = itemgetter(1), itemgetter(2)
_SHARD_THEN_TIMESTAMP = itemgetter(2, 0)
CONTENT_HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}


def push_body(entries: Iterable[PushEntry], labels: Mapping[str, str]) -> bytes:
    """Encode ``entries`` as one stream per shard (``labels``, plus ``shard`` where the entry has
    one), each in timestamp order (entries of the same time in the order given), gzip-compressed."""
    # No Python step per line, only per stream (17 at most): the sender holds the GIL the logging
    # threads wait for. A stable sort keeps a stream's entries of equal time in arrival order.
    streams = []
    for shard, group in groupby(sorted(entries, key=_SHARD_THEN_TIMESTAMP), _SHARD):
        stream_labels = {**labels, SHARD_LABEL: shard} if shard else dict(labels)
        values = b",".join(map(_FRAGMENT, group))
        streams.append(b'{"stream":%s,"values":[%s]}' % (json.dumps(stream_labels).encode("ascii"), values))
    body = b'{"streams":[%s]}' % b",".join(streams)
    # Level 1: most of the size win at a fraction of the CPU of the default level 9. zlib writes
    # the gzip wrapper itself (wbits=31): gzip.compress adds a second pass (crc32) and two copies.
    return zlib.compress(body, 1, wbits=31)
