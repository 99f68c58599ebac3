"""How a hop reads, in the CLI's tree and on the page alike: its route, its status, and the notes
that mark a task run or fields no one could read. Every text from a line is escaped here.
"""

from __future__ import annotations

from trail.hops import TrailHop
from trail.text import clean, format_ms


def route_text(hop: TrailHop) -> str:
    """``METHOD route``, or ``task <name>`` for a task run; ``-`` when the hop never ended."""
    if hop.open:
        return "-"
    if hop.is_task:
        return clean(f"task {hop.task or '?'}")
    return clean(" ".join(part for part in (hop.method, hop.route) if part) or "-")


def status_text(hop: TrailHop) -> str:
    """The status column: a task run's state (success, retry, failure) says more than its status."""
    if hop.open:
        return "open"
    if hop.is_task and hop.state:
        return clean(hop.state)
    return str(hop.status if hop.status is not None else "?")


def async_note(hop: TrailHop) -> str:
    """How a task run is marked: asynchronous, and how long it waited in the queue."""
    waited = f"queued {format_ms(hop.queue_wait_ms)}" if hop.queue_wait_ms is not None else "queue wait unknown"
    return f"async: {waited}"


def unreadable_note(names: tuple[str, ...]) -> str:
    """How fields a line had but no one could read (``Infinity``, year 9999) are marked."""
    return f"unreadable: {', '.join(names)} (shown as unknown)"
