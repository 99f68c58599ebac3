"""Rebuild one request's hop tree from its log lines alone (keys: ``correlation.schema``).

Every line carries ``request_id`` (the hop) and ``parent_request_id`` (the hop that called it,
null at the edge). Each hop writes one access line (logger ``correlation.access``) when its
response is done, so that line's time is the hop's END; its start is that time minus
``duration_ms``. A hop with lines but no access line yet is *open* (still running, crashed, or its
access line is outside the window); a hop whose parent is not among the hops is an *orphan*
(the parent's lines are missing). Lines that are not JSON or name no hop go to the unknown hop.
Each line is read (untrusted) by :mod:`trail.log_line`; this module links the lines into hops.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from correlation import schema
from trail.log_line import LogLine, parse_line

UNKNOWN_HOP = "unknown"

#: What the trail is built from: (Loki timestamp in ns, line, ``service_name`` label or None,
#: structured metadata). The metadata places a line that is not JSON (cut to Loki's line limit,
#: written by a foreign logger) on its hop by ``request_id``.
RawLine = tuple[int, str, "str | None", "Mapping[str, str | None]"]


@dataclass(eq=False)  # hops are identities, compared with `is`
class TrailHop:
    """One service's handling of the request, with the lines it wrote."""

    request_id: str
    lines: list[LogLine] = field(default_factory=list)
    children: list[TrailHop] = field(default_factory=list)
    #: Set when the parent is not among the hops (or the parent links form a loop).
    orphan: bool = False
    depth: int = 0

    @cached_property
    def access(self) -> LogLine | None:
        """The first access line; read only once the hop's lines are all in (it is cached)."""
        return next((line for line in self.lines if line.is_access), None)

    @property
    def open(self) -> bool:
        """No access line: the hop never finished, or its end is outside the window."""
        return self.access is None

    def _field(self, name: str) -> str | None:
        access = self.access
        if access is not None and access.get(name) is not None:
            return access.get(name)
        return next((line.get(name) for line in self.lines if line.get(name) is not None), None)

    @property
    def parent_request_id(self) -> str | None:
        return self._field(schema.PARENT_REQUEST_ID)

    @property
    def service(self) -> str | None:
        return self._field(schema.SERVICE) or next((line.service for line in self.lines if line.service), None)

    @property
    def method(self) -> str | None:
        return self.access.get(schema.METHOD) if self.access else None

    @property
    def route(self) -> str | None:
        """The URL rule; for a task run, the task's name (what its metrics and alerts call its route)."""
        return (self.access.get(schema.ROUTE) or self.task) if self.access else None

    @property
    def is_task(self) -> bool:
        """A task run (``correlation.celery``): an asynchronous hop, started when its parent
        published it; it may end long after the parent answered. ``state``: success, retry, ..."""
        return self.access is not None and self.access.get(schema.KIND) == schema.KIND_TASK

    @property
    def task(self) -> str | None:
        return self.access.get(schema.TASK) if self.access and self.is_task else None

    @property
    def state(self) -> str | None:
        return self.access.get(schema.STATE) if self.access and self.is_task else None

    @property
    def queue_wait_ms(self) -> float | None:
        """A task run's time in the queue: from its publish to the start of the run."""
        return self.access.number(schema.QUEUE_WAIT_MS) if self.access and self.is_task else None

    @property
    def path(self) -> str | None:
        return self.access.get(schema.PATH) if self.access else None

    @property
    def caller(self) -> str | None:
        return self.access.get(schema.CALLER) if self.access else None

    @property
    def status(self) -> int | None:
        """The HTTP status (100..599); None when the hop is open or its status is unreadable."""
        value = self.access.number(schema.STATUS) if self.access else None
        return None if value is None else int(value)

    @property
    def duration_ms(self) -> float | None:
        return self.access.number(schema.DURATION_MS) if self.access else None

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The access line's fields that were there but unreadable (shown as unknown)."""
        if self.access is None:
            return ()
        found = self.access.unreadable()
        return found if self.is_task else tuple(name for name in found if name != schema.QUEUE_WAIT_MS)

    @property
    def end_ns(self) -> int | None:
        return self.access.ts_ns if self.access else None

    @property
    def start_ns(self) -> int:
        """The access line's time minus the duration (and, for a task run, minus its queue wait:
        it starts when published); for an open hop its first line."""
        if self.end_ns is not None and self.duration_ms is not None:
            return self.end_ns - int((self.duration_ms + (self.queue_wait_ms or 0.0)) * 1_000_000)
        return min(line.ts_ns for line in self.lines)

    @property
    def failed(self) -> bool:
        return self.status is not None and self.status >= 500

    @property
    def has_error_lines(self) -> bool:
        return any(line.is_error for line in self.lines)


