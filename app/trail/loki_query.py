"""A small client for Loki's ``query_range`` API that never returns a silently truncated result.

Loki answers at most ``limit`` entries per request (the oldest ones with ``direction=forward``),
merged across all streams. :meth:`LokiQueryClient.query_all` pages through a window the way
logcli does: when a page comes back full, ask again from the last timestamp seen, and drop the
entries at that boundary timestamp that were already collected. Loki's ``start`` is inclusive
and ``end`` exclusive, so nothing between the pages is lost.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from correlation.settings import LokiSettings
from trail.loki_http import Answer, LokiGetter, TransportError, proxy_in_environment

QUERY_RANGE_PATH = "/loki/api/v1/query_range"
#: Instant queries (metric queries at one time).
QUERY_PATH = "/loki/api/v1/query"
#: Loki's default ``max_entries_limit_per_query``; larger limits are refused with a 400.
MAX_LIMIT = 5000
DEFAULT_PAGE_SIZE = 1000
#: Ask Loki to return stream labels and structured metadata separately (optional; both response
#: shapes are parsed).
CATEGORIZE_HEADER = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}


T = TypeVar("T")


class LokiQueryError(Exception):
    """Loki could not be reached or answered an error. ``url`` never carries credentials."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        self.url = url
        self.message = message
        self.status = status
        where = f"{url} answered {status}" if status is not None else url
        super().__init__(f"{where}: {message}")

    def headline(self, timeout_seconds: float) -> str:
        """What went wrong, in a page's title: an error answered, no answer in time, or no Loki."""
        if self.status is not None:
            return f"Loki answered an error (HTTP {self.status})"
        if "budget" in self.message or "timed out" in self.message.lower():
            return f"Loki did not answer within LOKI_TIMEOUT_SECONDS ({timeout_seconds:g} s)"
        return "Loki could not be reached"


