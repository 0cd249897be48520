"""A job's rows as history series: one setting on one hardware identity, one point per commit.

    series = load_series("results/history")                    # decode tok/s, TTFT, speed-up
    s = series[0]; s.points[-1].value, s.points[-1].commit     # the newest commit's median
    s.points.value                                             # every point's median (numpy)

A series is one metric of one setting (every parameter column of the cell, settings.py) and one
method, on one hardware identity (hardware.py): rows of two machines never share a series. Its
points are the code versions the rows were measured at (the commit, a dirty tree apart from the
clean one), ordered by the commit's time where the rows record it, else by the earliest
`started_at` of the commit's rows. Each point pools every ok row of that setting at that commit:
`values` holds one value per row (per run), `value` is their median.

    speedup   a cached method's decode tok/s over naive's at the same commit, setting and
              hardware: runs paired by run_id when they share one (the usual case: one submit
              measures both), else over naive's median at that commit
    low/high  the point's interval: the hull of every run's value +- 2 x its within-run CV
              (the per-repeat `decode_tok_s_cv` / `ttft_ms_cv` each row records; for a speed-up
              both rows' CVs in quadrature); a run without a recorded CV adds its value alone.
              With several runs it spans the between-run spread too; cheap at 1M rows.

Everything is grouped in numpy (no Python per row): 1M rows make 2,000+ series of 1,000 points,
so `points` is a lazy sequence (PointColumns) that builds a CommitPoint only when indexed; the
statistics read its arrays (`values_by_point`, `value`) directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import QueryError, ResultsError
from orchestrator.reports.combos import distinct_rows
from orchestrator.reports.dataset import job_dirs
from orchestrator.reports.hardware import HARDWARE_COLUMNS, hardware_ids
from orchestrator.reports.settings import setting_columns
from orchestrator.run.store import ResultStore
from workers.record import Status

SPEEDUP = "speedup"
BASELINE_METHOD = "naive"
# metric -> (higher is better, the column holding its within-run CV)
METRICS: dict[str, tuple[bool, str | None]] = {
    "decode_tok_s": (True, "decode_tok_s_cv"),
    "ttft_ms": (False, "ttft_ms_cv"),
    "prefill_tok_s": (True, "ttft_ms_cv"),
    "decode_step_ms_mean": (False, "decode_tok_s_cv"),
    "e2e_ms": (False, None),
    SPEEDUP: (True, "decode_tok_s_cv"),
}
DEFAULT_METRICS = ("decode_tok_s", "ttft_ms", SPEEDUP)
CODE_COLUMNS = ("git_commit", "git_dirty", "git_commit_time", "code_version")
UNKNOWN_COMMIT = "unknown"
DIRTY_SUFFIX = "-dirty"
INTERVAL_CVS = 2.0  # low/high: value -+ this many within-run CVs


@dataclass(frozen=True)
class CommitPoint:
    """One code version of a series: every run's value there and their median."""

    commit: str  # bare sha ("unknown" when none)
    code_version: str
    dirty: bool
    commit_time: datetime | None
    first_started_at: datetime | None
    run_ids: tuple[str, ...]
    values: tuple[float, ...]  # one per run at this commit
    value: float  # their median
    low: float
    high: float


@dataclass(frozen=True, eq=False)
class Commits:
    """The code versions of a load, in order (shared by every series of that load)."""

    commit: np.ndarray  # object: bare sha
    code_version: np.ndarray  # object
    dirty: np.ndarray  # bool
    commit_time: np.ndarray  # datetime64[ms], NaT when unknown
    first_started_at: np.ndarray  # datetime64[ms], NaT when unknown


