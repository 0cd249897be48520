"""`python -m orchestrator compare A B`: match the cells of two runs, ratio each metric, and flag
the differences larger than the runs' own measured spread.

A and B are each a run id (or a unique prefix of one, or `latest` / `previous`: the newest run
and the one before it, run ids being timestamps) found in `--results`, or a results directory
(then its latest attempt of every cell). Only ok rows are compared.

Matching: cells are matched on their parameter columns (grid axes, measurement settings and
model identity) that vary *within* A or within B. A parameter constant in each run but different
between them (another model seed, another commit's checkpoint, `--set measure.repeats=5`) is what
is being compared: it is reported in the header, not used to match. `--on COLS` overrides this.

Flagging: for each metric with values a (A) and b (B) and standard deviations sa, sb,

    flagged  <=>  |b - a| > k * sqrt(sa^2 + sb^2)   and   |b - a| / |a| > min_change

with k = 3 (DEFAULT_K) and min_change = 2% (DEFAULT_MIN_CHANGE). The spread comes from each
run's own measurements: for decode metrics the larger of the per-repeat CV (`decode_tok_s_cv`) and
the standard error of the mean step (`decode_step_ms_cv / sqrt(steps)`, from the raw
`decode_step_ms` list); for TTFT and prefill the per-repeat `ttft_ms_cv`. Peak memory has no
measured spread, so it is flagged on min_change alone, and only on a GPU: on a CPU it is the
process's peak RSS growth, a lower bound (memory the allocator already held is reused without
growing the resident set), so it is shown and never flagged. The output's `noise ±%` column is
the noise band of each line: the relative change, in percent, that a metric needed to be flagged,
100 * max(k * sqrt(sa^2 + sb^2) / |a|, min_change).

Hardware: a line is compared only when its A and B rows ran on one hardware identity
(orchestrator/reports/hardware.py); otherwise it shows both values, no ratio, and `change` says
"other hw" (`any_hardware=True`, `compare --any-hardware`, compares anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import QueryError, ResultsError
from orchestrator.reports.dataset import PEAK_COLUMN, latest_attempts, load_results, ok_rows
from orchestrator.reports.hardware import HARDWARE_COLUMNS, hardware_id
from orchestrator.reports.query import distinct
from orchestrator.run.storage import is_uri
from workers.record import MODEL_KEYS, PARAM_KEYS

DEFAULT_K = 3.0
DEFAULT_MIN_CHANGE = 0.02
NOISE = "noise ±%"  # the column: the change (in percent) a line needed to be flagged
STEP_COUNT = "decode_steps"  # what a side's rows hold instead of the `decode_step_ms` list
OTHER_HW = "other hw"  # `change` of a line whose A and B rows ran on different hardware
MATCH_CANDIDATES = (*PARAM_KEYS, *(f"model_{k}" for k in MODEL_KEYS))
# metric -> (higher is better, how its relative spread is measured)
METRICS: dict[str, tuple[bool, str]] = {
    "decode_tok_s": (True, "decode"),
    "decode_step_ms_mean": (False, "decode"),
    "ttft_ms": (False, "ttft"),
    "prefill_tok_s": (True, "ttft"),
    PEAK_COLUMN: (False, "none"),
}


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label and its ok rows (one per cell)."""

    label: str
    rows: list[dict]


def relative_spread(row: dict, kind: str) -> float:
    """The relative standard deviation of a metric of one row (0 when nothing was measured).

    >>> relative_spread({"ttft_ms_cv": 0.05}, "ttft")
    0.05
    >>> relative_spread({"decode_tok_s_cv": 0.01, "decode_step_ms_cv": 0.2,
    ...                  "decode_step_ms": [1.0] * 100}, "decode")
    0.02
    """
    if kind == "ttft":
        return float(row.get("ttft_ms_cv") or 0.0)
    if kind == "decode":
        steps = row.get(STEP_COUNT)
        steps = len(row.get("decode_step_ms") or []) if steps is None else steps
        sem = (row.get("decode_step_ms_cv") or 0.0) / math.sqrt(steps) if steps else 0.0
        return max(float(row.get("decode_tok_s_cv") or 0.0), sem)
    return 0.0


