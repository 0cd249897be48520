"""Compaction: many one-row attempt files become a few large files, crash-safely.

    python -m orchestrator compact results/sweep      # or a results root; also after a submit
    store.compact()                                    # the caller holds the job's lock

A submit writes one file per attempt (`part-<cell_id>-a<attempt>-<run_id>.parquet`), which is
what keeps rows safe when the driver dies, but makes every later read open one file per row.
Compaction rewrites the finished attempt files of each run into `part-compact-<run>-<token>
.parquet` files (at most MAX_ROWS rows / MAX_BYTES bytes each, row groups of ROW_GROUP_ROWS),
so readers open a few files and read only the columns they need. Names still match
`part-*.parquet`, so DuckDB's and polars' globs and `pyarrow.dataset.dataset(job_dir)` read the
directory as before.

Each output file is one step, and a SIGKILL at any moment loses nothing and duplicates nothing:

    1. write `.tmp-part-compact-...` and fsync it        killed: the temp is removed later
    2. write `_compaction.json` {output, inputs}          (atomic: temp name, then rename)
    3. rename the temp to the output name                 killed: recover() deletes the inputs
    4. delete the inputs, then the journal                killed: recover() finishes the deletes

`recover()` (start of every submit and compact, under the lock) finishes or undoes a step.
This project's readers never count a row twice: they leave out the journal's inputs once its
output exists (orchestrator/run/scan.py) and deduplicate by (run_id, cell_id, attempt) as well.
A reader that does not know the journal (DuckDB, polars) sees each row twice only while a step
is between 3 and 4 (milliseconds per step), or after a kill there until the next submit/compact.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.run.scan import JOURNAL, Files, live_parts
from orchestrator.run.storage import TEMP_PREFIX, Location

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.run.store import ResultStore

log = logging.getLogger(__name__)

COMPACT_PREFIX = "part-compact-"
ATTEMPT = re.compile(r"^part-(?P<cell>.+)-a(?P<attempt>\d+)-(?P<run>.+?)(?:-n\d+)?\.parquet$")
MAX_ROWS = 250_000  # rows per compacted file
MAX_BYTES = 1 << 30  # uncompressed bytes per compacted file (from the inputs' footers)
ROW_GROUP_ROWS = 32_768
ROW_GROUP_BYTES = 64 << 20
AUTO_MIN_FILES = 100  # a submit compacts when at least this many attempt files are loose
MIN_FILES_ENV = "ORCHESTRATOR_COMPACT_MIN_FILES"
PAUSE_ENV = "ORCHESTRATOR_TEST_COMPACT_PAUSE"  # "<point>:<marker file>", for the crash tests


@dataclass
class CompactResult:
    """What one compaction did."""

    inputs: int = 0  # attempt files replaced
    rows: int = 0
    outputs: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable or foreign, left in place

    def line(self, where: object) -> str:
        if not self.inputs:
            return f"{where}: nothing to compact"
        return (
            f"{where}: {self.inputs} attempt files -> {len(self.outputs)} file(s), "
            f"{self.rows} rows"
            + (f"; {len(self.skipped)} unreadable file(s) left as they are" if self.skipped else "")
        )


def auto_min_files() -> int:
    """The loose attempt files that make a submit compact (AUTO_MIN_FILES, or the env var)."""
    try:
        return max(1, int(os.environ.get(MIN_FILES_ENV, AUTO_MIN_FILES)))
    except ValueError:
        return AUTO_MIN_FILES


def recover(loc: Location) -> None:
    """Finish (output renamed) or drop (not renamed) the step a killed compaction left, and
    remove its temporary files. Only while holding the job's lock."""
    from orchestrator.run.scan import read_journal

    journal = read_journal(loc)
    if journal:
        if loc.exists(journal["output"]):
            for name in journal.get("inputs") or ():
                loc.delete_file(name, missing_ok=True)
            log.info("%s: finished an interrupted compaction (%s)", loc, journal["output"])
        loc.delete_file(JOURNAL, missing_ok=True)
    for info in loc.list_files():
        if info.base_name.startswith(TEMP_PREFIX + COMPACT_PREFIX):
            loc.delete_file(info.base_name, missing_ok=True)
    _sync_dir(loc)


