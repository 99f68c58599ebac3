"""Gauges, each with its mode across workers (documented in docs/library.md, "Several workers"):

- :class:`Gauge`: set, moved, or read from a function at scrape time; across workers the sum over
  the live ones (a dead worker's in-flight requests are not in flight any more).
- :class:`MaxGauge`, :class:`MinGauge`: the same, but across workers the largest, or the smallest,
  over the live ones (a process's open files, held against its own limit). A :class:`MinGauge` is
  for values that are never 0: a 0 is a series not sampled yet, left out.
- :class:`NewestGauge`: one series per key (the first label values, say the service), whose other
  labels change with the value (the last failed request's ID); across workers the series with the
  highest value (the newest, when the value is a time), dead workers' included.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence

from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from correlation.metrics import shared
from correlation.metrics.family import Child, Family
from correlation.metrics.shared import GAUGE, GAUGE_MAX, GAUGE_MIN, NEWEST, NEWEST_TEXT, Region

_pack_double = shared._DOUBLE.pack_into  # noqa: SLF001


class GaugeChild(Child):
    __slots__ = ("_value", "_lock", "_function", "_region")

    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()
        self._function: Callable[[], float] | None = None
        self._region: Region | None = None

    def set(self, value: float) -> None:
        with self._lock:
            self._store(float(value))

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._store(self._value + amount)

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set_function(self, function: Callable[[], float]) -> None:
        """The value is ``function()`` at each scrape (sampled into the file when shared)."""
        self._function = function

    def _store(self, value: float) -> None:
        self._value = value

    @property
    def value(self) -> float:
        function = self._function
        return float(function()) if function is not None else self._value

    def sample(self) -> None:
        if self._function is not None:
            self.set(self._function())

    def data(self) -> float:
        return self.value

    def attach(self, region: Region) -> None:
        with self._lock:
            self._region = region
            self.__class__ = SharedGaugeChild
            self._store(0.0)


class SharedGaugeChild(GaugeChild):
    __slots__ = ()

    def _store(self, value: float) -> None:
        self._value = value
        _pack_double(self._region.mm, self._region.offset, value)  # type: ignore[union-attr]


class Gauge(Family[GaugeChild]):
    kind = GAUGE

    def new_child(self) -> GaugeChild:
        return GaugeChild()

    def sample(self) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.sample()


class MaxGauge(Gauge):
    kind = GAUGE_MAX


class MinGauge(Gauge):
    kind = GAUGE_MIN


class NewestChild(Child):
    __slots__ = ("_labels", "_value", "_lock", "_region")

    def __init__(self) -> None:
        self._labels: tuple[str, ...] | None = None
        self._value = 0.0
        self._lock = threading.Lock()
        self._region: Region | None = None

    def set(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._labels, self._value = labels, value
            if self._region is not None:
                text = json.dumps(labels).encode()
                if len(text) > NEWEST_TEXT:  # labels far longer than any route: cut each value
                    text = json.dumps([v[:100] for v in labels]).encode()
                shared.write_slot(self._region.mm, self._region.offset, text, value, value)

    def data(self) -> tuple[tuple[str, ...], float] | None:
        with self._lock:
            return None if self._labels is None else (self._labels, self._value)

    def attach(self, region: Region) -> None:
        with self._lock:
            self._labels, self._value, self._region = None, 0.0, region


class NewestGauge(Family[NewestChild]):
    """``NewestGauge(name, documentation, labelnames, key_labels=1)``: ``set(labels, value)``
    replaces the series of the same first ``key_labels`` label values."""

    kind = NEWEST

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        key_labels: int = 1,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.full_labelnames = tuple(labelnames)
        self.key_labels = key_labels
        super().__init__(name, documentation, self.full_labelnames, registry)
        self.key_length = key_labels

    def new_child(self) -> NewestChild:
        return NewestChild()

    def set(self, labels: Sequence[str], value: float) -> None:
        values = tuple(str(v) for v in labels)
        if len(values) != len(self.full_labelnames):
            raise ValueError(f"{self.name}: expected labels {self.full_labelnames}, got {values!r}")
        self.labels(*values[: self.key_labels]).set(values, value)
