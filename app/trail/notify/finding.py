"""The trail behind an alert: the alerted service's newest failed request, read from Loki with the
same code as ``trail --last-error`` (:func:`trail.last_error.last_error`), and the hop where it broke
(:func:`trail.root_cause.root_cause`). An alert about one task (``task`` label, TaskFailures) is
explained by that task's newest failed run: a worker runs several tasks, and the service's newest
failure may be another task's. Only when that task has none is the service's newest failure named,
with a caveat saying so. A TaskPublishFailures alert fails no request: it is explained by the
newest task the service could not queue (:mod:`trail.notify.lost_task`) and the request that
asked for it.

A notification must not wait for Loki: every read has a deadline (the moment the alert arrived
plus the budget), enforced twice. Each request to Loki is bounded by what is left of it
(``budget_seconds``), and the caller stops waiting at the deadline whatever Loki does (a Loki that
trickles bytes keeps a socket read alive forever); the read then ends in the background by its
own timeouts. What could not be read is said in :attr:`TrailFinding.note`, never hidden.

How much broke (:class:`FailureReport`, :mod:`trail.failures`) is counted beside the trail, in
parallel and by the same deadline, for firing and resolved alerts alike: when Loki does not answer
in time the report says the count is unavailable and why, never a number Loki did not give. An
alert about one task counts that task's failed runs, not every failure of the worker; a task label
that cannot be searched for is counted not at all (with the reason), rather than as the service's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from trail.failures import FailedRequestAt, FailureCounts, count_failures, first_and_last_failure
from trail.last_error import LastError, last_error
from trail.logql import PUBLISH_FAILURE_MESSAGE, check_reason, check_task
from trail.loki_query import LokiQueryClient, LokiQueryError
from trail.notify.lost_task import PUBLISH_FAILURE_ALERT, LostTask, find_lost_task
from trail.notify.payload import AlertEvent
from trail.root_cause import root_cause
from trail.window import DEFAULT_MAX_REQUEST_SECONDS, Window

FOUND, NOT_FOUND, UNAVAILABLE, SKIPPED = "found", "not_found", "unavailable", "skipped"
T = TypeVar("T")
NS = 1_000_000_000
#: How far before the alert's start the newest failure is looked for: the rules' 5-minute rate
#: window plus their longest `for`, with room to spare.
DEFAULT_LOOKBACK_SECONDS = 15 * 60.0
#: The time a notification may wait for Loki; with Alertmanager's group_wait it stays in the 5 s
#: docs/testing.md promises.
DEFAULT_BUDGET_SECONDS = 3.0
#: A Loki error this close to the deadline is the deadline (socket timeouts may fire a hair early).
_DEADLINE_SLACK_SECONDS = 0.05


@dataclass(frozen=True)
class FailedHop:
    """The deepest failed hop of the request: where it broke."""

    service: str | None
    method: str | None
    route: str | None
    status: int | None
    duration_ms: float | None
    request_id: str


@dataclass(frozen=True)
class TrailFinding:
    """What Loki told about an alert: ``state`` is found, not_found, unavailable or skipped;
    ``note`` says why there is no trail (None when found)."""

    state: str
    note: str | None = None
    correlation_id: str | None = None
    root_cause: FailedHop | None = None
    error_type: str | None = None
    error_message: str | None = None
    #: The window the trail was read from (the trail link opens the same).
    trail_window: Window | None = None
    #: What the request named stands in for, when it is not what the alert is about (untrusted
    #: text inside: the alert's task label); None otherwise.
    caveat: str | None = None
    #: For a TaskPublishFailures alert: the newest task the service could not queue.
    lost_task: LostTask | None = None
    #: How much broke in the alert's window (None: not asked).
    failures: FailureReport | None = None


@dataclass(frozen=True)
class FailureReport:
    """The alert's failed requests: ``state`` found (counted), unavailable (``note`` says why: never
    a number Loki did not give) or skipped. For a resolved alert also the first and the last failure."""

    state: str
    note: str | None = None
    counts: FailureCounts | None = None
    first: FailedRequestAt | None = None
    last: FailedRequestAt | None = None


class TrailReader:
    """Reads findings for alerts; ``client`` None means Loki is not configured (LOKI_URL empty)."""

    def __init__(
        self,
        client: LokiQueryClient | None,
        *,
        lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
        max_request_seconds: float = DEFAULT_MAX_REQUEST_SECONDS,
        executor: Executor | None = None,
    ) -> None:
        self.client = client
        self.lookback_seconds = lookback_seconds
        self.budget_seconds = budget_seconds
        self.max_request_seconds = max_request_seconds
        self._executor = executor or ThreadPoolExecutor(max_workers=8, thread_name_prefix="notify-loki")

    def read(self, event: AlertEvent, deadline: float, now_ns: int | None = None) -> TrailFinding:
        """The finding for ``event``, returned by ``deadline`` (``time.monotonic()``) at the latest.
        How much broke (:attr:`TrailFinding.failures`) is counted beside the trail, in parallel,
        within the same deadline."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        counting = self._submit_count(event, deadline, now_ns)
        finding = self._read_trail(event, deadline, now_ns)
        return replace(finding, failures=self._wait_for_count(counting, deadline))

    def _read_trail(self, event: AlertEvent, deadline: float, now_ns: int) -> TrailFinding:
        if not event.firing:
            return TrailFinding(SKIPPED, "resolved: the trail is read for firing alerts only")
        service = event.service
        if service is None:
            return TrailFinding(SKIPPED, "the alert names no service")
        if self.client is None:
            return TrailFinding(SKIPPED, "LOKI_URL is not set: the trail was not read")
        left = deadline - time.monotonic()
        if left <= 0:
            return TrailFinding(UNAVAILABLE, "the trail could not be read: no time was left for Loki")
        window = self.search_window(event.starts_at, now_ns)
        client = self.client
        if event.alertname == PUBLISH_FAILURE_ALERT:
            future = self._executor.submit(self._lost_task, client, service, event.task, event.reason, window, deadline)
        else:
            future = self._executor.submit(self._failed_request, client, service, event.task, window, deadline)
        return self._result(future, deadline, "the trail could not be read", TrailFinding)

    def _result(self, future: Future[T], deadline: float, what: str, failed: Callable[[str, str], T]) -> T:
        """``future``'s result by ``deadline``; else ``failed(UNAVAILABLE, why)``."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            return failed(UNAVAILABLE, self._out_of_time(what))
        except LokiQueryError as exc:
            # Each request's own timeout ends at the deadline too: on a busy machine it may fire
            # before this thread wakes up, and it is the same budget running out.
            if time.monotonic() >= deadline - _DEADLINE_SLACK_SECONDS:
                return failed(UNAVAILABLE, self._out_of_time(what))
            return failed(UNAVAILABLE, f"{what}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the boundary: a bad line or a bug must not stop the page
            return failed(UNAVAILABLE, f"{what}: {type(exc).__name__}: {exc}")

    def _submit_count(self, event: AlertEvent, deadline: float, now_ns: int) -> Future[FailureReport] | FailureReport:
        """The count of the alert's failed requests, started (or why it is not counted)."""
        service = event.service
        if service is None:
            return FailureReport(SKIPPED, "the alert names no service")
        if self.client is None:
            return FailureReport(SKIPPED, "LOKI_URL is not set: nothing was counted")
        if event.alertname == PUBLISH_FAILURE_ALERT:
            return FailureReport(SKIPPED, "the alert is about tasks not queued, counted in lost_task")
        task = event.task
        if task is not None:
            try:
                check_task(task)
            except ValueError as exc:
                # The service's count would pass for the task's: say why there is none instead.
                return FailureReport(SKIPPED, f"the alert's task label cannot be searched for ({exc})")
        if deadline - time.monotonic() <= 0:
            return FailureReport(UNAVAILABLE, "no time was left for Loki")
        end_ns = now_ns
        if not event.firing and event.ends_at is not None:
            end_ns = min(now_ns, int(event.ends_at.timestamp() * NS))
        window = self.search_window(event.starts_at, end_ns)
        return self._executor.submit(self._count, self.client, service, task, window, not event.firing, deadline)

    def _wait_for_count(self, counting: Future[FailureReport] | FailureReport, deadline: float) -> FailureReport:
        if isinstance(counting, FailureReport):
            return counting
        return self._result(counting, deadline, "the failed requests could not be counted", FailureReport)

    @staticmethod
    def _count(
        client: LokiQueryClient, service: str, task: str | None, window: Window, with_ends: bool, deadline: float
    ) -> FailureReport:
        """The failed requests of ``service`` (runs of ``task``, when the alert is about one)."""
        counts = count_failures(client, service, window, task=task, deadline=deadline)
        first = last = None
        if with_ends and counts.failed:
            first, last = first_and_last_failure(client, service, counts.window, task=task, deadline=deadline)
        return FailureReport(FOUND, counts=counts, first=first, last=last)

    def _out_of_time(self, what: str) -> str:
        return f"{what}: Loki did not answer within {self.budget_seconds:g} s"

    def _failed_request(
        self, client: LokiQueryClient, service: str, task: str | None, window: Window, deadline: float
    ) -> TrailFinding:
        found, caveat = self._newest_failure(client, service, task, window, deadline)
        if found is None:
            return TrailFinding(NOT_FOUND, f"no request failed (status >= 500) at {service} in {window}")
        return _finding(found, caveat)

    def _lost_task(
        self,
        client: LokiQueryClient,
        service: str,
        task: str | None,
        reason: str | None,
        window: Window,
        deadline: float,
    ) -> TrailFinding:
        """The newest task ``service`` could not queue (of ``task``, for ``reason``: the alert's
        labels, each when it can be searched for) and the request that asked for it."""
        caveats = []
        if task is not None:
            try:
                check_task(task)
            except ValueError as exc:
                caveats.append(
                    f"the alert's task label cannot be searched for ({exc}); naming any task lost at {service}"
                )
                task = None
        if reason is not None:
            try:
                check_reason(reason)
            except ValueError as exc:
                caveats.append(f"the alert's reason label cannot be searched for ({exc}); naming a loss of any reason")
                reason = None
        caveat = "; ".join(caveats) or None
        lost = find_lost_task(client, service, task, window, deadline, reason)
        if lost is None:
            line = PUBLISH_FAILURE_MESSAGE if task is None else f"{PUBLISH_FAILURE_MESSAGE} {task}"
            line += f" ({reason})" if reason is not None else ""
            return TrailFinding(NOT_FOUND, f'no ERROR line "{line} ..." at {service} in {window}', caveat=caveat)
        if lost.correlation_id is None:
            return TrailFinding(
                FOUND,
                "the newest lost task has no correlation ID: published outside any request",
                caveat=caveat,
                lost_task=lost,
            )
        return TrailFinding(
            FOUND,
            correlation_id=lost.correlation_id,
            trail_window=lost.trail_window(),
            caveat=caveat,
            lost_task=lost,
        )

    def _newest_failure(
        self, client: LokiQueryClient, service: str, task: str | None, window: Window, deadline: float
    ) -> tuple[LastError | None, str | None]:
        """The failure that explains the alert, and a caveat when it is not one of the alert's task
        (a run of ``task`` first; the service's own failures first either way)."""

        def newest(of_task: str | None) -> LastError | None:
            return last_error(
                client,
                service,
                window,
                max_request_seconds=self.max_request_seconds,
                budget_seconds=max(0.0, deadline - time.monotonic()),
                prefer_own=True,
                task=of_task,
            )

        if task is None:
            return newest(None), None
        try:
            check_task(task)
        except ValueError as exc:
            caveat = f"the alert's task label cannot be searched for ({exc}); naming the newest failure at {service}"
        else:
            found = newest(task)
            if found is not None:
                return found, None
            caveat = f"no run of task {task} failed in {window}; naming the newest failure at {service} instead"
        return newest(None), caveat

    def search_window(self, starts_at: datetime | None, now_ns: int) -> Window:
        """From ``lookback_seconds`` before the alert's start (or now) up to now."""
        start_ns = int(starts_at.timestamp() * NS) if starts_at is not None else now_ns
        start_ns = min(start_ns, now_ns) - int(self.lookback_seconds * NS)
        return Window(start_ns, now_ns + 1)


def _finding(found: LastError, caveat: str | None = None) -> TrailFinding:
    if not found.lookup.found:
        window = found.lookup.window
        return TrailFinding(
            NOT_FOUND,
            f"the lines of failed request {found.correlation_id} are not in {window}",
            correlation_id=found.correlation_id,
            trail_window=window,
            caveat=caveat,
        )
    cause = root_cause(found.lookup.trail)
    if cause is None:
        # The failed access line was found but its trail shows no failed hop: lines still in flight.
        return TrailFinding(
            FOUND,
            "the trail shows no failed hop yet (lines may still be arriving)",
            correlation_id=found.correlation_id,
            trail_window=found.lookup.window,
            caveat=caveat,
        )
    hop = cause.hop
    return TrailFinding(
        FOUND,
        correlation_id=found.correlation_id,
        root_cause=FailedHop(hop.service, hop.method, hop.route, hop.status, hop.duration_ms, hop.request_id),
        error_type=cause.exception_type,
        error_message=cause.message,
        trail_window=found.lookup.window,
        caveat=caveat,
    )