def is_flagged(
    a: float,
    b: float,
    sa: float,
    sb: float,
    *,
    k: float = DEFAULT_K,
    min_change: float = DEFAULT_MIN_CHANGE,
) -> bool:
    """Whether b differs from a beyond k combined standard deviations and min_change.

    >>> is_flagged(100.0, 200.0, 5.0, 10.0), is_flagged(100.0, 101.0, 5.0, 5.0)
    (True, False)
    """
    diff = abs(b - a)
    return diff > k * math.hypot(sa, sb) and diff > min_change * abs(a)


# what a comparison reads besides the metrics (their spreads, matching, hardware, latest attempt)
SPREAD_COLUMNS = ("decode_tok_s_cv", "decode_step_ms_cv", "decode_step_ms", "ttft_ms_cv")
ROW_COLUMNS = ("run_id", "job_name", "cell_id", "attempt", "status", "finished_at")


def needed_columns(metrics: tuple[str, ...] = tuple(METRICS), on: tuple[str, ...] = ()) -> list:
    """The columns `compare` reads (never `generated_ids` and the like)."""
    return list(
        dict.fromkeys(
            [*ROW_COLUMNS, *MATCH_CANDIDATES, *on, *metrics, *SPREAD_COLUMNS, *HARDWARE_COLUMNS]
        )
    )


def resolve_side(arg: str, results: Path | str | None, columns: list[str] | None = None) -> Side:
    """A results directory or storage URI, or a run id (unique prefix, `latest`, `previous`) in
    `results`; `columns`: read only these (None: all)."""
    if is_uri(arg) or Path(arg).is_dir():
        name = arg if is_uri(arg) else str(Path(arg))
        return Side(name, ok_rows(_step_counts(load_results(arg, latest=True, columns=columns))))
    if results is None:
        raise ResultsError(f"{arg}: not a directory; to compare run ids, pass --results DIR")
    ids = load_results(results, columns=["run_id"])  # which runs there are: one small column
    runs = distinct(ids, "run_id") if "run_id" in ids.column_names else []  # oldest first
    aliases = {"latest": runs[-1:], "previous": runs[-2:-1]}
    matches = (
        aliases.get(arg) or [r for r in runs if r == arg] or [r for r in runs if r.startswith(arg)]
    )
    if len(matches) != 1:
        what = "is ambiguous" if matches else "is not a directory nor a run id"
        raise QueryError(f"{arg} {what} in {results}; runs: {', '.join(runs) or 'none'}")
    table = load_results(results, columns=columns, filter=pc.field("run_id") == matches[0])
    return Side(matches[0], ok_rows(_step_counts(latest_attempts(table))))


def _step_counts(table: pa.Table) -> pa.Table:
    """`decode_step_ms` replaced by its length (STEP_COUNT): the spread needs only the count,
    and 100k rows of step lists as Python floats take gigabytes."""
    if "decode_step_ms" not in table.column_names:
        return table
    i = table.column_names.index("decode_step_ms")
    return table.set_column(i, STEP_COUNT, pc.list_value_length(table["decode_step_ms"]))


def match_keys(a: list[dict], b: list[dict]) -> tuple[list[str], dict[str, tuple]]:
    """(the columns to match on, {column: (A value, B value)} for what differs between runs)."""
    keys, differs = [], {}
    for col in MATCH_CANDIDATES:
        va = {repr(r.get(col)) for r in a}
        vb = {repr(r.get(col)) for r in b}
        if len(va) > 1 or len(vb) > 1:
            keys.append(col)
        elif va and vb and va != vb:
            differs[col] = (a[0].get(col), b[0].get(col))
    return keys, differs


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """The result: one line per (cell, metric), and what could not be matched."""

    keys: list[str]
    differs: dict[str, tuple]
    lines: list[dict]
    only_a: int
    only_b: int
    other_hw: list[tuple[str, str]]  # (A's hardware, B's) of each cell not compared for it

    @property
    def flagged(self) -> list[dict]:
        return [line for line in self.lines if line["change"] in ("better", "worse")]


def lower_bound(metric: str, row: dict) -> bool:
    """Whether a metric of a row is only a lower bound (peak memory measured as CPU RSS growth).

    >>> lower_bound("peak_bytes", {"peak_rss_growth_bytes": 5}), lower_bound("ttft_ms", {})
    (True, False)
    """
    return metric == PEAK_COLUMN and row.get("peak_allocated_bytes") is None


