"""Where a failed request broke: the deepest failed hop, and the error it wrote.

A failure travels up the call tree: payments answers 500, orders answers 502 because of it, the
gateway 502 because of orders. The hop to look at is the deepest one on that chain, found by
following failing children (status >= 500) down from the top. Its first error line names the
cause; an exception's last traceback row (``demo.faults.InjectedFault: injected fault``) is the
"type: message" a notifier can show in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from correlation import schema
from trail.hops import Trail, TrailHop
from trail.log_line import LogLine, text_rows


@dataclass(frozen=True)
class RootCause:
    """The deepest failed hop of a trail and its first error line (None: it logged no error)."""

    hop: TrailHop
    line: LogLine | None

    @property
    def exception_type(self) -> str | None:
        """``module.Type`` from the exception's last row, or None when there is no exception."""
        head, _, _ = self._exception_row().partition(": ")
        return head or None

    @property
    def message(self) -> str | None:
        """The exception's message when there is one, else the error line's message."""
        row = self._exception_row()
        if row:
            _, colon, rest = row.partition(": ")
            return rest if colon else None
        return self.line.get(schema.MESSAGE) if self.line else None

    @property
    def summary(self) -> str:
        """One line: ``Type: message``, the error line's message, or the hop's status."""
        if self.exception_type:
            return f"{self.exception_type}: {self.message}" if self.message else self.exception_type
        if self.message:
            return self.message
        status = self.hop.status if self.hop.status is not None else "an unreadable status"
        return f"{self.hop.service or '?'} answered {status}"

    def _exception_row(self) -> str:
        exception = self.line.get(schema.EXCEPTION) if self.line else None
        rows = [row.strip() for row in text_rows(exception) if row.strip()]
        return rows[-1] if rows else ""


def root_cause(trail: Trail, below: TrailHop | None = None) -> RootCause | None:
    """The deepest failed hop reached by following failing children down from ``below`` (default:
    from every failed hop whose parent did not fail, e.g. the edge). None when nothing failed.

    Among equally deep candidates the one that started first wins (``walk`` order), so the answer
    is the same on every run.
    """
    if below is not None:
        starts = [below] if below.failed else []
    else:
        below_a_failure = {child.request_id for hop in trail.hops.values() if hop.failed for child in hop.children}
        starts = [hop for hop in trail.walk() if hop.failed and hop.request_id not in below_a_failure]
    deepest: TrailHop | None = None
    for start in starts:
        stack = [start]
        while stack:  # bounded: the tree has no loops (build_trail breaks them)
            hop = stack.pop()
            if deepest is None or hop.depth > deepest.depth:
                deepest = hop
            stack.extend(reversed([child for child in hop.children if child.failed]))
    if deepest is None:
        return None
    return RootCause(deepest, first_error_line(deepest))


def first_error_line(hop: TrailHop) -> LogLine | None:
    """The hop's first line with an exception, else its first ERROR line that is not the access
    line (which only repeats the status), else None."""
    errors = [line for line in hop.lines if line.is_error]
    with_exception = next((line for line in errors if line.get(schema.EXCEPTION)), None)
    return with_exception or next((line for line in errors if not line.is_access), None)