@dataclass(frozen=True)
class QueriedEntry:
    """One log entry as a Loki query returned it (the shipper's entries, on their way in, live in
    ``correlation.loki``)."""

    ts_ns: int
    line: str
    #: The result's ``stream`` object: labels, and in the plain shape also structured metadata.
    labels: dict[str, str] = field(default_factory=dict)
    #: Structured metadata and parsed labels, filled only by the categorized response shape.
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity used to recognise an entry seen on a previous page."""
        return (self.ts_ns, self.line, tuple(sorted(self.labels.items())), tuple(sorted(self.metadata.items())))

    def label(self, name: str) -> str | None:
        """A label or structured-metadata value, whichever response shape Loki used."""
        return self.metadata.get(name, self.labels.get(name))


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, safe to print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def parse_response(payload: Any) -> list[QueriedEntry]:
    """Turn a ``query_range`` streams answer into entries sorted by time (stable across streams).

    Accepts the plain shape (``[ts, line]``) and the categorized one
    (``[ts, line, {"structuredMetadata": {...}, "parsed": {...}}]``). Raises ValueError when the
    payload is not a successful streams result.
    """
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise ValueError(f"unexpected answer: {str(payload)[:200]}")
    data = payload.get("data") or {}
    if data.get("resultType") != "streams":
        raise ValueError(f"expected resultType 'streams', got {data.get('resultType')!r}")
    entries: list[QueriedEntry] = []
    for result in data.get("result") or []:
        labels = {str(k): str(v) for k, v in (result.get("stream") or {}).items()}
        for value in result.get("values") or []:
            metadata: dict[str, str] = {}
            if len(value) > 2 and isinstance(value[2], dict):
                extra = value[2]
                # Categorized entries group metadata; a flat object is read as metadata itself.
                groups = [extra.get("structuredMetadata"), extra.get("parsed")]
                if not any(isinstance(g, dict) for g in groups):
                    groups = [extra]
                for group in groups:
                    if isinstance(group, dict):
                        metadata.update({str(k): str(v) for k, v in group.items()})
            entries.append(QueriedEntry(int(value[0]), str(value[1]), labels, metadata))
    entries.sort(key=lambda e: e.ts_ns)
    return entries


class LokiQueryClient:
    """Runs LogQL log queries against one Loki, with the shipper's tenant, auth and TLS settings."""

    def __init__(self, settings: LokiSettings, *, categorize_labels: bool = False) -> None:
        if not settings.url:
            raise ValueError("LOKI_URL is not set")
        self.settings = settings
        self.url = settings.url.rstrip("/") + QUERY_RANGE_PATH
        headers = {**settings.auth_headers(), **(CATEGORIZE_HEADER if categorize_labels else {})}
        # A proxy in the environment: requests, for its proxy rules; else the lighter http.client.
        self._get_answer = (
            _requests_getter(settings, headers) if proxy_in_environment() else _plain_getter(settings, headers)
        )

    def query_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int,
        direction: str = "forward",
        deadline: float | None = None,
    ) -> list[QueriedEntry]:
        """One request: at most ``limit`` entries in ``[start_ns, end_ns)``, sorted by time.

        Each request waits at most ``LOKI_TIMEOUT_SECONDS``, and never past ``deadline`` (a
        ``time.monotonic()`` value) when one is given.
        """
        params = {
            "query": query,
            "start": str(start_ns),
            "end": str(end_ns),
            "limit": str(limit),
            "direction": direction,
        }
        entries = self._get(self.url, params, deadline, parse_response)
        # Newest first for backward queries, as Loki means it.
        return entries[::-1] if direction == "backward" else entries

    def query_vector(self, query: str, time_ns: int, *, deadline: float | None = None) -> list[Sample]:
        """An instant metric query at ``time_ns`` (``/loki/api/v1/query``): its samples. Waits
        like :meth:`query_range`."""
        url = self.url.removesuffix(QUERY_RANGE_PATH) + QUERY_PATH
        return self._get(url, {"query": query, "time": str(time_ns)}, deadline, parse_vector)

    def query_matrix(
        self, query: str, start_ns: int, end_ns: int, step_seconds: int, *, deadline: float | None = None
    ) -> list[Series]:
        """A metric query over a range (``query_range`` with ``step``): each series' points, at
        ``start_ns``, ``start_ns + step``, ... up to ``end_ns``. Waits like :meth:`query_range`."""
        params = {"query": query, "start": str(start_ns), "end": str(end_ns), "step": str(step_seconds)}
        return self._get(self.url, params, deadline, parse_matrix)

    def _get(self, url: str, params: dict[str, str], deadline: float | None, parse: Callable[[Any], T]) -> T:
        shown = display_url(url)
        timeout = self.settings.timeout_seconds
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                raise LokiQueryError(shown, "gave up: the lookup's time budget is spent")
        try:
            answer = self._get_answer(url, params, timeout)
        except TransportError as exc:
            raise LokiQueryError(shown, f"cannot reach Loki: {exc}") from None
        if answer.status != 200:
            raise LokiQueryError(shown, _error_message(answer), answer.status)
        try:
            return parse(json.loads(answer.text))
        except ValueError as exc:  # includes JSONDecodeError
            raise LokiQueryError(shown, f"unreadable answer: {exc}", answer.status) from None

    def query_all(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        deadline: float | None = None,
        max_entries: int | None = None,
    ) -> list[QueriedEntry]:
        """Every entry in ``[start_ns, end_ns)``, oldest first, paging through Loki's limit; all
        pages together end by ``deadline`` (``time.monotonic()``) when one is given. With
        ``max_entries``, only the oldest that many: paging stops once they are in (a caller that
        must tell "exactly N" from "more" asks for one more than it shows).

        If more entries than a page holds share one timestamp, the page size is doubled (up to
        Loki's default maximum) rather than skipping them; past that a LokiQueryError is raised.
        """
        limit = min(page_size, MAX_LIMIT)
        collected: list[QueriedEntry] = []
        start = start_ns
        while True:
            page = self.query_range(query, start, end_ns, limit=limit, deadline=deadline)
            seen = _keys_at(collected, start)
            for entry in page:
                # Entries at the boundary timestamp were (partly) on the previous page.
                if entry.ts_ns == start and seen[entry.key] > 0:
                    seen[entry.key] -= 1
                    continue
                collected.append(entry)
            if max_entries is not None and len(collected) >= max_entries:
                return collected[:max_entries]
            if len(page) < limit:
                return collected  # Loki had no more in the window.
            last = page[-1].ts_ns
            if last > start:
                start = last
            elif limit < MAX_LIMIT:
                limit = min(limit * 2, MAX_LIMIT)  # a full page at one timestamp: ask for more at once
            else:
                raise LokiQueryError(
                    display_url(self.url),
                    f"more than {MAX_LIMIT} entries share timestamp {start}; cannot page past them",
                )


