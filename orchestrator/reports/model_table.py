"""One model's summary table, built from its ok rows (an Arrow table): key columns, decode
tok/s per method, speedups over naive (only within one hardware identity), token matches, TTFT,
peak memory and KV-cache size. `orchestrator.reports.summary` groups rows by model and prints
these.

    table = build("d[2,4]-h[128,256] (random init, seed 0)", rows, fetch=None)
    table.columns   # layout.Column list; table.notes: lines printed under the table

The rows are pivoted into lines (orchestrator/reports/lines.py) and every column is computed
from Arrow arrays over the lines; Python steps in only for the rare lines that need a message
(a mismatch, mixed hardware).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.reports.hardware import legend
from orchestrator.reports.layout import Column
from orchestrator.reports.lines import BASELINE, HW, Lines, pivot
from orchestrator.reports.numbers import MISSING, fixed, fixed_array

# two-line names of the key columns in the terminal form ("batch" over "size")
SHORT_KEYS = {
    "batch_size": ("batch", "size"),
    "prompt_len": ("prompt", "len"),
    "max_tokens": ("max", "tokens"),
    "temperature": ("temp", ""),
}
MIB = 1024 * 1024
MIXED = "mixed hw"
NOTE_EXAMPLES = 3  # rows named in a note before "and N more"
# cell_ids -> {cell_id: generated_ids}: fetches the ids of mismatching cells only
FetchIds = Callable[[list[str]], dict[str, Any]]


def first_mismatch(a: list | None, b: list | None) -> int | None:
    """First generated-token index where any row of two id matrices differ (None if unknown).

    >>> first_mismatch([[1, 2, 3]], [[1, 2, 4]])
    2
    """
    if not a or not b or len(a) != len(b):
        return None
    width = max(max(len(x), len(y)) for x, y in zip(a, b))
    for i in range(width):
        if any(i >= len(x) or i >= len(y) or x[i] != y[i] for x, y in zip(a, b)):
            return i
    return None


def where_text(key: tuple, names: tuple[str, ...]) -> str:
    short = {"batch_size": "b", "prompt_len": "p", "max_tokens": "n"}
    return " ".join(f"{short.get(n, n)}={v}" for n, v in zip(names, key))


@dataclass(frozen=True, kw_only=True)
class ModelTable:
    """One model's table: its columns (key columns first) and the lines printed under it."""

    label: str
    columns: list[Column]
    hardware: str | None  # the one identity of every row, or None when rows differ
    row_hardware: list[str]  # per row: its identity, or "naive: X; cached: Y" when mixed
    notes: list[str]


def _differing(t: Lines, method: str) -> pa.Array:
    """Per line: whether naive's and `method`'s fingerprints say their tokens differ (null when
    a fingerprint is missing)."""
    sha_a, sha_b = t.field(BASELINE, "tokens_sha256"), t.field(method, "tokens_sha256")
    n_a, n_b = t.field(BASELINE, "n_generated"), t.field(method, "n_generated")
    other_length = pc.fill_null(pc.not_equal(n_a, n_b), False)
    differ = pc.or_(pc.not_equal(sha_a, sha_b), other_length)
    return pc.if_else(pc.and_(pc.is_valid(sha_a), pc.is_valid(sha_b)), differ, None)


def _mismatched_ids(t: Lines, fetch: FetchIds | None) -> dict:
    """The generated ids of the cells whose tokens differ from naive's (fetched once)."""
    if fetch is None:
        return {}
    wanted: set[str] = set()
    for m in t.versus():
        lines = pc.indices_nonzero(pc.fill_null(_differing(t, m), False)).to_pylist()
        for method in (BASELINE, m):
            cells, ids = t.field(method, "cell_id"), t.field(method, "generated_ids")
            wanted.update(cells[i].as_py() for i in lines if not ids[i].as_py())
    return fetch(sorted(wanted)) if wanted else {}


def _match_texts(t: Lines, method: str, fetched: dict[str, Any]) -> list[str]:
    both = pc.and_(t.ran(BASELINE), t.ran(method))
    sampled = pc.fill_null(pc.not_equal(t.field(BASELINE, "temperature"), 0), False)
    differ = _differing(t, method)
    texts = pc.if_else(
        pc.invert(both),
        MISSING,
        pc.if_else(sampled, "n/a (sampled)", pc.if_else(differ, "NO", "yes")),
    )
    texts = pc.fill_null(texts, MISSING).to_pylist()  # a missing fingerprint: no verdict
    for line in pc.indices_nonzero(pc.equal(pa.array(texts), "NO")).to_pylist():
        pos = first_mismatch(_ids(t, BASELINE, line, fetched), _ids(t, method, line, fetched))
        texts[line] = f"NO (from token {pos})" if pos is not None else "NO"
    return texts


def _ids(t: Lines, method: str, line: int, fetched: dict[str, Any]) -> Any:
    cell = t.field(method, "cell_id")[line].as_py()
    return fetched.get(cell) or t.field(method, "generated_ids")[line].as_py()


def _key_columns(t: Lines) -> list[Column]:
    cols = []
    for name, values in zip(t.keys, t.key_columns):
        top, bottom = SHORT_KEYS.get(name, (name, ""))
        raw = values.to_pylist()
        if pa.types.is_integer(values.type):  # the usual key column: formatted by Arrow
            texts = pc.fill_null(pc.cast(values, pa.string()), MISSING).to_pylist()
        else:
            texts = [_fmt_key(v) for v in raw]
        cols.append(Column(group=top, name=bottom, wide=name, values=texts, raw=raw, key=True))
    if len(t.names) > 1:  # the hardware of each line, as letters (a legend follows the table)
        per_method = [t.field(m, HW).to_pylist() for m in t.methods]
        per_line = [
            "/".join(dict.fromkeys(t.names[hw] for hw in line if hw is not None))
            for line in zip(*per_method)
        ]
        cols.append(Column(group="hw", name="", wide="hw", values=per_line, key=True, align="left"))
    return cols