def compact(store: ResultStore, *, min_files: int = 1) -> CompactResult:
    """Compact the job's loose attempt files when there are at least `min_files` of them."""
    loc = store.location
    recover(loc)
    names = [n for n in live_parts(loc) if not n.startswith(COMPACT_PREFIX)]
    result = CompactResult()
    if not names or len(names) < min_files:
        return result
    from orchestrator.run.store import KNOWN_COLUMNS

    files = Files.check(loc, KNOWN_COLUMNS, names)
    store.report_bad(files.bad)
    result.skipped = [name for name, _ in files.bad]
    for label, indices in _chunks(files):
        inputs = [files.names[i] for i in indices]
        batches = itertools.chain.from_iterable(
            files.dataset(group).to_batches(batch_size=ROW_GROUP_ROWS)
            for group in files.groups(indices)
        )
        out = f"{COMPACT_PREFIX}{label}-{uuid.uuid4().hex[:8]}.parquet"
        tmp, rows = write_temp(loc, out, files.schema, batches)
        _pause("written")
        loc.write_atomic(JOURNAL, json.dumps({"output": out, "inputs": inputs}).encode())
        _pause("journaled")
        loc.fs.move(f"{loc.path}/{tmp}", f"{loc.path}/{out}")
        _sync_dir(loc)
        _pause("renamed")
        for i, name in enumerate(inputs):
            loc.delete_file(name, missing_ok=True)
            if i == len(inputs) // 2:
                _pause("deleting")
        _sync_dir(loc)
        loc.delete_file(JOURNAL)
        result.inputs += len(inputs)
        result.rows += rows
        result.outputs.append(out)
    return result


def _chunks(files: Files) -> list[tuple[str, list[int]]]:
    """Input files grouped by run (from their names), split at MAX_ROWS / MAX_BYTES."""
    by_run: dict[str, list[int]] = {}
    for i, name in enumerate(files.names):
        match = ATTEMPT.match(name)
        run = re.sub(r"[^A-Za-z0-9_.-]", "_", match["run"]) if match else "misc"
        by_run.setdefault(run, []).append(i)
    out = []
    for run, indices in sorted(by_run.items()):
        chunk, rows, size = [], 0, 0
        for i in indices:
            n, b = files.sizes[i]
            if chunk and (rows + n > MAX_ROWS or size + b > MAX_BYTES):
                out.append((run, chunk))
                chunk, rows, size = [], 0, 0
            chunk.append(i)
            rows, size = rows + n, size + b
        if chunk:
            out.append((run, chunk))
    return out


def write_temp(
    loc: Location, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]
) -> tuple[str, int]:
    """Stream `batches` into `.tmp-<name>` as row groups of about ROW_GROUP_ROWS rows, fsync
    it; returns (the temporary name, rows written). The caller renames it."""
    tmp = f"{TEMP_PREFIX}{name}"
    loc.makedirs()
    rows, buffered, size, pending = 0, 0, 0, []
    with loc.fs.open_output_stream(f"{loc.path}/{tmp}") as sink, pq.ParquetWriter(
        sink, schema
    ) as writer:
        for batch in batches:
            pending.append(batch)
            buffered += batch.num_rows
            size += batch.nbytes
            if buffered >= ROW_GROUP_ROWS or size >= ROW_GROUP_BYTES:
                writer.write_table(_table(pending, schema), row_group_size=ROW_GROUP_ROWS)
                rows, buffered, size, pending = rows + buffered, 0, 0, []
        if pending:
            writer.write_table(_table(pending, schema), row_group_size=ROW_GROUP_ROWS)
            rows += buffered
    if loc.is_local:
        _fsync(Path(loc.path) / tmp)
    return tmp, rows


def write_file(
    loc: Location, name: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]
) -> int:
    """Write a whole Parquet file atomically (temp, fsync, rename); returns its rows."""
    tmp, rows = write_temp(loc, name, schema, batches)
    loc.fs.move(f"{loc.path}/{tmp}", f"{loc.path}/{name}")
    _sync_dir(loc)
    return rows


def _table(parts: list, schema: pa.Schema) -> pa.Table:
    tables = [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts]
    return pa.concat_tables([t.cast(schema) for t in tables]).combine_chunks()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(loc: Location) -> None:
    """Make renames and deletes durable before the next step relies on them (local only)."""
    if loc.is_local and os.path.isdir(loc.path):
        _fsync(Path(loc.path))


def _pause(point: str) -> None:
    """Test hook: stop at `point` (writing the marker file) so a test can SIGKILL us there."""
    spec = os.environ.get(PAUSE_ENV, "")
    where, _, marker = spec.partition(":")
    if where == point:
        Path(marker).write_text(point)
        time.sleep(3600)


def compact_path(path: Path) -> list[str]:
    """`python -m orchestrator compact PATH`: compact the job at PATH, or every job in the
    results root PATH, each under its lock; one line per job."""
    from orchestrator.run.store import ResultStore, job_dirs

    jobs = job_dirs(path)  # a local path or a storage URI
    lines = []
    for job_dir in jobs:
        store = ResultStore(job_dir)
        store.lock()
        try:
            lines.append(store.compact().line(job_dir))
        finally:
            store.unlock()
    return lines


def compact_after_submit(store: ResultStore) -> None:
    """The end of a submit (under its lock): compact when enough attempt files are loose. A
    failure is only logged: every row is safe in its attempt file either way."""
    from orchestrator.errors import OrchestratorError

    t0 = time.perf_counter()
    try:
        result = store.compact(min_files=auto_min_files())
    except (OSError, pa.ArrowException, OrchestratorError) as e:
        log.warning("compaction skipped (rows are kept as they are): %s", e)
        return
    if result.inputs:
        log.info("%s (%.1fs)", result.line(store.job_dir), time.perf_counter() - t0)