@dataclass(frozen=True)
class Sample:
    """One sample of an instant metric query: its series' labels and its value."""

    labels: dict[str, str]
    value: float


def parse_vector(payload: Any) -> list[Sample]:
    """The samples of an instant query's ``vector`` answer; ValueError for any other answer, or
    a value that is not a finite number (Loki writes values as strings)."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise ValueError(f"unexpected answer: {str(payload)[:200]}")
    data = payload.get("data") or {}
    if data.get("resultType") != "vector":
        raise ValueError(f"expected resultType 'vector', got {data.get('resultType')!r}")
    samples = []
    for result in data.get("result") or []:
        labels = {str(k): str(v) for k, v in (result.get("metric") or {}).items()}
        try:
            value = float(result["value"][1])
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"a sample without a value: {str(result)[:200]}") from None
        if not math.isfinite(value):
            raise ValueError(f"sample value {value!r} is not a finite number")
        samples.append(Sample(labels, value))
    return samples


@dataclass(frozen=True)
class Series:
    """One series of a metric range query: its labels and its points as (Unix ns, value)."""

    labels: dict[str, str]
    points: tuple[tuple[int, float], ...]


def parse_matrix(payload: Any) -> list[Series]:
    """The series of a metric ``query_range``'s ``matrix`` answer; ValueError for any other answer,
    or a point that is not a time and a finite number."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise ValueError(f"unexpected answer: {str(payload)[:200]}")
    data = payload.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected resultType 'matrix', got {data.get('resultType')!r}")
    series = []
    for result in data.get("result") or []:
        labels = {str(k): str(v) for k, v in (result.get("metric") or {}).items()}
        points = []
        for point in result.get("values") or []:
            try:
                # Loki writes the time in seconds with up to 3 decimals: round to whole ms.
                at, value = round(float(point[0]) * 1000) * 1_000_000, float(point[1])
            except (IndexError, TypeError, ValueError):
                raise ValueError(f"a point that is not [time, value]: {str(point)[:200]}") from None
            if not math.isfinite(value):
                raise ValueError(f"point value {value!r} is not a finite number")
            points.append((at, value))
        series.append(Series(labels, tuple(points)))
    return series


def _keys_at(entries: list[QueriedEntry], ts_ns: int) -> Counter[tuple[Any, ...]]:
    """Keys (with multiplicity) of the collected entries at ``ts_ns``: they sit at the end."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for entry in reversed(entries):
        if entry.ts_ns != ts_ns:
            break
        keys[entry.key] += 1
    return keys


def _error_message(answer: Answer) -> str:
    """Loki's own words: its error bodies are plain text, some proxies answer JSON."""
    text = answer.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or answer.reason or "no message"
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return body[key][:500]
    return text[:500]


Getter = Callable[[str, dict[str, str], float], Answer]


def _plain_getter(settings: LokiSettings, headers: dict[str, str]) -> Getter:
    getter = LokiGetter(settings, headers)
    return lambda url, params, timeout: getter.get(urlsplit(url).path, params, timeout)


def _requests_getter(settings: LokiSettings, headers: dict[str, str]) -> Getter:
    """GETs through requests, which honours HTTP(S)_PROXY, ALL_PROXY and NO_PROXY."""
    import requests

    session = requests.Session()
    session.headers.update(headers)
    session.auth = settings.basic_auth
    session.verify = settings.tls_verify

    def get(url: str, params: dict[str, str], timeout: float) -> Answer:
        try:
            response = session.get(url, params=params, timeout=timeout)
        except requests.RequestException as exc:
            raise TransportError(str(exc)) from None
        return Answer(response.status_code, response.reason or "", response.text)

    return get
