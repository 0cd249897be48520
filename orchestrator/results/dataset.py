"""Opening results for reading: one job directory or a results root holding several jobs.

    table = load_results(Path("results/sweep"), latest=True)   # one row per cell
    rows = ok_rows(table)                                       # list of dicts, status ok

The query, pivot, compare and plot commands all read through here, so they agree on what "the
latest attempt of a cell" is (an ok attempt wins over a later failed one, as in the summary) and
on the derived columns they add.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import ResultsError
from orchestrator.run.manifest import join_manifests, manifest_table, read_manifests
from orchestrator.run.store import ResultStore
from workers.record import Status

MIB = 1024 * 1024
PEAK_COLUMN = "peak_bytes"


def job_dirs(path: Path) -> list[Path]:
    """The job directories at `path`: itself when it holds results, else its subdirectories
    that do; ResultsError when there are none."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path}: no such results directory")
    if ResultStore(path).part_files():
        return [path]
    found = sorted(d for d in path.iterdir() if d.is_dir() and ResultStore(d).part_files())
    if not found:
        raise ResultsError(f"{path}: no results files found")
    return found


def load_results(path: Path, *, latest: bool = False, manifests: bool = False) -> pa.Table:
    """All rows of the job(s) at `path` as one table, plus the derived `peak_bytes` column.

    `latest`: keep only the latest attempt of each cell. `manifests`: add the `run_*` columns
    of the run manifests (see orchestrator.run.manifest).
    """
    tables, runs = [], []
    for job_dir in job_dirs(path):
        loaded = ResultStore(job_dir).require_results()
        tables.append(loaded.table)
        runs.extend(read_manifests(job_dir))
    table = pa.concat_tables(tables, promote_options="permissive")
    table = with_peak_bytes(table)
    if latest:
        table = latest_attempts(table)
    if manifests:
        table = join_manifests(table, manifest_table(runs))
    return table


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


def _rank(row: dict) -> tuple:
    finished = row.get("finished_at")
    return (
        row.get("status") == Status.OK.value,
        "" if finished is None else finished.isoformat(),
        row.get("attempt") or 0,
    )


def latest_attempts(table: pa.Table) -> pa.Table:
    """One row per (job_name, cell_id): an ok attempt wins, then the latest finished.

    >>> t = pa.table({"cell_id": ["a", "a", "b"], "status": ["ok", "error", "oom"],
    ...               "attempt": [1, 2, 1]})
    >>> latest_attempts(t).to_pydict()["status"]
    ['ok', 'oom']
    """
    cols = [
        c
        for c in ("job_name", "cell_id", "status", "finished_at", "attempt")
        if c in table.column_names
    ]
    best: dict[tuple, tuple[tuple, int]] = {}
    for i, row in enumerate(table.select(cols).to_pylist()):
        key = (row.get("job_name"), row.get("cell_id"))
        rank = _rank(row)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, i)
    return table.take(sorted(i for _, i in best.values()))


def ok_rows(table: pa.Table) -> list[dict]:
    """The ok rows of a table as dicts."""
    if "status" not in table.column_names:
        return []
    return table.filter(pc.field("status") == Status.OK.value).to_pylist()
