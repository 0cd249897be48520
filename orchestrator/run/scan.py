"""Reading a job's results: the live part files, checked and unified, scanned by pyarrow.

    table, bad = scan(location, columns=["cell_id", "status"], filter=ds.field("status") == "ok")

Steps: list the `part-*.parquet` files (leaving out those a finished compaction has replaced,
see orchestrator/run/compact.py), read each file's footer, skip files that cannot be read or
do not look like this project's rows (no `cell_id`/`run_id`/`status`, or a known column of
another type), unify the rest into one schema (missing columns read as nulls), then let pyarrow's
dataset scanner read only the asked columns and rows. Rows are deduplicated by
(run_id, cell_id, attempt), so a reader never sees a row twice even mid-compaction.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from orchestrator.run.storage import Location

log = logging.getLogger(__name__)

PART = re.compile(r"^part-.*\.parquet$")
JOURNAL = "_compaction.json"
REQUIRED = ("run_id", "cell_id", "status")  # a results file without these is foreign
ROW_KEY = ("run_id", "cell_id", "attempt")  # one row per attempt
_TRIES = 5  # re-list when a file vanishes under a concurrent compaction
SCAN_FILES = 256  # files per dataset scan: a dataset keeps the footer of every file it scanned


@dataclass
class ScanResult:
    """The rows read, and `bad`: (file, reason) for every file skipped."""

    table: pa.Table | None
    bad: list[tuple[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the files read


def read_journal(loc: Location) -> dict | None:
    """The pending compaction step (`{"output": name, "inputs": [names]}`), or None."""
    try:
        return json.loads(loc.read_bytes(JOURNAL))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # a torn journal never happens (atomic write); be safe
        log.warning("ignoring unreadable %s/%s: %s", loc, JOURNAL, e)
        return None


def live_parts(loc: Location) -> list[str]:
    """Names of the part files readers should read, oldest name first.

    Listed before the journal is read: if the listing holds both a compacted file and its
    inputs, the journal still existed when the listing was taken, so either it is read here
    (inputs left out) or the inputs are gone by the time they are read (the scan re-lists)."""
    names = [
        i.base_name
        for i in loc.list()
        if i.type == pafs.FileType.File and PART.match(i.base_name)
    ]
    journal = read_journal(loc)
    if journal and journal.get("output") in names:
        replaced = set(journal.get("inputs") or ())
        names = [n for n in names if n not in replaced]
    return names


def schema_problem(schema: pa.Schema, known: dict[str, pa.DataType]) -> str | None:
    """Why a file with this schema is not one of ours, or None.

    >>> known = {"run_id": pa.string(), "cell_id": pa.string(), "status": pa.string()}
    >>> schema_problem(pa.schema([("x", pa.int64())]), known)
    'no run_id column'
    """
    for name in REQUIRED:
        if schema.get_field_index(name) < 0:
            return f"no {name} column"
    for f in schema:
        want = known.get(f.name)
        if want is not None and not _castable(f.type, want):
            return f"column {f.name} is {f.type}, expected {want}"
    return None


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    if have == want or pa.types.is_null(have):
        return True
    if pa.types.is_integer(want) or pa.types.is_floating(want):
        return pa.types.is_integer(have) or (
            pa.types.is_floating(have) and pa.types.is_floating(want)
        )
    if pa.types.is_string(want):
        return pa.types.is_string(have) or pa.types.is_large_string(have)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(have)
    if pa.types.is_list(want) and (pa.types.is_list(have) or pa.types.is_large_list(have)):
        return _castable(have.value_type, want.value_type)
    return False


@dataclass
class Files:
    """The readable, compatible part files of one location and their unified schema; open with
    `Files.check(loc, known, names)`."""

    loc: Location
    schema: pa.Schema
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (rows, uncompressed bytes)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (name, why it was skipped)

    @classmethod
    def check(
        cls, loc: Location, known: dict[str, pa.DataType], names: list[str] | None = None
    ) -> Files:
        """Read the footer of each file (`names`, default: the live part files) and keep those
        that are this project's results; the others go to `bad` with the reason."""
        files = cls(loc, pa.schema([]))
        fields = dict(known)
        fmt = ds.ParquetFileFormat()
        for name in live_parts(loc) if names is None else names:
            path = f"{loc.path}/{name}"
            try:
                meta = fmt.make_fragment(path, filesystem=loc.fs).metadata  # the footer only
                schema = meta.schema.to_arrow_schema()
            except FileNotFoundError:
                raise
            except Exception as e:  # noqa: BLE001 - truncated, not Parquet, unreadable
                files.bad.append((name, " ".join(str(e).split())[:200]))
                continue
            problem = schema_problem(schema, known) or _merge(fields, schema, known)
            if problem:
                files.bad.append((name, f"not a results file of this job ({problem})"))
                continue
            # keep numbers, not the footer: 10k footers of ~100 columns hold gigabytes
            size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
            files.names.append(name)
            files.paths.append(path)
            files.sizes.append((meta.num_rows, size))
        files.schema = pa.schema(fields.items())
        return files

    def groups(self, indices: list[int] | None = None) -> list[list[int]]:
        """`indices` (default: all files) in groups of SCAN_FILES, to scan one at a time (10k
        loose files scanned at once hold ~2 GB of footers)."""
        indices = list(range(len(self.paths))) if indices is None else indices
        return [indices[i : i + SCAN_FILES] for i in range(0, len(indices), SCAN_FILES)]

    def dataset(self, keep: list[int] | None = None) -> ds.Dataset:
        paths = self.paths if keep is None else [self.paths[i] for i in keep]
        return ds.FileSystemDataset.from_paths(
            paths, schema=self.schema, format=ds.ParquetFileFormat(), filesystem=self.loc.fs
        )


