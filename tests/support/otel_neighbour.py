"""An OpenTelemetry-instrumented neighbour: a plain ``http.server`` service traced with the
OpenTelemetry SDK as ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` configures it.

No instrumentation package is needed for what this checks: the handler extracts the caller's
context with the SDK's W3C propagator (what ``opentelemetry-instrumentation-*`` server packages do
on every request) and starts its server span under it; the sampler is
``ParentBased(TraceIdRatioBased(ratio))``, so a remote parent's sampled flag decides, and the ratio
only decides for traces that start at the neighbour. Finished spans are kept in memory (no exporter
process). Each request answers what the neighbour saw, as JSON.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fakes import LoopbackServer, QuietHandler

#: With ratio 0.5 the neighbour's own sampler keeps a trace when the trace-id's low 64 bits are
#: below 2**63 (TraceIdRatioBased): these two trace-ids get the opposite of what their flag says,
#: so a span's fate shows which one decided.
RATIO = 0.5
RATIO_WOULD_SAMPLE = "4bf92f3577b34da60000000000000001"
RATIO_WOULD_DROP = "4bf92f3577b34da6fffffffffffffffe"


class Neighbour:
    """``with Neighbour() as n:`` serves on ``n.url``; ``n.recorded()`` lists the spans it recorded."""

    def __init__(self, ratio: float = RATIO) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        tracer = provider.get_tracer("neighbour")
        propagator = TraceContextTextMapPropagator()

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                # http.server's headers are an email.Message: the propagator's default getter reads
                # a dict, so hand it one (names lowercased, as the getter looks them up).
                carrier = {k.lower(): v for k, v in self.headers.items()}
                parent = propagator.extract(carrier)
                with tracer.start_as_current_span("GET /", context=parent, kind=SpanKind.SERVER) as span:
                    own = span.get_span_context()
                    seen: dict[str, Any] = {
                        "traceparent": carrier.get("traceparent"),
                        "tracestate": carrier.get("tracestate"),
                        "recording": span.is_recording(),
                        "trace_id": format_trace_id(own.trace_id),
                        # The tracestate as the SDK understood it (it drops a list it finds malformed).
                        "otel_tracestate": own.trace_state.to_header(),
                    }
                self.reply(200, seen)

        self.server = LoopbackServer(Handler)
        self.url = self.server.url

    def recorded(self, trace_id: str) -> list[Any]:
        """The finished spans the neighbour recorded for ``trace_id`` (32 hex digits)."""
        return [s for s in self.exporter.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id]

    @staticmethod
    def parent_span_id(span: Any) -> str | None:
        return format_span_id(span.parent.span_id) if span.parent is not None else None

    def __enter__(self) -> Neighbour:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
