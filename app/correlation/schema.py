"""The contract: every name that a log line, a Loki stream, a header or a metric exemplar shares
with the tools that read them (``trail``, the notifier, the dashboards, the alert rules).

Change a name here and every user follows: the library writes with these constants, ``trail``
reads with them, the tests' fakes match with them, and a test checks the reference
tables (docs/reference.md) against them. Nothing here imports anything: it is the bottom of the library.
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
#: The library's other loggers, named here and not after their modules: alert rules, dashboards,
#: runbooks and ``trail`` read the ``logger`` key, and a module's move must not rename it.
EDGE_LOGGER = "correlation.edge"  #: the Flask edge: inbound values refused
TASK_LOGGER = "correlation.celery"  #: Celery: task headers refused, tasks the broker did not take
GUNICORN_LOGGER = "correlation.gunicorn"  #: gunicorn's hooks
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
#: Only when the sender is not trusted (``CORRELATION_TRUST_INBOUND``): the valid ID it sent,
#: which was not followed. Also structured metadata, so support can search by it.
CLIENT_CORRELATION_ID = "client_correlation_id"
#: On a failure (5xx, a failed task run) that raised: the exception's type as a traceback names it
#: (``demo.faults.InjectedFault``, ``ValueError``), at most 128 characters of ``[A-Za-z0-9_.]``
#: (:func:`correlation.error_type.error_type`). Also structured metadata: failures group by it.
ERROR_TYPE = "error_type"
#: The keys the access line adds to :data:`LINE_KEYS` (the last four only when they apply).
ACCESS_KEYS = (
    METHOD,
    ROUTE,
    PATH,
    STATUS,
    DURATION_MS,
    CALLER,
    ORIGIN,
    FAILED_DOWNSTREAM,
    CLIENT_CORRELATION_ID,
    ERROR_TYPE,
)
#: The route of a request that matched no URL rule.
UNMATCHED_ROUTE = "unmatched"
#: The methods a request's ``method`` metric label takes as they are; any other is ``other``: the
#: method is the client's to choose, as a label anything else would be unbounded.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})

# A task run (``correlation.celery``) is a hop too, with its own access line (same logger): it
# carries ``status`` (200 success, 202 retry, 500 failure), ``duration_ms`` (the run), ``caller``
# (the publishing service) and ``origin``/``failed_downstream`` like an HTTP hop, plus these.
KIND = "kind"  #: only on a task run's access line: ``task`` (an asynchronous hop)
KIND_TASK = "task"
TASK = "task"  #: the task's name
TASK_ID = "task_id"  #: the message's task ID: the same for every attempt
STATE = "state"  #: ``success``, ``retry`` or ``failure`` (``ignored``, ``rejected``: Celery's rarer ends)
STATE_SUCCESS = "success"
STATE_RETRY = "retry"
STATE_FAILURE = "failure"
ATTEMPT = "attempt"  #: 1 for the first run, 2 for the first retry, ...
QUEUE = "queue"  #: the queue (routing key) the message came from
#: When the message was published (RFC 3339, like ``time``): the task hop's start in the trail.
PUBLISHED_AT = "published_at"
QUEUE_WAIT_MS = "queue_wait_ms"  #: float: publish to start of the run; null when the publish time is unknown
#: The keys a task run's access line adds to :data:`LINE_KEYS` besides status, duration and caller.
TASK_ACCESS_KEYS = (KIND, TASK, TASK_ID, STATE, ATTEMPT, QUEUE, PUBLISHED_AT, QUEUE_WAIT_MS)

#: Every key the contract defines; anything else on a line came from the app's ``extra=``.
STANDARD_KEYS = frozenset((*LINE_KEYS, STACK, *ACCESS_KEYS, *TASK_ACCESS_KEYS))

# -- Loki streams -----------------------------------------------------------------------------

#: Stream labels: a fixed, small set. The correlation ID is never a label (a stream per request
#: would wreck Loki's index); it travels in structured metadata.
SERVICE_LABEL = "service_name"
ENV_LABEL = "env"
#: One of 16 values derived from the correlation ID (``correlation.ids.shard_of``): a lookup of
#: one ID selects ``shard=~"<n>|"``, 1/16 of the streams, and the lines written without the
#: label (older ones, lines outside a request) besides. Never the ID itself.
SHARD_LABEL = "shard"
STREAM_LABELS = (SERVICE_LABEL, ENV_LABEL, SHARD_LABEL)
#: Structured metadata of every entry: queryable with no parser, indexed by nothing.
#: ``level`` is lowercase here (``error``), as Grafana's log-level detection expects.
METADATA_FIELDS = (CORRELATION_ID, REQUEST_ID, LEVEL)
#: Structured metadata of the entries whose record carries it (``error_type``: error lines only).
OPTIONAL_METADATA_FIELDS = (CLIENT_CORRELATION_ID, ERROR_TYPE)

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
#: W3C Trace Context: the tracing systems' entries for the trace in ``traceparent``, passed on as
#: they came (beside a ``traceparent`` of the same trace-id only).
TRACESTATE_HEADER = "tracestate"
#: On every response: the answering service's name, so a caller's metrics name the peer
#: service rather than a host.
SERVICE_HEADER = "X-Service-Name"
#: On task messages only, beside the headers above: when the message was published, in Unix
#: milliseconds (the task hop's start; its queue wait is the run's start minus this).
PUBLISHED_AT_HEADER = "X-Published-At"

# -- Metrics ------------------------------------------------------------------------------------

#: The exemplar label on request metrics (IDs of at most 64 characters fit Prometheus' 128 limit).
EXEMPLAR_LABEL = CORRELATION_ID
