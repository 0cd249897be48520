"""Opening results for reading: one job directory or a results root holding several jobs.

    table = load_results(Path("results/sweep"), latest=True)   # one row per cell
    rows = ok_rows(table)                                       # list of dicts, status ok
    table = load_results(path, columns=["method", "decode_tok_s"], filter=pc.field("ok"))

The query, pivot, compare and plot commands all read through here, so they agree on what "the
latest attempt of a cell" is (an ok attempt wins over a later failed one, as in the summary) and
on the derived columns they add. Reads go through ResultStore.read (orchestrator/run/scan.py):
only the asked columns are read, and unreadable or foreign files are named once and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import ResultsError
from orchestrator.run.manifest import join_manifests, manifest_table, read_manifests
from orchestrator.run.store import ResultStore, job_dirs
from workers.record import Status

MIB = 1024 * 1024
PEAK_COLUMN = "peak_bytes"
PEAK_SOURCES = ("peak_allocated_bytes", "peak_rss_growth_bytes")
LATEST_KEYS = ("job_name", "cell_id", "status", "finished_at", "attempt")
# What the summary tables read (orchestrator/reports/summary.py and hardware.py): no raw lists;
# `generated_ids` is fetched only for cells whose token hashes differ (ids_fetcher).
# A summary row's setting apart from the method: rows equal on these are compared.
SETTING_KEYS = (
    "batch_size",
    "prompt_len",
    "max_tokens",
    "temperature",
    "top_k",
    "dtype",
    "model_tag",
    "model_checkpoint",
    "model_step",
    "model_seed",
)
SUMMARY_COLUMNS = (
    "run_id",
    "job_name",
    "cell_id",
    "attempt",
    "status",
    "error",
    "will_retry",
    "finished_at",
    "method",
    *SETTING_KEYS,
    "decode_tok_s",
    "ttft_ms",
    "peak_allocated_bytes",
    "peak_rss_growth_bytes",
    "kv_cache_bytes",
    "tokens_sha256",
    "n_generated",
    "device",
    "gpu_name",
    "accelerator_model",
    "cpu_model",
    "node_ip",
    "hostname",
)


def load_results(
    path: Path,
    *,
    latest: bool = False,
    manifests: bool = False,
    columns: list[str] | tuple[str, ...] | None = None,
    filter: pc.Expression | None = None,
) -> pa.Table:
    """Rows of the job(s) at `path` as one table, plus the derived `peak_bytes` column.

    `latest`: keep only the latest attempt of each cell (decided before `filter`, which then
    applies to the latest rows). `manifests`: add the `run_*` columns of the run manifests (see
    orchestrator.run.manifest). `columns`: read only these (None: all); `filter`: a pyarrow
    expression on stored columns, pushed down to the scan.
    """
    read_cols = None
    if columns is not None:
        extra = [*(LATEST_KEYS if latest else ()), *(("run_id",) if manifests else ())]
        if PEAK_COLUMN in columns:
            extra += PEAK_SOURCES
        read_cols = list(dict.fromkeys([*columns, *extra]))
    tables, runs = [], []
    for job_dir in job_dirs(path):
        table = ResultStore(job_dir).read(read_cols, None if latest else filter).table
        if table is None:
            raise ResultsError(f"{job_dir}: no readable results files")
        tables.append(table)
        if manifests:
            runs.extend(read_manifests(job_dir))
    table = concat(tables)
    table = with_peak_bytes(table)
    if latest:
        table = latest_attempts(table)
        if filter is not None:
            table = table.filter(filter)
    if manifests:
        table = join_manifests(table, manifest_table(runs))
    return table


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of several jobs as one (columns unified permissively)."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ResultsError(
            f"the jobs' columns do not merge ({' '.join(str(e).split())[:200]}); "
            "read one job directory at a time"
        ) from None


def results_schema(path: Path) -> pa.Schema:
    """The unified schema of the job(s) at `path` (footers only), plus `peak_bytes`."""
    schemas = [ResultStore(d).schema() for d in job_dirs(path)]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if PEAK_COLUMN not in schema.names and any(c in schema.names for c in PEAK_SOURCES):
        schema = schema.append(pa.field(PEAK_COLUMN, pa.int64()))
    return schema


def summary_rows(job_dir: Path, *, allow_empty: bool = False) -> tuple[pa.Table, list[str]]:
    """(the SUMMARY_COLUMNS of one job's rows, the files skipped); ResultsError when it holds no
    readable rows (unless `allow_empty`: an empty table). No raw lists are read: pass
    `ids_fetcher(job_dir)` to the summary to name the first differing token of a mismatch."""
    store = ResultStore(job_dir)
    loaded = store.read(SUMMARY_COLUMNS) if allow_empty else store.require_results(SUMMARY_COLUMNS)
    return (pa.table({}) if loaded.table is None else loaded.table), loaded.bad_files


def rows_of_cells(table: pa.Table, cell_ids: Iterable[str]) -> pa.Table:
    """The rows of `table` that belong to `cell_ids` (a submit's job's cells, not the rows of an
    axis value renamed since), e.g. `rows_of_cells(summary_rows(d)[0], outcome.cell_ids)`."""
    ids = sorted(cell_ids)
    if not ids or "cell_id" not in table.column_names:
        return table.slice(0, 0)
    return table.filter(pc.is_in(table["cell_id"], pa.array(ids, pa.string())))


def ids_fetcher(job_dir: Path) -> Callable[[list[str]], dict[str, Any]]:
    """For summary.render(fetch_ids=...): cell_ids -> their ok rows' `generated_ids`."""

    def fetch(cell_ids: list[str]) -> dict[str, Any]:
        table = ResultStore(job_dir).fetch(["generated_ids", "status"], cell_ids).table
        if table is None:
            return {}
        return {
            r["cell_id"]: r["generated_ids"]
            for r in table.to_pylist()
            if r["status"] == Status.OK.value
        }

    return fetch


def with_peak_bytes(table: pa.Table) -> pa.Table:
    """Add `peak_bytes`: device peak allocated (GPU) or the process's peak RSS growth (CPU)."""
    if PEAK_COLUMN in table.column_names:
        return table
    cols = [c for c in ("peak_allocated_bytes", "peak_rss_growth_bytes") if c in table.column_names]
    if not cols:
        return table
    peak = table[cols[0]]
    for c in cols[1:]:
        peak = pc.coalesce(peak, table[c])
    return table.append_column(PEAK_COLUMN, peak.cast(pa.int64()))


def latest_attempts(table: pa.Table) -> pa.Table:
    """One row per (job_name, cell_id): an ok attempt wins, then the latest finished, then the
    highest attempt, then the first row; rows keep their order. Computed in Arrow (a sort only when some cell has
    more than one row).

    >>> t = pa.table({"cell_id": ["a", "a", "b"], "status": ["ok", "error", "oom"],
    ...               "attempt": [1, 2, 1]})
    >>> latest_attempts(t).to_pydict()["status"]
    ['ok', 'oom']
    """
    keys = [c for c in ("job_name", "cell_id") if c in table.column_names]
    if not keys or table.num_rows < 2:
        return table
    if table.select(keys).group_by(keys, use_threads=False).aggregate([]).num_rows == len(table):
        return table  # the usual case: one attempt per cell
    n = table.num_rows
    ranks = {f"k{i}": pc.fill_null(pc.cast(table[k], pa.string()), "") for i, k in enumerate(keys)}
    status = table["status"] if "status" in table.column_names else pa.nulls(n, pa.string())
    ranks["ok"] = pc.fill_null(pc.equal(status, Status.OK.value), False)
    for name in ("finished_at", "attempt"):
        if name in table.column_names:
            ranks[name] = table[name]
    ranks["earlier"] = pa.array(range(n, 0, -1), pa.int64())  # on a tie the first row wins
    ranked = pa.table(ranks)
    order = pc.sort_indices(ranked, [(c, "ascending", "at_start") for c in ranked.column_names])
    # the last row of each cell in that order is its latest attempt
    sorted_keys = ranked.select([f"k{i}" for i in range(len(keys))]).take(order)
    last = pa.array([False] * (n - 1) + [True])
    for col in sorted_keys.columns:
        values = col.combine_chunks()
        differs = pc.not_equal(values.slice(0, n - 1), values.slice(1))
        last = pc.or_(last, pa.concat_arrays([differs, pa.array([True])]))
    return table.take(order.filter(last).sort())


def ok_rows(table: pa.Table) -> list[dict]:
    """The ok rows of a table as dicts."""
    if "status" not in table.column_names:
        return []
    return table.filter(pc.field("status") == Status.OK.value).to_pylist()
