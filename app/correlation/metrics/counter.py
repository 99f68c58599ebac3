"""A counter with the newest exemplar, exposed as prometheus_client's ``Counter`` is (``_total``,
``_created``, the exemplar on ``_total`` in OpenMetrics), and written through to the worker's file
once the process shares its metrics."""

from __future__ import annotations

import threading
import time

from correlation.metrics import shared
from correlation.metrics.family import Child, Family
from correlation.metrics.shared import COUNTER, EXEMPLAR_TEXT, Region

_pack_double = shared._DOUBLE.pack_into  # noqa: SLF001


class CounterChild(Child):
    __slots__ = ("_value", "_exemplar", "_lock", "created", "_region")

    def __init__(self) -> None:
        self._value = 0.0
        self._exemplar: tuple[str, float, float] | None = None
        self._lock = threading.Lock()
        self.created = time.time()
        self._region: Region | None = None

    def inc(self, amount: float = 1.0, exemplar_value: str | None = None) -> None:
        """Add ``amount``; with ``exemplar_value`` (a correlation ID), it becomes the exemplar."""
        with self._lock:
            self._value += amount
            if exemplar_value is not None:
                self._exemplar = (exemplar_value, amount, time.time())

    def set_total(self, total: float) -> None:
        """For a count kept elsewhere and sampled (the shipper's): never lowers the counter."""
        with self._lock:
            if total > self._value:
                self._store(total)

    def _store(self, total: float) -> None:
        self._value = total

    @property
    def value(self) -> float:
        return self._value

    def data(self) -> tuple[float, float, tuple[str, float, float] | None]:
        with self._lock:
            return self.created, self._value, self._exemplar

    def attach(self, region: Region) -> None:
        with self._lock:
            self._value, self._exemplar, self.created = 0.0, None, time.time()
            self._region = region
            _pack_double(region.mm, region.offset, self.created)
            self.__class__ = SharedCounterChild


class SharedCounterChild(CounterChild):
    __slots__ = ()

    def inc(self, amount: float = 1.0, exemplar_value: str | None = None) -> None:
        mm, at = self._region  # type: ignore[misc]
        with self._lock:
            self._value += amount
            _pack_double(mm, at + 8, self._value)
            if exemplar_value is not None:
                now = time.time()
                self._exemplar = (exemplar_value, amount, now)
                shared.write_slot(mm, at + 16, exemplar_value.encode()[:EXEMPLAR_TEXT], amount, now)

    def _store(self, total: float) -> None:
        self._value = total
        mm, at = self._region  # type: ignore[misc]
        _pack_double(mm, at + 8, total)


class ExemplarCounter(Family[CounterChild]):
    """``ExemplarCounter(name, documentation, labelnames, exemplar_label="")``: ``name`` without
    ``_total``."""

    kind = COUNTER

    def new_child(self) -> CounterChild:
        return CounterChild()
