"""What the library's metric types share: children by label values, registration in a
prometheus_client registry as a collector, and a region in the shared file per child once the
process is activated (:mod:`correlation.metrics.store`).

A child has two classes with the same slots: the in-memory one, and its shared subclass whose
writes also store the new value in the file. Activation switches a child's class, so a child held
by a caller (a cache on the request path) starts writing through without a check per observation,
and the single-process path keeps its in-memory code unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from correlation.metrics import exposition, shared, store
from correlation.metrics.merge import FamilyKey
from correlation.metrics.shared import MetricsFile, Region


class Child:
    """One label set. Subclasses define ``data()`` (as :func:`shared.read_series` shapes it) and
    ``attach(region)`` (zero the memory, write the initial data, switch to the shared class)."""

    __slots__ = ()

    def data(self) -> Any:
        raise NotImplementedError

    def attach(self, region: Region) -> None:
        raise NotImplementedError


C = TypeVar("C", bound=Child)


class Family(Collector, Generic[C]):
    """``Family(name, documentation, labelnames)``; ``labels(*values)`` gives the child."""

    kind: ClassVar[str]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
        bounds: tuple[float, ...] = (),
        exemplar_label: str = "",
    ) -> None:
        self.name = name
        self.exemplar_label = exemplar_label
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.key_length = len(self.labelnames)  # label values that name a child
        self.bounds = bounds
        self._children: dict[tuple[str, ...], C] = {}
        self._lock = threading.Lock()
        self._file: MetricsFile | None = store.file  # where new children write, once shared
        store.families.add(self)
        if registry is not None:
            registry.register(self)

    def new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: object) -> C:
        if len(values) != self.key_length:
            raise ValueError(f"{self.name}: expected labels {self.labelnames[: self.key_length]}, got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self.new_child()
                    if self._file is not None:
                        child.attach(self._region(self._file, key))
                    self._children[key] = child
        return child

    def remove(self, *values: object) -> None:
        """Forget a label set in this process (a shared file keeps what it wrote)."""
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def _region(self, file: MetricsFile, values: tuple[str, ...]) -> Region:
        key = shared.series_key(*self.family_key[:4], values, self.bounds, self.exemplar_label)
        return file.allocate(key, shared.data_size(self.kind, len(self.bounds)))

    def share(self, file: MetricsFile) -> None:
        """Give every child a region in ``file`` (the process was just activated)."""
        with self._lock:
            self._file = file
            for values, child in self._children.items():
                child.attach(self._region(file, values))

    def sample(self) -> None:
        """Write values kept by functions (nothing for most families)."""

    def describe(self) -> list[Metric]:
        return [exposition.metric(self.family_key, {})]

    @property
    def family_key(self) -> FamilyKey:
        return (self.name, self.kind, self.documentation, self.labelnames, self.bounds, self.exemplar_label)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            children = list(self._children.items())
        yield exposition.metric(self.family_key, {values: child.data() for values, child in children})
