"""`python -m orchestrator query RESULTS_DIR`: filter, group, aggregate and sort stored results.

    query results/sweep --where "status = 'ok' and batch_size >= 4" \\
        --columns method,batch_size,prompt_len,decode_tok_s --sort=-decode_tok_s --limit 5
    query results/sweep --group-by method,batch_size --agg decode_tok_s:mean,ttft_ms:median

Steps, in order: load (only the columns the query names; optionally only the latest attempt per
cell, optionally with the run manifests joined), filter (`--where`, see orchestrator.reports.where), group and aggregate
(`Table.group_by`), sort, limit, select columns. Every name is checked against the table first;
a mistake is a QueryError (exit 2) listing the available columns. `query_results` checks the
names against the files' footers first, reads only the columns the query uses, and hands a
`--where` on stored columns to the dataset scanner (without `--latest`, which must pick the
latest attempt before filtering).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import QueryError
from orchestrator.reports.dataset import PEAK_COLUMN, job_dirs, load_results, results_schema
from orchestrator.reports.where import column_list, parse_where, unknown_column
from orchestrator.run.manifest import manifest_table, read_manifests

AGGREGATIONS: dict[str, str] = {  # name -> pyarrow hash aggregation
    "mean": "mean",
    "median": "list",  # exact: computed from each group's values
    "min": "min",
    "max": "max",
    "count": "count",
    "sum": "sum",
    "std": "stddev",
}
DEFAULT_COLUMNS = (
    "job_name",
    "model_tag",
    "method",
    "batch_size",
    "prompt_len",
    "max_tokens",
    "status",
    "decode_tok_s",
    "ttft_ms",
    "peak_bytes",
    "kv_cache_bytes",
)


@dataclass(frozen=True, kw_only=True)
class QuerySpec:
    """One query: each field mirrors a command-line option."""

    where: str | None = None
    columns: tuple[str, ...] = ()  # empty: DEFAULT_COLUMNS that exist; ("all",): every column
    group_by: tuple[str, ...] = ()
    agg: tuple[tuple[str, str], ...] = ()  # (column or "*", aggregation)
    sort: tuple[str, ...] = ()  # "col" ascending, "-col" or "col:desc" descending
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 0:
            raise QueryError(f"--limit must be >= 0, got {self.limit}")
        if self.group_by and self.columns:
            raise QueryError(
                "--columns does not apply with --group-by: the output holds the group keys and "
                "the --agg columns"
            )
        if self.agg and not self.group_by:
            raise QueryError("--agg needs --group-by (e.g. --group-by method)")


def split_list(text: str | None) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c').

    >>> split_list(" method, batch_size ")
    ('method', 'batch_size')
    """
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_agg(text: str | None) -> tuple[tuple[str, str], ...]:
    """'decode_tok_s:mean,ttft_ms:median,count' -> (column, aggregation) pairs.

    >>> parse_agg("decode_tok_s:mean,count")
    (('decode_tok_s', 'mean'), ('*', 'count'))
    """
    out = []
    for item in split_list(text):
        column, sep, how = item.rpartition(":")
        if not sep:
            column, how = ("*", item) if item == "count" else (item, "")
        if how not in AGGREGATIONS:
            raise QueryError(
                f"--agg {item!r}: expected COLUMN:AGGREGATION with one of "
                f"{', '.join(AGGREGATIONS)} (e.g. decode_tok_s:mean), or count"
            )
        out.append((column or "*", how))
    return tuple(out)


def _check(names: tuple[str, ...], schema: pa.Schema, what: str) -> None:
    for name in names:
        if name not in schema.names:
            raise unknown_column(name, schema, what)


def _aggregate(table: pa.Table, keys: tuple[str, ...], agg: tuple) -> pa.Table:
    agg = agg or (("*", "count"),)
    specs, names = [], []
    for column, how in agg:
        if column == "*":
            specs.append(([], "count_all"))
            names.append("count")
            continue
        _check((column,), table.schema, "--agg column")
        typ = table.schema.field(column).type
        if how not in ("count", "min", "max") and not (
            pa.types.is_integer(typ) or pa.types.is_floating(typ)
        ):
            raise QueryError(f"--agg {column}:{how}: {column} is not numeric ({typ})")
        specs.append((column, AGGREGATIONS[how]))
        names.append(f"{column}_{how}")
    try:
        grouped = table.group_by(list(keys), use_threads=False).aggregate(specs)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise QueryError(f"--group-by/--agg: {' '.join(str(e).split())[:200]}") from None
    # pyarrow names outputs "<col>_<function>"; put the keys first and use our names
    produced = [n for n in grouped.column_names if n not in keys]
    columns = [grouped[k] for k in keys]
    for (column, how), out_name, name in zip(agg, produced, names):
        col = grouped[out_name]
        if how == "median":
            col = pa.array(
                [
                    statistics.median(v) if v else None
                    for v in (_drop_none(x) for x in col.to_pylist())
                ],
                type=pa.float64(),
            )
        columns.append(col)
    out = pa.table(columns, names=[*keys, *names])
    return out.sort_by([(k, "ascending") for k in keys]) if keys else out


