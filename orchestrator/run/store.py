"""The results dataset of one job: one Parquet file per finished cell attempt, compacted later.

Layout of `<results>/<job name>/`:

    part-<cell_id>-a<attempt>-<run_id>.parquet   one row each, written as each attempt ends
    part-compact-<run>-<token>.parquet           many attempts' rows (orchestrator/run/compact.py)
    _traces/<cell_id>-a<attempt>.json            Chrome traces of profiled cells
    _ray/ray.log                                 Ray's driver-side log of each submit
    _lock                                        held by the running submit
    _compaction.json                             only while a compaction step is in flight

Files starting with "_" or "." are ignored by `pyarrow.dataset.dataset(job_dir)`, so the
directory reads as a dataset with pyarrow, pandas, polars or DuckDB without this project. Each
file is written to a temporary name and renamed, so a reader never sees a partial file and a
killed driver loses only the cells still running. Reading (orchestrator/run/scan.py) reads only
the asked columns; unreadable or foreign files are reported by name and skipped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.errors import ResultsError
from orchestrator.run import storage
from orchestrator.run.history import CellHistory
from orchestrator.run.storage import Location
from workers.record import Status

log = logging.getLogger(__name__)

_STR, _I64, _F64, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_TS = pa.timestamp("ms", tz="UTC")

# Known columns and their types; every file carries all of them (null where not applicable),
# so plain `pyarrow.dataset.dataset(dir)` sees the same schema whichever file it reads first.
KNOWN_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": pa.int32(),
    "run_id": _STR,
    "job_name": _STR,
    "cell_id": _STR,
    "attempt": _I64,
    "status": _STR,
    "error": _STR,
    "error_detail": _STR,
    "will_retry": _BOOL,  # a worker death the driver retries (see orchestrator/run/plan.py)
    # parameters
    "method": _STR,
    "batch_size": _I64,
    "prompt_len": _I64,
    "max_tokens": _I64,
    "temperature": _F64,
    "top_k": _I64,
    "dtype": _STR,
    "warmup": _I64,
    "repeats": _I64,
    "seed": _I64,
    "prompt": _STR,
    "profile": _BOOL,
    "memory_budget_bytes": _I64,
    "model_tag": _STR,
    "model_checkpoint": _STR,
    "model_step": _I64,
    "model_vocab_size": _I64,
    "model_sequence_len": _I64,
    "model_head_dim": _I64,
    "model_dtype": _STR,
    "model_seed": _I64,
    # metrics (engine.bench BenchResult.to_dict)
    "ttft_ms": _F64,
    "prefill_tok_s": _F64,
    "decode_tok_s": _F64,
    "decode_step_ms_mean": _F64,
    "decode_step_ms_p50": _F64,
    "decode_step_ms_p90": _F64,
    "decode_step_ms_p99": _F64,
    "decode_step_ms_min": _F64,
    "decode_step_ms_max": _F64,
    "decode_step_ms_std": _F64,
    "decode_step_ms_cv": _F64,
    "e2e_ms": _F64,
    "decode_step_ms": pa.list_(_F64),
    "ttft_ms_repeats": pa.list_(_F64),  # one per measured repeat (older rows: null)
    "decode_tok_s_repeats": pa.list_(_F64),
    "generated_ids": pa.list_(pa.list_(_I64)),
    "ttft_ms_cv": _F64,
    "decode_tok_s_cv": _F64,
    "peak_allocated_bytes": _I64,
    "peak_reserved_bytes": _I64,
    "peak_rss_growth_bytes": _I64,
    "weight_bytes": _I64,
    "kv_cache_bytes": _I64,
    "tokens_sha256": _STR,
    "n_generated": _I64,
    "trace_path": _STR,
    # provenance
    "hostname": _STR,
    "pid": _I64,
    "device": _STR,
    "gpu_name": _STR,
    "accelerator_model": _STR,  # the GPU's name; null on CPU (also for a CPU stand-in)
    "cpu_model": _STR,  # /proc/cpuinfo "model name"
    "cpu_stand_in": _BOOL,  # a GPU-planned worker measured on CPU, allowed on purpose
    "cuda_visible_devices": _STR,
    "ray_node_id": _STR,
    "node_ip": _STR,
    "ray_actor_id": _STR,
    "ray_gpu_ids": _STR,
    "worker_index": _I64,
    "python_version": _STR,
    "platform": _STR,
    "cpu_count": _I64,
    "torch_version": _STR,
    "torch_num_threads": _I64,
    "ray_version": _STR,
    "git_commit": _STR,
    # timing of the attempt
    "started_at": _TS,
    "finished_at": _TS,
    "cell_wall_s": _F64,
    "model_load_s": _F64,
}
LOOSE_HINT = 1000  # uncompacted files that make a read suggest `compact`
HISTORY_COLUMNS = ("cell_id", "attempt", "status", "will_retry", "finished_at")


def _infer_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _I64
    if isinstance(value, float):
        return _F64
    if isinstance(value, (bytes, bytearray)):
        return pa.binary()
    if isinstance(value, (list, tuple)):
        return pa.list_(_F64) if all(isinstance(v, (int, float)) for v in value) else pa.list_(_STR)
    if value is None:
        return pa.null()
    return _STR


def _to_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return value


def record_to_table(record: dict) -> pa.Table:
    """One record -> a one-row table with the known schema (plus inferred extra columns)."""
    names, arrays = [], []
    for name, typ in KNOWN_COLUMNS.items():
        value = record.get(name)
        if typ == _TS:
            value = _to_timestamp(value)
        try:
            arrays.append(pa.array([value], type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            log.warning("column %s: value %r is not %s; stored as text", name, value, typ)
            arrays.append(pa.array([None], type=typ))
            names.append(name)
            names.append(f"{name}_raw")
            arrays.append(pa.array([repr(value)], type=_STR))
            continue
        names.append(name)
    for name in sorted(set(record) - set(KNOWN_COLUMNS)):
        value = record[name]
        if isinstance(value, dict):
            value = repr(value)
        try:
            arrays.append(pa.array([value], type=_infer_type(value)))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([repr(value)], type=_STR))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def records_to_table(records: list[dict]) -> pa.Table:
    """Several records -> one table, one array per column (a batch costs about what one row
    does); rows whose values do not fit their columns go through record_to_table one by one."""
    try:
        names, arrays = [], []
        for name, typ in KNOWN_COLUMNS.items():
            values = [r.get(name) for r in records]
            if typ == _TS:
                values = [_to_timestamp(v) for v in values]
            arrays.append(pa.array(values, type=typ))
            names.append(name)
        for name in sorted({k for r in records for k in r} - set(KNOWN_COLUMNS)):
            values = [r.get(name) for r in records]
            if any(isinstance(v, dict) for v in values):
                raise TypeError(f"column {name}: dict values")
            typ = next((_infer_type(v) for v in values if v is not None), pa.null())
            arrays.append(pa.array(values, type=typ))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        tables = [record_to_table(r) for r in records]
        return pa.concat_tables(tables, promote_options="permissive")


@dataclass
class LoadedResults:
    """Rows read from a results directory, plus the files that could not be read."""

    table: pa.Table | None
    bad_files: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [] if self.table is None else self.table.to_pylist()


class ResultStore:
    """Reads and writes the dataset in `job_dir`, a path or a storage Location (see the module
    docstring)."""

    def __init__(self, job_dir: str | os.PathLike | Location):
        self.location = storage.resolve(job_dir)
        self.job_dir = (
            Path(self.location.path) if self.location.is_local else self.location.uri
        )
        self._lock_file = None
        self._reported: set[str] = set()  # unreadable files already warned about

    # -- paths ------------------------------------------------------------------------------
    @property
    def traces_dir(self) -> Path:
        return self.job_dir / "_traces"

    @property
    def ray_log(self) -> Path:
        """Ray's driver log: in the job dir, or locally (storage.Location.local_dir) for URIs."""
        return self.location.local_dir() / "_ray" / "ray.log"

    def display(self, name: str) -> str:
        """How a file of the job is named to users: its local path, or its URI."""
        return str(self.job_dir / name) if self.location.is_local else f"{self.job_dir}/{name}"

    def part_files(self) -> list[Path]:
        """Every `part-*.parquet` file (not directories), compacted or not."""
        from orchestrator.run.scan import PART

        return [
            Path(self.display(i.base_name))
            for i in self.location.list_files()
            if PART.match(i.base_name)
        ]

    # -- locking ----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the job's lock or raise ResultsLockedError naming the holder (flock locally, a
        heartbeat lock object on object stores: orchestrator/run/lock.py)."""
        from orchestrator.run.lock import acquire_job_lock

        self._lock_file = acquire_job_lock(self.location)

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # -- writing ----------------------------------------------------------------------------
    def write(self, record: dict) -> Path:
        """Durably write one record (and its trace, if any); returns the Parquet file path."""
        return self.write_many([record])

    def write_many(self, records: list[dict]) -> Path:
        """Durably write records (traces first) as ONE atomic Parquet file; returns its path.

        The row writer (run/writer.py) hands over every row that finished while it was busy, so
        a flood of short cells costs one file per batch, not one per row; a row is saved once
        its file is renamed into place, exactly as with one row per file."""
        rows = [self._with_trace(record) for record in records]
        first = rows[0]
        name = f"part-{first['cell_id']}-a{first.get('attempt', 1)}-{first['run_id']}"
        name += ".parquet" if len(rows) == 1 else f"-n{len(rows)}.parquet"
        table = record_to_table(first) if len(rows) == 1 else records_to_table(rows)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.location.write_atomic(name, sink.getvalue().to_pybytes())
        return Path(self.display(name))

    def _with_trace(self, record: dict) -> dict:
        """The record with its Chrome trace (if any) saved under _traces/ and referenced."""
        record = dict(record)
        trace = record.pop("trace_json", None)
        if trace:
            name = f"{record['cell_id']}-a{record.get('attempt', 1)}.json"
            (self.location / "_traces").write_atomic(
                name, trace if isinstance(trace, bytes) else trace.encode()
            )
            record["trace_path"] = f"_traces/{name}"
        return record

    # -- maintenance (hold the lock) --------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo a compaction step a killed process left (see compact.py)."""
        from orchestrator.run.compact import recover

        recover(self.location)

    def compact(self, **kwargs: Any):
        """Compact the finished attempt files (see orchestrator.run.compact.compact)."""
        from orchestrator.run.compact import compact

        return compact(self, **kwargs)

    # -- reading ----------------------------------------------------------------------------
    def read(
        self,
        columns: list[str] | tuple[str, ...] | None = None,
        filter: pc.Expression | None = None,
    ) -> LoadedResults:
        """The rows (only `columns`, None for all; only those matching `filter`), each attempt
        once; unreadable or foreign files are logged by name (once per store) and skipped."""
        from orchestrator.run.scan import scan

        result = scan(
            self.location,
            KNOWN_COLUMNS,
            columns=None if columns is None else list(columns),
            filter=filter,
        )
        self.report_bad(result.bad)
        loose = sum(1 for n in result.files if not n.startswith("part-compact-"))
        if loose >= LOOSE_HINT and "hint" not in self._reported:
            self._reported.add("hint")
            log.info(
                "%s holds %d uncompacted attempt files; `python -m orchestrator compact %s` "
                "makes every read of it faster",
                self.job_dir,
                loose,
                self.job_dir,
            )
        return LoadedResults(result.table, [self.display(name) for name, _ in result.bad])

    def report_bad(self, bad: list[tuple[str, str]]) -> None:
        """Warn once per store about each (file, reason) skipped."""
        for name, reason in bad:
            shown = self.display(name)
            if shown not in self._reported:
                self._reported.add(shown)
                foreign = reason.startswith("not a results")
                what = "results file" if foreign else "unreadable results file"
                log.warning("skipping %s %s: %s", what, shown, reason)

    def load(self) -> LoadedResults:
        """All readable rows, every column."""
        return self.read()

    def schema(self) -> pa.Schema:
        """The unified schema of the readable files (reads footers only)."""
        from orchestrator.run.scan import Files

        return Files.check(self.location, KNOWN_COLUMNS).schema

    def fetch(self, columns: list[str], cell_ids: list[str] | set[str]) -> LoadedResults:
        """Given columns of the rows of given cells (plus `cell_id`, `run_id`, `attempt`), e.g.
        `generated_ids` of the few cells whose token hashes differ."""
        keys = ["cell_id", "run_id", "attempt"]
        wanted = [*keys, *(c for c in columns if c not in keys)]
        expr = pc.field("cell_id").isin(pa.array(sorted(set(cell_ids)), type=pa.string()))
        return self.read(wanted, expr)

    def cell_history(self) -> CellHistory:
        """cell_id -> its rows' (attempt, status, will_retry, finished_at), oldest first, as a
        CellHistory (orchestrator/run/history.py: no dicts for the cells with an ok row)."""
        return CellHistory.from_table(self.read(HISTORY_COLUMNS).table)

    def ok_cell_ids(self) -> set[str]:
        """Cells that already have an ok row (skipped on resume)."""
        table = self.read(["cell_id"], pc.field("status") == Status.OK.value).table
        return set() if table is None else set(table["cell_id"].to_pylist())

    def require_results(self, columns: list[str] | tuple[str, ...] | None = None) -> LoadedResults:
        """read(columns), or ResultsError when the directory holds no readable rows."""
        if not self.location.is_dir():
            raise ResultsError(f"{self.job_dir}: no such results directory")
        loaded = self.read(columns)
        if loaded.table is None:
            raise ResultsError(f"{self.job_dir}: no readable results files")
        return loaded

def job_dirs(path: str | os.PathLike | Location) -> list[Path | Location]:
    """The job directories at `path` (a local path or a storage URI): itself when it holds
    results files, else its subdirectories that do (a job named like a part file is a job, not a
    file); ResultsError when there are none. Local ones come back as Paths, others as
    Locations (whose str() is the URI)."""
    root = storage.resolve(path)
    if not root.is_dir():
        raise ResultsError(f"{root.uri}: no such results directory")
    if ResultStore(root).part_files():
        found = [root]
    else:
        found = [d for d in root.list_dirs() if ResultStore(d).part_files()]
    if not found:
        raise ResultsError(f"{root.uri}: no results files found")
    return [d.local_path() if d.is_local else d for d in found]