def _merge(fields: dict[str, pa.DataType], schema: pa.Schema, known: dict) -> str | None:
    """Add the file's extra columns to `fields` (widening int to float, null to anything);
    the conflict that makes the file foreign, or None."""
    merged = {}
    for f in schema:
        if f.name in known:
            continue
        have = fields.get(f.name)
        if have is None or pa.types.is_null(have) or _castable(have, f.type):
            merged[f.name] = f.type if have is None or not pa.types.is_null(f.type) else have
        elif not _castable(f.type, have):
            return f"column {f.name} is {f.type}, other files have {have}"
    fields.update(merged)
    return None


def scan(
    loc: Location,
    known: dict[str, pa.DataType],
    *,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
    dedup: bool = True,
) -> ScanResult:
    """Rows of the live part files at `loc`: only `columns` (None: all; unknown names are
    left out), only rows matching `filter`; see the module docstring."""
    for attempt in range(_TRIES):
        try:
            files = Files.check(loc, known)
            return _read(files, columns, filter, dedup)
        except FileNotFoundError:
            if attempt == _TRIES - 1:
                raise
            log.debug("a results file vanished while reading %s (compaction); re-listing", loc)
    raise AssertionError("unreachable")


def _read(files: Files, columns, filter, dedup: bool) -> ScanResult:
    if not files.paths:
        return ScanResult(None, files.bad, [])
    names = files.schema.names
    wanted = names if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    keys = [k for k in ROW_KEY if k in names] if dedup else []
    read_cols = list(dict.fromkeys([*wanted, *keys]))
    try:
        parts = [
            files.dataset(group).to_table(columns=read_cols, filter=filter)
            for group in files.groups()
        ]
        table = pa.concat_tables(parts)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        log.debug("scan failed (%s); reading file by file", e)
        table = _read_one_by_one(files, read_cols, filter)
    if keys and table.num_rows:
        table = dedup_rows(table, keys)
    return ScanResult(table.select(wanted), files.bad, files.names)


def _read_one_by_one(files: Files, read_cols, filter) -> pa.Table:
    """A footer that reads but data that does not: find the bad files, keep the rest."""
    tables = []
    for i, name in enumerate(files.names):
        try:
            tables.append(files.dataset([i]).to_table(columns=read_cols, filter=filter))
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            files.bad.append((name, " ".join(str(e).split())[:200]))
    if not tables:
        return files.dataset([]).to_table(columns=read_cols)
    return pa.concat_tables(tables)


def dedup_rows(table: pa.Table, keys: list[str]) -> pa.Table:
    """The first row of each distinct `keys` value, in the table's order.

    >>> t = pa.table({"run_id": ["r", "r"], "cell_id": ["a", "a"], "attempt": [1, 1]})
    >>> dedup_rows(t, ["run_id", "cell_id", "attempt"]).num_rows
    1
    """
    index = pa.array(range(table.num_rows), type=pa.int64())
    grouped = (
        table.select(keys)
        .append_column("_row", index)
        .group_by(keys, use_threads=False)
        .aggregate([("_row", "min")])
    )
    if grouped.num_rows == table.num_rows:
        return table
    rows = grouped["_row_min"]
    return table.take(pc.take(rows, pc.sort_indices(rows)))
