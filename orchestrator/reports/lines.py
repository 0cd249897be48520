"""One model's ok rows pivoted for its summary table: a line per setting, a column per method.

    lines = pivot(rows)                  # rows: an Arrow table with the HW column
    lines.keys, lines.key_rows           # ('batch_size', 'prompt_len', 'max_tokens'), [(1, 16, 16), ...]
    lines.field("cached", "decode_tok_s")   # an Arrow array over the lines (null: no cached row)

Lines are sorted by batch size, prompt length and new tokens (a stable sort, so extra keys such as
dtype keep the rows' order); on a line each method has its last row. Everything stays in Arrow
arrays, so orchestrator/reports/model_table.py builds a 50,000-line table with a few kernels per
column instead of a Python step per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.reports.combos import distinct_rows
from orchestrator.reports.hardware import letters

ROW_KEYS = ("batch_size", "prompt_len", "max_tokens")
EXTRA_KEYS = ("dtype", "temperature", "top_k")  # keys too, when they vary within the model
METHOD_ORDER = ("naive", "cached", "cached_graph")
BASELINE = "naive"  # speedups and token matches are against the oracle
HW = "_hardware"  # the column summary.py adds: each row's hardware identity
# what each method contributes to a line, and its type when no row has it (all null)
FIELDS = {
    "cell_id": pa.string(),
    "temperature": pa.float64(),
    "decode_tok_s": pa.float64(),
    "ttft_ms": pa.float64(),
    "peak_allocated_bytes": pa.int64(),
    "peak_rss_growth_bytes": pa.int64(),
    "kv_cache_bytes": pa.int64(),
    "tokens_sha256": pa.string(),
    "n_generated": pa.int64(),
    "generated_ids": pa.list_(pa.list_(pa.int64())),
    HW: pa.string(),
}


@dataclass
class Lines:
    """A line per setting (`key_rows`, values of `keys`) and, per method, its FIELDS over the
    lines as Arrow arrays (null where the method has no row on a line)."""

    keys: tuple[str, ...]
    key_columns: list[pa.Array]  # one per key, over the lines
    methods: list[str]
    fields: dict[str, pa.Table]  # method -> its FIELDS over the lines
    names: dict[str, str]  # hardware identity -> letter

    def __len__(self) -> int:
        return len(self.key_columns[0]) if self.key_columns else 0

    def field(self, method: str, name: str) -> pa.Array:
        table = self.fields[method]
        if name not in table.column_names or pa.types.is_null(table.schema.field(name).type):
            return pa.nulls(len(self), FIELDS[name])
        return table[name].combine_chunks()

    def ran(self, method: str) -> pa.Array:
        """Whether `method` has a row on each line."""
        return pc.is_valid(self.field(method, HW))

    def key_row(self, line: int) -> tuple:
        return tuple(col[line].as_py() for col in self.key_columns)

    def versus(self) -> list[str]:
        """The methods compared with the naive oracle (none when naive did not run)."""
        return [m for m in self.methods if m != BASELINE] if BASELINE in self.methods else []


def pivot(rows: pa.Table) -> Lines:
    """One model's ok rows (latest attempts, with the HW column) as Lines."""
    extras = [k for k in EXTRA_KEYS if k in rows.column_names and _varies(rows[k])]
    keys = (*ROW_KEYS, *extras)
    needed = dict.fromkeys((*keys, "method", *FIELDS))
    rows = rows.select([c for c in needed if c in rows.column_names])
    present = [k for k in ROW_KEYS if k in rows.column_names]
    if present:
        rows = rows.take(pc.sort_indices(rows, [(k, "ascending", "at_start") for k in present]))
    line_of_row, first_rows = distinct_rows(rows, list(keys))
    firsts = rows.take(first_rows)
    key_columns = [_column(firsts, k) for k in keys]
    has_method = "method" in rows.column_names
    method_of = _column(rows, "method").cast(pa.string()) if has_method else pa.nulls(len(rows))
    methods = _ordered({str(m) for m in pc.unique(method_of).to_pylist()})
    wanted = rows.select([f for f in FIELDS if f in rows.column_names])
    fields = {
        m: wanted.take(_row_per_line(line_of_row, _is(method_of, m), len(first_rows)))
        for m in methods
    }
    names = letters(pc.unique(rows[HW]).to_pylist()) if HW in rows.column_names else {}
    return Lines(keys, key_columns, methods, fields, names)


def _varies(column: pa.ChunkedArray) -> bool:
    if pa.types.is_null(column.type):  # every value None
        return False
    return pc.count_distinct(column, mode="all").as_py() > 1


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows)
    return table[name].combine_chunks()


def _ordered(present: set[str]) -> list[str]:
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def _is(method_of: pa.Array, method: str) -> pa.Array:
    if method == "None":  # rows without a method
        return pc.is_null(method_of)
    return pc.fill_null(pc.equal(method_of, method), False)


def _row_per_line(line_of_row: pa.Array, mine: pa.Array, lines: int) -> pa.Array:
    """For each line, the index of the last row of `mine` on it, or null (`take` then gives a
    null row: the method did not run there)."""
    row_index = pa.array(range(len(line_of_row)), pa.int64()).filter(mine)
    line_index = line_of_row.filter(mine)
    if len(line_index) == lines and pc.count_distinct(line_index).as_py() == lines:
        return row_index.take(pc.sort_indices(line_index))  # the usual case: every line once
    slots: list[int | None] = [None] * lines
    for line, row in zip(line_index.to_pylist(), row_index.to_pylist()):
        slots[line] = row
    return pa.array(slots, pa.int64())