def _drop_none(values: list | None) -> list:
    return [v for v in values or [] if v is not None]


def sort_key(item: str) -> tuple[str, str]:
    """'-col' or 'col:desc' -> (col, 'descending'); 'col' or 'col:asc' -> (col, 'ascending').

    On the command line write `--sort=-col` (argparse reads `--sort -col` as an option).

    >>> sort_key("-decode_tok_s"), sort_key("ttft_ms:desc"), sort_key("method")
    (('decode_tok_s', 'descending'), ('ttft_ms', 'descending'), ('method', 'ascending'))
    """
    name, _, direction = item.partition(":")
    if direction not in ("", "asc", "desc"):
        raise QueryError(f"--sort {item!r}: expected COL, -COL, COL:asc or COL:desc")
    descending = name.startswith("-") or direction == "desc"
    return name.removeprefix("-"), "descending" if descending else "ascending"


def _sort(table: pa.Table, sort: tuple[str, ...]) -> pa.Table:
    order = [sort_key(item) for item in sort]
    for name, _ in order:
        if name not in table.column_names:
            raise unknown_column(name, table.schema, "--sort column")
    return table.sort_by(order) if order else table  # nulls last


def _selected(spec: QuerySpec, schema: pa.Schema) -> list[str]:
    if spec.columns == ("all",):
        return list(schema.names)
    if spec.columns:
        _check(spec.columns, schema, "column")
        return list(spec.columns)
    return [c for c in DEFAULT_COLUMNS if c in schema.names]


def run_query(table: pa.Table, spec: QuerySpec) -> pa.Table:
    """Apply a QuerySpec to a loaded table (see the module docstring for the order).

    >>> t = pa.table({"method": ["naive", "cached", "cached"], "decode_tok_s": [1.0, 4.0, 6.0]})
    >>> run_query(t, QuerySpec(group_by=("method",), agg=(("decode_tok_s", "mean"),))).to_pylist()
    [{'method': 'cached', 'decode_tok_s_mean': 5.0}, {'method': 'naive', 'decode_tok_s_mean': 1.0}]
    """
    if spec.where:
        try:
            table = table.filter(parse_where(spec.where, table.schema))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise QueryError(
                f"--where {spec.where!r}: {' '.join(str(e).split())[:200]}; "
                f"{column_list(table.schema)}"
            ) from None
    if spec.group_by:
        _check(spec.group_by, table.schema, "--group-by column")
        table = _aggregate(table, spec.group_by, spec.agg)
        columns = table.column_names
    else:
        columns = _selected(spec, table.schema)
    table = _sort(table, spec.sort)
    if spec.limit is not None:
        table = table.slice(0, spec.limit)
    return table.select(columns)


def distinct(table: pa.Table, column: str) -> list:
    """The distinct non-null values of a column, sorted."""
    return sorted(v for v in pc.unique(table[column]).to_pylist() if v is not None)


def query_results(
    path: Path, spec: QuerySpec, *, latest: bool = False, manifests: bool = False
) -> pa.Table:
    """Load what `spec` needs from the job(s) at `path` and run it (see the module docstring)."""
    schema = results_schema(path)
    stored = set(schema.names) - {PEAK_COLUMN}
    if manifests:
        runs = manifest_table([m for d in job_dirs(path) for m in read_manifests(d)])
        extra = [f for f in runs.schema if f.name not in schema.names]
        schema = pa.schema([*schema, *extra])
    expr = parse_where(spec.where, schema) if spec.where else None
    _check(spec.group_by, schema, "--group-by column")
    _check(tuple(c for c, _ in spec.agg if c != "*"), schema, "--agg column")
    if not spec.group_by:  # with --group-by, --sort names the output columns
        _check(tuple(sort_key(s)[0] for s in spec.sort), schema, "--sort column")
    if spec.columns != ("all",):
        _check(spec.columns, schema, "column")
    columns = None if spec.columns == ("all",) else _needed(spec, schema)
    where_names = _names_in(spec.where, schema) if spec.where else set()
    if expr is not None and not latest and where_names <= stored:
        try:
            table = load_results(path, manifests=manifests, columns=columns, filter=expr)
            return run_query(table, replace(spec, where=None))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # the same filter on the loaded table names the problem
    if columns is not None:
        columns = [*columns, *sorted(where_names)]
    table = load_results(path, latest=latest, manifests=manifests, columns=columns)
    return run_query(table, spec)


def _needed(spec: QuerySpec, schema: pa.Schema) -> list[str]:
    """The columns a query outputs, groups, aggregates or sorts by."""
    names = list(spec.columns) or [c for c in DEFAULT_COLUMNS if c in schema.names]
    names += [*spec.group_by, *(c for c, _ in spec.agg if c != "*")]
    names += [n for n in (sort_key(s)[0] for s in spec.sort) if n in schema.names]
    return list(dict.fromkeys(names))


def _names_in(text: str, schema: pa.Schema) -> set[str]:
    """The schema's names that appear as words in `text` (a superset of those it uses)."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    return {n for n in schema.names if n in words}
