"""The reference tables (docs/reference.md) say what the code does: keys, labels, metadata, headers and
metrics are checked against ``correlation.schema`` and the live metric definitions."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from correlation import metrics, schema
from correlation.loki.handler import LokiHandler
from correlation.metrics.family import Family
from tests.support import REPO

pytestmark = pytest.mark.unit

REFERENCE = REPO / "docs" / "reference.md"


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` (cells without their backquotes)."""
    text = REFERENCE.read_text()
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    assert rows, f"no table under {heading!r}"
    return rows[1:]  # without the header row


def test_line_keys_are_the_schemas() -> None:
    keys = [row[0] for row in _table("## Log lines")]
    assert keys == [*schema.LINE_KEYS, schema.STACK, *schema.ACCESS_KEYS]
    assert f"logger `{schema.ACCESS_LOGGER}`" in REFERENCE.read_text()


def test_stream_labels_and_metadata_are_the_schemas() -> None:
    rows = _table("## Loki streams")
    assert [name for name, kind, _ in rows if kind == "label"] == list(schema.STREAM_LABELS)
    metadata = [name for name, kind, _ in rows if kind == "structured metadata"]
    assert metadata == [*schema.METADATA_FIELDS, *schema.OPTIONAL_METADATA_FIELDS]


def test_headers_are_the_schemas() -> None:
    headers = [row[0] for row in _table("## HTTP headers")]
    assert headers == [
        schema.CORRELATION_HEADER,
        schema.REQUEST_ID_HEADER,
        schema.PARENT_HEADER,
        schema.CALLER_HEADER,
        schema.TRACEPARENT_HEADER,
        schema.TRACESTATE_HEADER,
        schema.SERVICE_HEADER,
    ]


def _exposed() -> dict[str, tuple[str, list[str]]]:
    """Metric name as scraped (counters with ``_total``) -> (type, label names), from the code."""
    found: dict[str, tuple[str, list[str]]] = {}
    defined: list[Family] = [
        metrics.REQUEST_DURATION,
        metrics.SERVER_ERRORS,
        metrics.IN_FLIGHT,
        metrics.CLIENT_DURATION,
        metrics.LAST_FAILED,
        metrics.REJECTED_IDS,
        metrics.UNSHARED,
    ]
    for metric in defined:
        (family,) = metric.describe()  # the type as exposed ("newest" is a gauge)
        found[metric.name + ("_total" if family.type == "counter" else "")] = (family.type, list(metric.labelnames))
    registry = CollectorRegistry()
    handler = LokiHandler(url="http://127.0.0.1:9", labels={"service_name": "s", "env": "e"}, registry=registry)
    try:
        for family in registry.collect():  # only the shipper's collector is in this registry
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = sorted({key for sample in family.samples for key in sample.labels})
            found[name] = (family.type, labels)
    finally:
        handler.close()
    return found


def test_the_metrics_table_matches_the_code() -> None:
    table = {row[0]: (row[1], [label.strip() for label in row[2].split(",")]) for row in _table("## Metrics")}
    exposed = _exposed()
    library = {name: value for name, value in table.items() if not re.match(r"celery_|task_", name)}
    assert set(library) == set(exposed), "every metric the library exposes is in the table, and only those"
    for name, (kind, labels) in exposed.items():
        assert table[name][0] == kind, name
        assert sorted(table[name][1]) == sorted(labels), name