@dataclass(frozen=True, eq=False)
class PointColumns(Sequence):
    """A series' points as arrays; indexing builds CommitPoints (see the module docstring).

    `version[i]` indexes `commits`; point i's runs: `run_ids/values[offsets[i]:offsets[i+1]]`.
    """

    commits: Commits
    version: np.ndarray  # int64, one per point, ascending
    offsets: np.ndarray  # int64, len = points + 1
    run_ids: np.ndarray  # object
    values: np.ndarray  # float64, one per run
    value: np.ndarray  # float64 medians
    low: np.ndarray
    high: np.ndarray

    def __len__(self) -> int:
        return len(self.version)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        c, (a, b) = self.commits, (int(self.offsets[i]), int(self.offsets[i + 1]))
        v = int(self.version[i])
        return CommitPoint(
            commit=str(c.commit[v]),
            code_version=str(c.code_version[v]),
            dirty=bool(c.dirty[v]),
            commit_time=_datetime(c.commit_time[v]),
            first_started_at=_datetime(c.first_started_at[v]),
            run_ids=tuple(str(r) for r in self.run_ids[a:b]),
            values=tuple(float(x) for x in self.values[a:b]),
            value=float(self.value[i]),
            low=float(self.low[i]),
            high=float(self.high[i]),
        )

    def __iter__(self) -> Iterator[CommitPoint]:
        return (self[i] for i in range(len(self)))

    def commit_at(self, i: int) -> str:
        return str(self.commits.commit[int(self.version[i])])

    def values_by_point(self) -> list[np.ndarray]:
        """Each point's per-run values (views)."""
        return np.split(self.values, self.offsets[1:-1])


@dataclass(frozen=True)
class Series:
    """One metric of one setting and method on one hardware identity, over code versions."""

    series_id: str  # stable short hash of (metric, method, hardware, setting)
    metric: str  # "decode_tok_s" | "ttft_ms" | "speedup" | ...
    method: str  # for speedup: the cached method divided by naive
    hardware: str
    setting: dict  # non-null setting columns (model_tag, batch_size, prompt_len, ...)
    higher_is_better: bool
    points: Sequence[CommitPoint] = field(compare=False, repr=False)  # by code version time

    def medians(self) -> np.ndarray:
        """Every point's value (median), oldest first."""
        if isinstance(self.points, PointColumns):
            return self.points.value
        return np.array([p.value for p in self.points], dtype=float)

    def run_values(self) -> list[np.ndarray]:
        """Every point's per-run values, oldest first."""
        if isinstance(self.points, PointColumns):
            return self.points.values_by_point()
        return [np.asarray(p.values, dtype=float) for p in self.points]

    def commit(self, i: int) -> str:
        if isinstance(self.points, PointColumns):
            return self.points.commit_at(i)
        return self.points[i].commit


def series_id(metric: str, method: str, hardware: str, setting: dict) -> str:
    """A stable 12-hex-digit id of a series (same rows, same id, in any process).

    >>> series_id("ttft_ms", "naive", "cpu @ h", {"batch_size": 1})
    'ec5c361169f2'
    """
    key = json.dumps([metric, method, hardware, setting], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _datetime(value: np.datetime64) -> datetime | None:
    if np.isnat(value):
        return None
    ms = int(value.astype("datetime64[ms]").astype(np.int64))
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def read_rows(path: str | Path, metrics: Sequence[str]) -> pa.Table:
    """The ok rows of the job(s) at `path`, only the columns series need (no raw lists)."""
    value_columns: list[str] = []
    for m in metrics:
        if m not in METRICS:
            raise QueryError(f"unknown metric {m!r}; expected one of {', '.join(METRICS)}")
        column, cv = ("decode_tok_s" if m == SPEEDUP else m), METRICS[m][1]
        value_columns += [column, *([cv] if cv else [])]
    wanted = [
        "run_id",
        "status",
        "started_at",
        "method",
        *setting_columns(),
        *value_columns,
        *HARDWARE_COLUMNS,
        *CODE_COLUMNS,
    ]
    wanted = list(dict.fromkeys(wanted))
    tables = []
    for job_dir in job_dirs(path):
        store = ResultStore(job_dir)
        present = set(store.schema().names)
        cols = [c for c in wanted if c in present]
        table = store.read(cols, pc.field("status") == Status.OK.value).table
        if table is not None:
            tables.append(table)
    if not tables:
        raise ResultsError(f"{path}: no readable results files")
    table = pa.concat_tables(tables, promote_options="permissive")
    return table


def _column(table: pa.Table, name: str, typ: pa.DataType) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, typ)
    return table[name].combine_chunks().cast(typ)