def _metric_columns(t: Lines, group: str, values_of: Callable[[str], pa.Array], digits: int):
    cols = []
    for m in t.methods:
        values = values_of(m)
        texts = fixed(values, digits)
        cols.append(
            Column(group=group, name=m, wide=f"{group} {m}", values=texts, raw=values.to_pylist())
        )
    return cols


def _speedup(t: Lines, method: str, single: bool) -> tuple[Column, str | None]:
    """The speedup column of `method` over naive, and a note naming the mixed-hardware lines."""
    hw_a, hw_b = t.field(BASELINE, HW), t.field(method, HW)
    mixed = pc.fill_null(pc.not_equal(hw_a, hw_b), False)  # both ran, on different machines
    a, b = t.field(BASELINE, "decode_tok_s"), t.field(method, "decode_tok_s")
    usable = pc.and_(pc.and_(pc.not_equal(a, 0), pc.not_equal(b, 0)), pc.invert(mixed))
    ratio = pc.if_else(pc.fill_null(usable, False), pc.divide(b, a), None)
    texts = pc.binary_join_element_wise(fixed_array(ratio, 2), "x", "")  # null stays null
    texts = pc.if_else(mixed, MIXED, pc.fill_null(texts, MISSING)).to_pylist()
    raw = [None if r is None else round(r, 4) for r in ratio.to_pylist()]
    notes = []
    for line in pc.indices_nonzero(mixed).to_pylist():
        where = where_text(t.key_row(line), t.keys)
        left, right = t.names[hw_a[line].as_py()], t.names[hw_b[line].as_py()]
        notes.append(f"{where} ({BASELINE} on {left}, {method} on {right})")
    if single:
        col = Column(group="", name="speedup", wide="speedup", values=texts, raw=raw)
    else:
        col = Column(
            group="speedup vs naive", name=method, wide=f"speedup {method}", values=texts, raw=raw
        )
    return col, _mixed_note(method, notes)


def _mixed_note(method: str, lines: list[str]) -> str | None:
    if not lines:
        return None
    more = f" and {len(lines) - NOTE_EXAMPLES} more" if len(lines) > NOTE_EXAMPLES else ""
    return (
        f"{MIXED}: no {method} speedup where the two methods ran on different "
        f"hardware: {'; '.join(lines[:NOTE_EXAMPLES])}{more}"
    )


def build(label: str, rows: pa.Table, fetch: FetchIds | None) -> ModelTable:
    """The table of one model's ok rows (latest attempts, with the HW column)."""
    t = pivot(rows)
    versus = t.versus()
    single = versus == ["cached"]  # one method against naive: plain "speedup", "tokens match"
    ids = _mismatched_ids(t, fetch)
    cols = [*_key_columns(t), *_metric_columns(t, "decode tok/s", _field(t, "decode_tok_s"), 1)]
    notes = []
    for m in versus:
        col, note = _speedup(t, m, single)
        cols.append(col)
        notes += [note] if note else []
    for m in versus:
        group, name = ("tokens", "match") if single else ("tokens match", m)
        wide = "tokens match" if single else f"tokens match {m}"
        texts = _match_texts(t, m, ids)
        cols.append(Column(group=group, name=name, wide=wide, values=texts, align="left"))
    cols += _metric_columns(t, "TTFT ms", _field(t, "ttft_ms"), 2)
    cols += _metric_columns(t, "peak MiB", lambda m: _peak_mib(t, m), 1)
    kv_method = next((m for m in t.methods if m != BASELINE), None)
    if kv_method:
        cols += [_kv_column(t, kv_method)]
    if len(t.names) > 1:
        notes += legend(t.names)
    only = next(iter(t.names)) if len(t.names) == 1 else None
    return ModelTable(
        label=label, columns=cols, hardware=only, row_hardware=_row_hardware(t), notes=notes
    )


def _kv_column(t: Lines, method: str) -> Column:
    values = pc.divide(pc.cast(t.field(method, "kv_cache_bytes"), pa.float64()), MIB)
    return Column(
        group="KV", name="MiB", wide="KV MiB", values=fixed(values, 2), raw=values.to_pylist()
    )


def _row_hardware(t: Lines) -> list[str]:
    if len(t.names) == 1:  # one machine ran everything
        return [next(iter(t.names))] * len(t)
    out = []
    for line in zip(*(t.field(m, HW).to_pylist() for m in t.methods)):
        ids = {m: hw for m, hw in zip(t.methods, line) if hw is not None}
        distinct = set(ids.values())
        out.append(
            distinct.pop() if len(distinct) == 1 else "; ".join(f"{m}: {h}" for m, h in ids.items())
        )
    return out


def _peak_mib(t: Lines, method: str) -> pa.Array:
    """Peak device memory allocated (GPU), else the process's peak RSS growth (CPU), in MiB."""
    device = pc.cast(t.field(method, "peak_allocated_bytes"), pa.float64())
    process = pc.cast(t.field(method, "peak_rss_growth_bytes"), pa.float64())
    return pc.divide(pc.coalesce(device, process), MIB)


def _field(t: Lines, name: str) -> Callable[[str], pa.Array]:
    return lambda method: t.field(method, name)


def _fmt_key(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:g}" if isinstance(value, float) else str(value)
