"""What one plot draws, from an Arrow table: a panel per `col` value, a line per combination of
`hue` and the other parameters that vary, at most MAX_PANELS panels of at most MAX_LINES lines.

A sweep of 3,125 prompt lengths would otherwise get 3,125 panels (or lines). Past a cap, values are
picked evenly across their sorted order, the smallest and largest included, and the plot says so
("prompt_len: 12 of 3,125 values shown"). Points are never averaged: every shown line has all of
its points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.reports.combos import distinct_rows
from orchestrator.reports.compare import MATCH_CANDIDATES, order_key

MAX_PANELS = 12
MAX_LINES = 10  # per panel (not counting reference lines): the colours matplotlib cycles through


@dataclass
class Series:
    """{panel value: {line label: [(x, y)]}} of the lines and of the reference (dashed) lines, in
    sorted order, and the notes on what the caps left out."""

    lines: dict[Any, dict[str, list]] = field(default_factory=dict)
    refs: dict[Any, dict[str, list]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def evenly(values: list, k: int) -> list:
    """k of the sorted `values`, evenly spaced, the first and last included (all if k >= len).

    >>> evenly(list(range(10)), 4), evenly([1, 2], 4)
    ([0, 3, 6, 9], [1, 2])
    """
    n = len(values)
    if n <= k:
        return values
    if k == 1:
        return values[:1]
    return [values[round(i * (n - 1) / (k - 1))] for i in range(k)]


def line_budget(counts: list[int], cap: int) -> list[int]:
    """How many values of each line key to keep so that their product is at most `cap`: the key
    with the most values is thinned first (on a tie the later one, so the hue stays richest).

    >>> line_budget([4, 4], 12), line_budget([3125, 4, 2], 12), line_budget([5, 2], 12)
    ([4, 3], [3, 2, 2], [5, 2])
    """
    sizes = [min(c, cap) for c in counts]
    while math.prod(sizes) > cap:
        i = max(range(len(sizes)), key=lambda j: (sizes[j], j))
        sizes[i] -= 1
    return sizes


def sorted_values(column: pa.ChunkedArray) -> list:
    """The distinct values of a column (None included), sorted as the plots order them."""
    return sorted(pc.unique(column).to_pylist(), key=lambda v: order_key((v,)))


def keep_values(table: pa.Table, name: str, values: list, cap: int) -> tuple[pa.Table, str | None]:
    """(the rows whose `name` is one of `cap` evenly picked `values`, a note) or (table, None)."""
    if len(values) <= cap:
        return table, None
    kept = pa.array(evenly(values, cap), table[name].type)
    table = table.filter(pc.is_in(table[name], value_set=kept, skip_nulls=False))
    return table, f"{name}: {cap} of {len(values):,} values shown"


def busiest_panel(table: pa.Table, col: str | None, keys: list[str]) -> int:
    """The most lines (distinct combinations of `keys`) any one panel has."""
    _, first = distinct_rows(table, [c for c in (col, *keys) if c])
    if not col:
        return len(first)
    counts = pc.value_counts(table[col].take(first)).field("counts")
    return max(counts.to_pylist(), default=0)


def split_columns(table: pa.Table, fixed: set) -> list[str]:
    """The parameters other than `fixed` that take more than one value (None is a value)."""
    return [
        c
        for c in MATCH_CANDIDATES
        if c not in fixed
        and c in table.column_names
        and pc.count_distinct(table[c], mode="all").as_py() > 1
    ]


def thin(table: pa.Table, col: str | None, keys: list[str]) -> tuple[pa.Table, list[str]]:
    """The rows of at most MAX_PANELS `col` values and MAX_LINES `keys` combinations per panel,
    and a note per thinned column."""
    notes = []
    if col:
        table, note = keep_values(table, col, sorted_values(table[col]), MAX_PANELS)
        notes += [note] if note else []
    if keys and busiest_panel(table, col, keys) > MAX_LINES:
        values = [sorted_values(table[k]) for k in keys]
        for key, vals, size in zip(keys, values, line_budget([len(v) for v in values], MAX_LINES)):
            table, note = keep_values(table, key, vals, size)
            notes += [note] if note else []
    return table, notes


def series(table: pa.Table, spec: Any) -> Series:
    """The panels and lines of `spec` (a PlotSpec) from the rows of `table`; a column it names
    that the table lacks reads as null."""
    for name in (spec.x, spec.y, spec.hue, spec.col, spec.reference):
        if name and name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    split = split_columns(table, {spec.x, spec.col, spec.hue})
    keys = ([spec.hue] if spec.hue else []) + split
    table = table.filter(pc.and_(pc.is_valid(table[spec.x]), pc.is_valid(table[spec.y])))
    table, notes = thin(table, spec.col, keys)
    return collect(table, spec, keys, split, notes)


def collect(table: pa.Table, spec: Any, keys: list[str], split: list[str], notes: list) -> Series:
    """Group the (already thinned) rows into panels and lines: one pass, then sorted."""
    n = table.num_rows
    names = [spec.col, *keys, spec.x, spec.y, spec.reference]
    columns = [table[c].to_pylist() if c else [None] * n for c in names]
    lines: dict = {}
    refs: dict = {}
    ref_from = len(keys) - len(split)  # the reference is per split value, not per hue value
    for panel, *key, x, y, ref in zip(*columns):
        lines.setdefault(panel, {}).setdefault(tuple(key), []).append((x, y / spec.yscale))
        if ref:
            refs.setdefault(panel, {}).setdefault(tuple(key[ref_from:]), set()).add(
                (x, ref / spec.yscale)
            )
    out = Series(notes=notes)
    for panel in sorted(lines, key=lambda v: order_key((v,))):
        out.lines[panel] = _labelled(lines[panel], keys, spec.y)
        out.refs[panel] = _labelled(refs.get(panel, {}), split, "", spec.reference_label)
    return out


def _labelled(groups: dict, keys: list[str], empty: str, prefix: str = "") -> dict[str, list]:
    """{label: sorted points} of {key values: points}, in key order (equal labels merge)."""
    out: dict[str, list] = {}
    for values, pts in sorted(groups.items(), key=lambda kv: order_key(kv[0])):
        out.setdefault(_label(keys, values, empty, prefix), []).extend(pts)
    return {label: sorted(pts) for label, pts in out.items()}


def _label(keys: list[str], values: tuple, empty: str, prefix: str = "") -> str:
    """'method=cached, max_tokens=16' (`empty` when there are no keys), after `prefix`."""
    text = ", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, values))
    if prefix:
        return f"{prefix}, {text}" if text else prefix
    return text or empty
