"""`summarize --pivot ROWS --columns COLS --values METRIC [--ratio A/B]`: any two axes as a table.

    summarize results/sweep --pivot batch_size,prompt_len --columns method --values decode_tok_s \\
        --ratio cached/naive

Rows are the distinct combinations of the ROWS columns, one output column per combination of
the COLS values, each cell the METRIC of the matching ok rows (latest attempt per cell; several
rows in one cell are combined with --agg, mean by default). `--ratio A/B` adds, for every
combination of the other column axes, the column "A/B": the value under A divided by the value
under B, where A and B are two values of one of the COLS axes (the speedup of cached over naive).
A ratio divides two measurements only when every row under A and under B ran on one hardware
identity (orchestrator/reports/hardware.py); otherwise it is left empty and a note says why.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from orchestrator.errors import QueryError
from orchestrator.reports.hardware import HARDWARE_COLUMNS, hardware_id
from orchestrator.reports.where import unknown_column

COMBINE: dict[str, Callable[[list[float]], float]] = {
    "mean": statistics.fmean,
    "median": statistics.median,
    "min": min,
    "max": max,
}


@dataclass(frozen=True, kw_only=True)
class PivotSpec:
    """What to pivot; the defaults give decode tok/s per method by batch size and prompt length."""

    rows: tuple[str, ...] = ("batch_size", "prompt_len")
    columns: tuple[str, ...] = ("method",)
    values: str = "decode_tok_s"
    ratio: tuple[str, str] | None = None  # (numerator value, denominator value)
    agg: str = "mean"

    def __post_init__(self) -> None:
        if not self.rows or not self.columns:
            raise QueryError("--pivot and --columns each need at least one column")
        if set(self.rows) & set(self.columns):
            raise QueryError(
                f"--pivot and --columns share {sorted(set(self.rows) & set(self.columns))}"
            )
        if self.agg not in COMBINE:
            raise QueryError(f"--agg {self.agg!r}: expected one of {', '.join(COMBINE)}")


def parse_ratio(text: str | None) -> tuple[str, str] | None:
    """'cached/naive' -> ('cached', 'naive').

    >>> parse_ratio("cached/naive")
    ('cached', 'naive')
    """
    if not text:
        return None
    num, sep, den = text.partition("/")
    if not sep or not num.strip() or not den.strip():
        raise QueryError(f"--ratio {text!r}: expected A/B, e.g. --ratio cached/naive")
    return num.strip(), den.strip()


def _label(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _ratio_axis(spec: PivotSpec, keys: list[tuple]) -> int:
    num, den = spec.ratio
    for i, axis in enumerate(spec.columns):
        values = {_label(k[i]) for k in keys}
        if num in values and den in values:
            return i
    raise QueryError(
        f"--ratio {num}/{den}: no --columns axis has both values; "
        + "; ".join(
            f"{axis} has {', '.join(sorted({_label(k[i]) for k in keys}))}"
            for i, axis in enumerate(spec.columns)
        )
    )


def pivot(table: pa.Table, spec: PivotSpec, notes: list[str] | None = None) -> list[dict]:
    """The pivot table as a list of dicts (see the module docstring).

    >>> t = pa.table({"b": [1, 1, 8, 8], "method": ["naive", "cached"] * 2,
    ...               "decode_tok_s": [10.0, 30.0, 20.0, 100.0]})
    >>> pivot(t, PivotSpec(rows=("b",), ratio=("cached", "naive")))
    [{'b': 1, 'naive': 10.0, 'cached': 30.0, 'cached/naive': 3.0}, {'b': 8, 'naive': 20.0, 'cached': 100.0, 'cached/naive': 5.0}]
    """
    for name in (*spec.rows, *spec.columns, spec.values):
        if name not in table.column_names:
            raise unknown_column(name, table.schema)
    typ = table.schema.field(spec.values).type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise QueryError(f"--values {spec.values}: not a numeric column ({typ})")
    cells: OrderedDict[tuple, OrderedDict[tuple, list]] = OrderedDict()
    hardware: dict[tuple, set[str]] = {}  # (row key, column key) -> hardware ids of its rows
    col_keys: list[tuple] = []
    hw_cols = [c for c in HARDWARE_COLUMNS if c in table.column_names]
    wanted = list(dict.fromkeys([*spec.rows, *spec.columns, spec.values, *hw_cols]))
    for row in table.select(wanted).to_pylist():
        rk = tuple(row[c] for c in spec.rows)
        ck = tuple(row[c] for c in spec.columns)
        if ck not in col_keys:
            col_keys.append(ck)
        if row[spec.values] is not None:
            cells.setdefault(rk, OrderedDict()).setdefault(ck, []).append(row[spec.values])
            hardware.setdefault((rk, ck), set()).add(hardware_id(row))
    col_keys.sort(key=_sort_key)
    if spec.ratio and len(spec.columns) == 1:  # put the ratio's denominator first: naive, cached
        col_keys.sort(key=lambda k: _label(k[0]) != spec.ratio[1])
    combine = COMBINE[spec.agg]

    def name(ck: tuple) -> str:
        return "/".join(_label(v) for v in ck)

    ratios: list[tuple[str, tuple, tuple]] = []
    if spec.ratio:
        axis = _ratio_axis(spec, col_keys)
        num, den = spec.ratio
        for ck in col_keys:
            if _label(ck[axis]) != den:
                continue
            top = next(
                (
                    k
                    for k in col_keys
                    if _label(k[axis]) == num and _others(k, axis) == _others(ck, axis)
                ),
                None,
            )
            if top is not None:
                rest = "/".join(_label(v) for v in _others(ck, axis))
                ratios.append((f"{num}/{den}" + (f" ({rest})" if rest else ""), top, ck))
    out, mixed = [], []
    for rk in sorted(cells, key=_sort_key):
        values = {ck: combine(v) for ck, v in cells[rk].items()}
        line: dict = dict(zip(spec.rows, rk))
        line.update({name(ck): values.get(ck) for ck in col_keys})
        for label, top, bottom in ratios:
            a, b = values.get(top), values.get(bottom)
            line[label] = a / b if a is not None and b else None
            hw_a, hw_b = hardware.get((rk, top), set()), hardware.get((rk, bottom), set())
            if line[label] is not None and (len(hw_a | hw_b) > 1):
                line[label] = None  # two machines: no ratio
                where = " ".join(f"{c}={_label(v)}" for c, v in zip(spec.rows, rk))
                mixed.append(
                    f"{where} ({name(top)} on {', '.join(sorted(hw_a))}; "
                    f"{name(bottom)} on {', '.join(sorted(hw_b))})"
                )
        out.append(line)
    if mixed and notes is not None:
        more = f"; and {len(mixed) - 3} more" if len(mixed) > 3 else ""
        notes.append(
            f"mixed hw: {len(mixed)} ratio(s) left empty where the two sides ran on different "
            f"hardware: {'; '.join(mixed[:3])}{more}"
        )
    return out


def _others(key: tuple, axis: int) -> tuple:
    return key[:axis] + key[axis + 1 :]


def _sort_key(key: tuple) -> tuple:
    return tuple(
        (v is None, isinstance(v, str), v if not isinstance(v, str) else 0, str(v)) for v in key
    )
