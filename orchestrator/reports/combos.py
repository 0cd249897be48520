"""Distinct combinations of a few columns, in Arrow compute kernels only.

    codes, machines = combos(table, ["device", "hostname"])
    labels = pa.array([label(m) for m in machines]).take(codes)   # one label per row

A 100k-row summary has one model and a handful of machines: formatting a label per row in Python
would cost more than reading the rows, so a label is formatted per combination and spread back
with `take`. Each column is dictionary-encoded on its own and the codes are combined one column
at a time (renumbered after each, so they stay below the number of rows): integer arithmetic,
no string building and no `group_by`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def distinct_rows(table: pa.Table, columns: list[str]) -> tuple[pa.Array, pa.Array]:
    """(per row, the index of its combination of `columns`; per combination, the first row that
    has it). Combinations are numbered in first-seen order; null is a value of its own and a
    missing column is null everywhere.

    >>> codes, first = distinct_rows(pa.table({"a": ["x", "y", "x", None], "b": [1, 2, 1, 2]}),
    ...                              ["a", "b"])
    >>> codes.to_pylist(), first.to_pylist()
    ([0, 1, 0, 2], [0, 1, 3])
    """
    codes = pa.array([0] * table.num_rows, pa.int64())
    for name in columns:
        if name not in table.column_names:
            continue
        column = table[name].combine_chunks()
        encoded = column.dictionary_encode(null_encoding="encode")
        width = max(len(encoded.dictionary), 1)
        combined = pc.add(pc.multiply(codes, width), encoded.indices.cast(pa.int64()))
        codes = combined.dictionary_encode().indices.cast(pa.int64())  # back below num_rows
    encoded = codes.dictionary_encode()  # first-seen order
    return encoded.indices, pc.index_in(encoded.dictionary, value_set=codes)


def combos(table: pa.Table, columns: list[str]) -> tuple[pa.Array, list[dict]]:
    """(per row, the index of its combination; the combinations as dicts of `columns` with their
    original types, in first-seen order). Missing columns read as None."""
    codes, first = distinct_rows(table, columns)
    present = [c for c in columns if c in table.column_names]
    picked = table.select(present).take(first).to_pylist() if present else [{}] * len(first)
    return codes, [{**dict.fromkeys(columns), **row} for row in picked]
