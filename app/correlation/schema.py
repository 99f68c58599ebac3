"""The contract: every name that a log line, a Loki stream, a header or a metric exemplar shares
with the tools that read them (``trail``, the notifier, the dashboards, the alert rules).

Change a name here and every user follows: the library writes with these constants, ``trail``
reads with them, the tests' fakes match with them, and a test checks the README's reference
tables against them. Nothing here imports anything: it is the bottom of the library.
"""

from __future__ import annotations

# -- Log lines: one JSON object per line (also the Loki line) -------------------------------------

TIME = "time"  #: RFC 3339 UTC with microseconds and ``Z``
LEVEL = "level"  #: ``INFO``, ``ERROR``, ...
LOGGER = "logger"
MESSAGE = "message"
SERVICE = "service"
CORRELATION_ID = "correlation_id"  #: shared by every hop of one request
REQUEST_ID = "request_id"  #: this hop's own ID
PARENT_REQUEST_ID = "parent_request_id"  #: the calling hop's ID; null at the edge
EXCEPTION = "exception"  #: only when there is one
STACK = "stack"  #: only with ``stack_info=True``

#: The fields the correlation context puts on every record, from any logger.
CONTEXT_FIELDS = (SERVICE, CORRELATION_ID, REQUEST_ID, PARENT_REQUEST_ID)
#: The keys of every line, in the order they are written (``exception`` only when present).
LINE_KEYS = (TIME, LEVEL, LOGGER, MESSAGE, *CONTEXT_FIELDS, EXCEPTION)

#: The logger of the one access line per request and hop, written when the response is done.
ACCESS_LOGGER = "correlation.access"
METHOD = "method"
ROUTE = "route"  #: the URL rule, ``unmatched`` for a 404
PATH = "path"
STATUS = "status"  #: int
DURATION_MS = "duration_ms"  #: float
CALLER = "caller"  #: the calling service's name, or null
#: On a 5xx only: ``self`` (the hop's own failure) or ``downstream`` (a call it made failed first).
ORIGIN = "origin"
ORIGIN_SELF = "self"
ORIGIN_DOWNSTREAM = "downstream"
#: With ``origin`` = ``downstream``: the first peer whose call failed.
FAILED_DOWNSTREAM = "failed_downstream"
#: The keys the access line adds to :data:`LINE_KEYS` (the last two only on a 5xx).
ACCESS_KEYS = (METHOD, ROUTE, PATH, STATUS, DURATION_MS, CALLER, ORIGIN, FAILED_DOWNSTREAM)
#: The route of a request that matched no URL rule.
UNMATCHED_ROUTE = "unmatched"

#: Every key the contract defines; anything else on a line came from the app's ``extra=``.
STANDARD_KEYS = frozenset((*LINE_KEYS, STACK, *ACCESS_KEYS))

# -- Loki streams -----------------------------------------------------------------------------

#: Stream labels: a fixed, small set. The correlation ID is never a label (a stream per request
#: would wreck Loki's index); it travels in structured metadata.
SERVICE_LABEL = "service_name"
ENV_LABEL = "env"
STREAM_LABELS = (SERVICE_LABEL, ENV_LABEL)
#: Structured metadata of every entry: queryable with no parser, indexed by nothing.
#: ``level`` is lowercase here (``error``), as Grafana's log-level detection expects.
METADATA_FIELDS = (CORRELATION_ID, REQUEST_ID, LEVEL)

# -- HTTP headers ------------------------------------------------------------------------------

#: The header read, echoed and propagated by default (``CORRELATION_HEADER`` changes it).
CORRELATION_HEADER = "X-Correlation-ID"
#: Read when the correlation header is absent: what many proxies and clients already send.
REQUEST_ID_HEADER = "X-Request-ID"
#: This hop's request ID, sent to the callee as its parent.
PARENT_HEADER = "X-Parent-Request-ID"
#: This service's name, sent to the callee for its access line.
CALLER_HEADER = "X-Caller-Service"
#: W3C Trace Context: trace-id = correlation ID, parent-id = the calling hop's request ID.
TRACEPARENT_HEADER = "traceparent"
#: On every response: the answering service's name, so a caller's metrics name the peer
#: service rather than a host.
SERVICE_HEADER = "X-Service-Name"

# -- Metrics ------------------------------------------------------------------------------------

#: The exemplar label on request metrics (IDs of at most 64 characters fit Prometheus' 128 limit).
EXEMPLAR_LABEL = CORRELATION_ID