def compare_line(
    line: dict, ra: dict, rb: dict, metric: str, *, k: float, min_change: float
) -> None:
    """Fill the ratio, noise band and change of one (cell, metric) line."""
    higher_better, kind = METRICS[metric]
    va, vb = line["A"], line["B"]
    if va is None or vb is None or not va:
        return
    line["B/A"] = round(vb / va, 4)
    if lower_bound(metric, ra) or lower_bound(metric, rb):
        return  # shown, never flagged
    sa, sb = abs(va) * relative_spread(ra, kind), abs(vb) * relative_spread(rb, kind)
    line[NOISE] = round(100 * max(k * math.hypot(sa, sb) / abs(va), min_change), 2)
    if is_flagged(va, vb, sa, sb, k=k, min_change=min_change):
        line["change"] = "better" if (vb > va) == higher_better else "worse"


def compare(
    a: Side,
    b: Side,
    *,
    metrics: tuple[str, ...] = tuple(METRICS),
    on: tuple[str, ...] = (),
    k: float = DEFAULT_K,
    min_change: float = DEFAULT_MIN_CHANGE,
    any_hardware: bool = False,
) -> Comparison:
    """Match the cells of two sides and compare their metrics (see the module docstring)."""
    if not a.rows or not b.rows:
        empty = a.label if not a.rows else b.label
        raise ResultsError(f"{empty}: no ok rows to compare")
    for m in metrics:
        if m not in METRICS:
            raise QueryError(f"--metrics {m!r}: expected some of {', '.join(METRICS)}")
    keys, differs = match_keys(a.rows, b.rows)
    if on:
        unknown = [c for c in on if c not in a.rows[0]]
        if unknown:
            raise QueryError(f"--on {unknown[0]!r}: not a column; columns: {', '.join(a.rows[0])}")
        keys = list(on)
    index_b = {tuple(r.get(c) for c in keys): r for r in b.rows}
    seen, lines, other_hw = set(), [], []
    for ra in sorted(a.rows, key=lambda r: order_key(tuple(r.get(c) for c in keys))):
        key = tuple(ra.get(c) for c in keys)
        rb = index_b.get(key)
        if rb is None:
            continue
        seen.add(key)
        hw = (hardware_id(ra), hardware_id(rb))
        if hw[0] != hw[1] and not any_hardware:
            other_hw.append(hw)
        for m in metrics:
            line = {**dict(zip(keys, key)), "metric": m, "A": ra.get(m), "B": rb.get(m)}
            line.update({"B/A": None, NOISE: None, "change": ""})
            if hw[0] != hw[1] and not any_hardware:
                line["change"] = OTHER_HW  # two machines: no ratio
            else:
                compare_line(line, ra, rb, m, k=k, min_change=min_change)
            lines.append(line)
    return Comparison(
        keys=keys,
        differs=differs,
        lines=lines,
        only_a=len(a.rows) - len(seen),
        only_b=len(b.rows) - len(seen),
        other_hw=other_hw,
    )


def order_key(key: tuple) -> tuple:
    """Sort key for mixed values: None last, numbers by value, text by text."""
    return tuple(
        (v is None, isinstance(v, str), 0 if isinstance(v, str) else v or 0, str(v)) for v in key
    )


def summary_line(result: Comparison, a: Side, b: Side) -> str:
    """One line: matched cells, unmatched cells and the flagged changes."""
    cells = len({tuple(line[c] for c in result.keys) for line in result.lines})
    worse = sum(1 for line in result.flagged if line["change"] == "worse")
    better = len(result.flagged) - worse
    line = (
        f"A = {a.label}, B = {b.label}: {cells} cells matched ({result.only_a} only in A, "
        f"{result.only_b} only in B); {len(result.flagged)} changes beyond the spread "
        f"({worse} worse, {better} better)"
    )
    if result.other_hw:
        pairs = sorted(set(result.other_hw))
        shown = "; ".join(f"A on {ha}, B on {hb}" for ha, hb in pairs[:3])
        more = f"; and {len(pairs) - 3} more" if len(pairs) > 3 else ""
        line += (
            f"; {len(result.other_hw)} cells ran on other hardware in B and were not compared "
            f"({shown}{more}; --any-hardware compares them anyway)"
        )
    return line
