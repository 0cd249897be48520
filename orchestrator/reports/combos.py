"""Distinct combinations of a few columns, in Arrow compute kernels only.

    codes, combos = distinct_rows(table, ["model_tag", "model_seed"])
    labels = pa.array([label(c) for c in combos]).take(codes)   # one label per row

A 100k-row summary has one model and a handful of machines: formatting a label per row in Python
would cost more than reading the rows, so a label is formatted per combination and spread back
with `take`. The per-row codes come from `dictionary_encode` of one string per row that stands
for the row's values (`joined_keys`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Each value is escaped (ESC doubled, SEP as ESC "s", null as ESC "n") before the values of a
# row are joined with SEP, so two different combinations never give one key.
_ESC, _SEP = "\x1b", "\x1f"


def joined_keys(table: pa.Table, columns: list[str]) -> pa.Array:
    """One string per row that equals another row's exactly when their `columns` are equal
    (null apart from ""; a missing column counts as null everywhere)."""
    parts = []
    for name in columns:
        if name not in table.column_names:
            continue
        text = pc.cast(table[name], pa.string())
        text = pc.replace_substring(text, _ESC, _ESC + _ESC)
        text = pc.replace_substring(text, _SEP, _ESC + "s")
        parts.append(pc.fill_null(text, _ESC + "n"))
    if not parts:
        return pa.array([""] * table.num_rows, pa.string())
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, _SEP)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def distinct_rows(table: pa.Table, columns: list[str]) -> tuple[pa.Array, pa.Array]:
    """(per row, the index of its combination of `columns`; per combination, the first row that
    has it). Combinations are numbered in first-seen order."""
    keys = joined_keys(table, columns)
    encoded = keys.dictionary_encode()
    return encoded.indices, pc.index_in(encoded.dictionary, value_set=keys)


def combos(table: pa.Table, columns: list[str]) -> tuple[pa.Array, list[dict]]:
    """(per row, the index of its combination; the combinations as dicts of `columns` with their
    original types, in first-seen order). Missing columns read as None."""
    codes, first = distinct_rows(table, columns)
    present = [c for c in columns if c in table.column_names]
    picked = table.select(present).take(first).to_pylist() if present else [{}] * len(first)
    return codes, [{**dict.fromkeys(columns), **row} for row in picked]