def _ms(array: pa.Array) -> np.ndarray:
    """Timestamps as datetime64[ms] (NaT for null)."""
    ints = pc.cast(array.cast(pa.timestamp("ms", tz="UTC")), pa.int64())
    out = ints.to_numpy(zero_copy_only=False)
    out = np.where(pc.is_null(ints).to_numpy(zero_copy_only=False), np.iinfo(np.int64).min, out)
    return out.astype(np.int64).astype("datetime64[ms]")


def _versions(table: pa.Table) -> tuple[np.ndarray, Commits]:
    """(per row, the index of its code version in time order; the code versions)."""
    raw = pc.fill_null(_column(table, "git_commit", pa.string()), UNKNOWN_COMMIT)
    raw = pc.if_else(pc.equal(raw, ""), UNKNOWN_COMMIT, raw)
    suffixed = pc.ends_with(raw, DIRTY_SUFFIX)
    bare = pc.if_else(suffixed, pc.utf8_slice_codeunits(raw, 0, -len(DIRTY_SUFFIX)), raw)
    dirty = pc.or_(pc.coalesce(_column(table, "git_dirty", pa.bool_()), suffixed), suffixed)
    version_text = _column(table, "code_version", pa.string())
    fallback = pc.if_else(dirty, pc.binary_join_element_wise(bare, DIRTY_SUFFIX, ""), bare)
    version_text = pc.if_else(
        pc.fill_null(pc.equal(version_text, ""), True), fallback, version_text
    )
    codes, first = distinct_rows(pa.table({"v": version_text}), ["v"])
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    k = len(first)
    ctime = _ms(_column(table, "git_commit_time", pa.timestamp("ms", tz="UTC"))).astype(np.int64)
    start = _ms(_column(table, "started_at", pa.timestamp("ms", tz="UTC"))).astype(np.int64)
    nat = np.iinfo(np.int64).min
    big = np.iinfo(np.int64).max
    ct = np.full(k, big, np.int64)
    np.minimum.at(ct, codes, np.where(ctime == nat, big, ctime))
    st = np.full(k, big, np.int64)
    np.minimum.at(st, codes, np.where(start == nat, big, start))
    take = pa.array(first)
    names = bare.take(take).to_numpy(zero_copy_only=False).astype(object)
    versions = version_text.take(take).to_numpy(zero_copy_only=False).astype(object)
    dirty_v = dirty.take(take).to_numpy(zero_copy_only=False).astype(bool)
    # commit time where known, else the first run's start; then clean before dirty, then name
    when = np.where(ct != big, ct, st)
    order = np.lexsort((versions.astype(str), dirty_v, st, when))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    commits = Commits(
        commit=names[order],
        code_version=versions[order],
        dirty=dirty_v[order],
        commit_time=np.where(ct == big, nat, ct)[order].astype("datetime64[ms]"),
        first_started_at=np.where(st == big, nat, st)[order].astype("datetime64[ms]"),
    )
    return rank[codes], commits


def _f64(table: pa.Table, name: str | None) -> np.ndarray:
    if name is None or name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return _column(table, name, pa.float64()).to_numpy(zero_copy_only=False)


