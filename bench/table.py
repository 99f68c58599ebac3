"""Aligned text tables for the benchmark results, with ratio and PASS/MISS helpers."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def mark(ok: bool | None) -> str:
    """PASS / MISS, or n/a when the check could not be made."""
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def ratio(value: float, base: float) -> float:
    return value / base if base else float("inf")


def fmt(value: Any, digits: int = 1) -> str:
    """Numbers with thousands separators; floats with ``digits`` decimals; others as str."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if value in (float("inf"), float("-inf")):
            return "inf"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def fmt_ratio(value: float) -> str:
    if value != value:
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """Render ``rows`` under ``headers``: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(cells[0]))
    out = [title, "=" * len(title), line(cells[0]), rule, *(line(r) for r in cells[1:])]
    out += [f"  {n}" for n in notes]
    return "\n".join(out)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> None:
    print(table(title, headers, rows, notes), end="\n\n", flush=True)


def targets_table(title: str, checks: Sequence[tuple[Any, ...]]) -> None:
    """Print ``(comparison, value, baseline, target text, ok)`` rows with the ratio value/baseline,
    or ``(comparison, value, baseline, target text, ok, ratio)`` with a ratio of their own (a
    median of per-round ratios is not the ratio of the medians).

    A baseline of None means the check is absolute (no ratio).
    """
    rows = []
    for name, v, b, target, ok, *given in checks:
        shown = given[0] if given else (None if b is None else ratio(v, b))
        rows.append((name, fmt(v), fmt(b), "-" if shown is None else fmt_ratio(shown), target, mark(ok)))
    print_table(title, ["comparison", "ours", "baseline", "ratio", "target", "result"], rows)