@dataclass
class Trail:
    """The hop tree of one correlation ID."""

    correlation_id: str
    hops: dict[str, TrailHop]
    #: Edge hops and orphans, by start time; children hang below them.
    roots: list[TrailHop]
    #: Lines that are not JSON or name no hop ("the unknown hop"), in time order.
    unknown: list[LogLine]

    @property
    def start_ns(self) -> int | None:
        """The earliest moment of the request; hop offsets are counted from here."""
        starts = [hop.start_ns for hop in self.hops.values()] or [line.ts_ns for line in self.unknown]
        return min(starts) if starts else None

    @property
    def line_count(self) -> int:
        return sum(len(hop.lines) for hop in self.hops.values()) + len(self.unknown)

    def walk(self) -> Iterator[TrailHop]:
        """Hops parent before children, siblings by start time (each hop's ``depth`` is set)."""
        stack = list(reversed(self.roots))
        while stack:
            hop = stack.pop()
            yield hop
            stack.extend(reversed(hop.children))

    def problems(self) -> list[str]:
        """Why the trail looks incomplete (empty when it does not)."""
        found = []
        for hop in self.walk():
            who = f"{hop.service or '?'} [{hop.request_id}]"
            if hop.orphan:
                found.append(f"{who} has no parent {hop.parent_request_id} in the logs")
            if hop.open:
                found.append(f"{who} has no access line (open)")
        return found

    @property
    def complete(self) -> bool:
        return not self.problems()


def build_trail(correlation_id: str, raw_lines: Iterable[RawLine]) -> Trail:
    """Group lines by ``request_id``, link hops through ``parent_request_id``, order everything."""
    hops: dict[str, TrailHop] = {}
    unknown: list[LogLine] = []
    for ts_ns, raw, label_service, metadata in raw_lines:
        line = parse_line(ts_ns, raw, label_service, metadata)
        request_id = line.get(schema.REQUEST_ID)
        if request_id is None:
            unknown.append(line)
        else:
            hops.setdefault(request_id, TrailHop(request_id)).lines.append(line)
    for hop in hops.values():
        hop.lines.sort(key=lambda line: line.ts_ns)  # stable: Loki's order breaks ties
    unknown.sort(key=lambda line: line.ts_ns)

    roots: list[TrailHop] = []
    for hop in hops.values():
        parent = hop.parent_request_id
        if parent is None:
            roots.append(hop)
        elif parent in hops and parent != hop.request_id:
            hops[parent].children.append(hop)
        else:
            hop.orphan = True
            roots.append(hop)
    _break_loops(hops, roots)
    for hop in hops.values():
        hop.children.sort(key=lambda h: h.start_ns)
    roots.sort(key=lambda h: h.start_ns)
    trail = Trail(correlation_id, hops, roots, unknown)
    _set_depths(trail.roots)
    return trail


def _break_loops(hops: dict[str, TrailHop], roots: list[TrailHop]) -> None:
    """Hostile or corrupt lines can make parents form a loop that no root reaches; show such
    hops as orphans instead of silently dropping them."""
    reached: set[str] = set()

    def mark(hop: TrailHop) -> None:
        stack = [hop]
        while stack:
            current = stack.pop()
            if current.request_id not in reached:
                reached.add(current.request_id)
                stack.extend(current.children)

    for root in roots:
        mark(root)
    for hop in sorted(hops.values(), key=lambda h: h.start_ns):
        if hop.request_id not in reached:
            parent = hops.get(hop.parent_request_id or "")
            if parent is not None and hop in parent.children:
                parent.children.remove(hop)
            hop.orphan = True
            roots.append(hop)
            mark(hop)


def _set_depths(roots: list[TrailHop]) -> None:
    stack = [(hop, 0) for hop in roots]
    while stack:
        hop, depth = stack.pop()
        hop.depth = depth
        stack.extend((child, depth + 1) for child in hop.children)