def _group_points(
    series: np.ndarray, version: np.ndarray, value: np.ndarray, cv: np.ndarray, run: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Rows -> points: (order of rows, point starts, point series, point version, median, low,
    high), rows sorted by series, version, value."""
    keep = np.isfinite(value)
    idx = np.nonzero(keep)[0]
    order = idx[np.lexsort((value[idx], version[idx], series[idx]))]
    s, v, x = series[order], version[order], value[order]
    new = np.ones(len(order), bool)
    new[1:] = (s[1:] != s[:-1]) | (v[1:] != v[:-1])
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], len(order))
    median = (x[starts + (ends - starts - 1) // 2] + x[starts + (ends - starts) // 2]) / 2
    band = np.where(np.isfinite(cv[order]), INTERVAL_CVS * np.abs(cv[order]) * np.abs(x), 0.0)
    low = np.minimum.reduceat(x - band, starts) if len(starts) else np.empty(0)
    high = np.maximum.reduceat(x + band, starts) if len(starts) else np.empty(0)
    return order, starts, s[starts], v[starts], median, low, high


def load_series(
    path: str | Path, *, metrics: Sequence[str] = DEFAULT_METRICS, table: pa.Table | None = None
) -> list[Series]:
    """Every series of the job(s) at `path` (or of `table`, rows already read), for `metrics`.

    Series are ordered by metric (as given), then method, hardware and setting; points by code
    version (see the module docstring)."""
    table = read_rows(path, metrics) if table is None else table
    table = table.filter(pc.equal(_column(table, "status", pa.string()), Status.OK.value)) if (
        "status" in table.column_names
    ) else table
    if table.num_rows == 0:
        return []
    version, commits = _versions(table)
    table = table.append_column("_hardware", hardware_ids(table))
    settings = [c for c in setting_columns() if c in table.column_names]
    base_codes, base_first = distinct_rows(table, [*settings, "_hardware"])
    base = base_codes.to_numpy(zero_copy_only=False).astype(np.int64)
    method_arr = pc.fill_null(_column(table, "method", pa.string()), "?")
    mcodes, mfirst = distinct_rows(pa.table({"m": method_arr}), ["m"])
    method = mcodes.to_numpy(zero_copy_only=False).astype(np.int64)
    method_names = method_arr.take(mfirst).to_pylist()
    run = pc.fill_null(_column(table, "run_id", pa.string()), "")
    rcodes, rfirst = distinct_rows(pa.table({"r": run}), ["r"])
    run_code = rcodes.to_numpy(zero_copy_only=False).astype(np.int64)
    run_names = np.array(run.take(rfirst).to_pylist(), dtype=object)
    base_rows = table.select([*settings, "_hardware"]).take(base_first).to_pylist()
    out: list[Series] = []
    for metric in metrics:
        higher, cv_col = METRICS[metric]
        if metric == SPEEDUP:
            got = _speedups(table, base, method, method_names, version, run_code, cv_col)
            if got is None:
                continue
            rows, value, cv = got
        else:
            rows = np.arange(table.num_rows)
            value, cv = _f64(table, metric), _f64(table, cv_col)
        key = base[rows] * len(method_names) + method[rows]
        order, starts, pseries, pversion, med, low, high = _group_points(
            key, version[rows], value, cv, run_code[rows]
        )
        offsets = np.append(starts, len(order))
        run_of_row = run_names[run_code[rows][order]]
        values_sorted = value[order]
        bounds = np.nonzero(np.append(True, pseries[1:] != pseries[:-1]))[0]
        bounds = np.append(bounds, len(pseries))
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = int(pseries[a])
            row = base_rows[k // len(method_names)]
            meth = method_names[k % len(method_names)]
            hw = row["_hardware"]
            setting = {c: row[c] for c in settings if row[c] is not None}
            lo, hi = int(offsets[a]), int(offsets[b])
            pts = PointColumns(
                commits=commits,
                version=pversion[a:b],
                offsets=offsets[a : b + 1] - lo,
                run_ids=run_of_row[lo:hi],
                values=values_sorted[lo:hi],
                value=med[a:b],
                low=low[a:b],
                high=high[a:b],
            )
            out.append(
                Series(
                    series_id=series_id(metric, meth, hw, setting),
                    metric=metric,
                    method=meth,
                    hardware=hw,
                    setting=setting,
                    higher_is_better=higher,
                    points=pts,
                )
            )
    return out


def _speedups(
    table: pa.Table,
    base: np.ndarray,
    method: np.ndarray,
    method_names: list[str],
    version: np.ndarray,
    run: np.ndarray,
    cv_col: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(the cached rows, each one's decode tok/s over naive's, its CV) or None without naive.

    Naive's value for a cached row: the naive row of the same setting, hardware, code version and
    run (median when several), else the median of naive's rows at that code version."""
    if BASELINE_METHOD not in method_names:
        return None
    naive_code = method_names.index(BASELINE_METHOD)
    value, cv = _f64(table, "decode_tok_s"), _f64(table, cv_col)
    is_naive = (method == naive_code) & np.isfinite(value)
    cached = np.nonzero((method != naive_code) & np.isfinite(value))[0]
    if not len(cached) or not is_naive.any():
        return None
    n_versions = int(version.max()) + 1
    n_runs = int(run.max()) + 1
    at_version = base * n_versions + version  # the setting on its hardware at one code version
    naive_rows = np.nonzero(is_naive)[0]

    def medians(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.lexsort((value[naive_rows], keys))
        k, x = keys[order], value[naive_rows][order]
        c = cv[naive_rows][order]
        starts = np.nonzero(np.append(True, k[1:] != k[:-1]))[0]
        ends = np.append(starts[1:], len(k))
        med = (x[starts + (ends - starts - 1) // 2] + x[starts + (ends - starts) // 2]) / 2
        return k[starts], med, c[starts]

    def lookup(keys, table_keys, table_values, table_cv):
        pos = np.searchsorted(table_keys, keys)
        pos = np.minimum(pos, len(table_keys) - 1)
        hit = table_keys[pos] == keys
        return hit, np.where(hit, table_values[pos], np.nan), np.where(hit, table_cv[pos], np.nan)

    by_run = lookup(at_version[cached] * n_runs + run[cached],
                    *medians(at_version[naive_rows] * n_runs + run[naive_rows]))
    by_version = lookup(at_version[cached], *medians(at_version[naive_rows]))
    naive_value = np.where(by_run[0], by_run[1], by_version[1])
    naive_cv = np.where(by_run[0], by_run[2], by_version[2])
    ok = np.isfinite(naive_value) & (naive_value > 0)
    rows = cached[ok]
    ratio = value[rows] / naive_value[ok]
    both = np.sqrt(np.nan_to_num(cv[rows]) ** 2 + np.nan_to_num(naive_cv[ok]) ** 2)
    both = np.where(np.isfinite(cv[rows]) | np.isfinite(naive_cv[ok]), both, np.nan)
    return rows, ratio, both


def describe(series: Series, shown: Sequence[str] | None = None) -> str:
    """A short text of a series' setting: `shown` columns only (default: all), e.g. 'b4 p128'."""
    names = {"batch_size": "b", "prompt_len": "p", "max_tokens": "n", "model_tag": ""}
    parts = []
    for key, value in series.setting.items():
        if shown is not None and key not in shown:
            continue
        prefix = names.get(key, f"{key}=")
        parts.append(f"{prefix}{value}")
    return " ".join(parts) or "-"


def varying(series: Sequence[Series]) -> list[str]:
    """The setting columns whose value differs between `series` (what tells them apart)."""
    seen: dict[str, set] = {}
    for s in series:
        for key in {*seen, *s.setting}:
            seen.setdefault(key, set()).add(repr(s.setting.get(key)))
    return [k for k, vals in seen.items() if len(vals) > 1]


def as_dict(series: Series) -> dict[str, Any]:
    """A series without its points, JSON-ready."""
    return {
        "series_id": series.series_id,
        "metric": series.metric,
        "method": series.method,
        "hardware": series.hardware,
        "setting": dict(series.setting),
        "higher_is_better": series.higher_is_better,
        "commits": len(series.points),
    }
