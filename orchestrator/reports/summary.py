"""Summary tables from result rows (an Arrow table, or plain dicts): one table per model.

    print(render(rows, title="sweep"))              # fits the terminal (blocks of columns)
    print(render(rows, title="sweep", wide=True))   # one line per row, every column
    records(rows)                                   # the same data as dicts (csv/json/markdown)

Rows are (batch_size, prompt_len, max_tokens) plus any other parameter that varies; columns are
decode tokens/s per method, each method's speedup over naive, TTFT, peak memory, and whether
its greedy tokens matched naive's. Only the latest attempt of each cell counts.

The rows stay columnar until the tables' lines are formatted (orchestrator/reports/
model_table.py): a 100k-cell job is summarized in about the time it takes to read it.

A speedup divides two measurements, so it is computed only when both ran on one hardware
identity (orchestrator/reports/hardware.py); otherwise the cell says "mixed hw" and a note
names the hardware. Token matches are decided from `tokens_sha256` and `n_generated`; the
generated ids are needed only to name the first mismatching token, and `fetch_ids` can supply
them for just the mismatching cells (rows read without the `generated_ids` column).
"""

from __future__ import annotations

import textwrap

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.reports.combos import combos
from orchestrator.reports.dataset import latest_attempts
from orchestrator.reports.formats import aligned
from orchestrator.reports.hardware import HARDWARE_COLUMNS, hardware_ids
from orchestrator.reports.layout import fit, terminal_width
from orchestrator.reports.lines import EXTRA_KEYS, FIELDS, HW, ROW_KEYS
from orchestrator.reports.model_table import FetchIds, ModelTable, build, where_text
from workers.record import Status

Rows = pa.Table | list[dict]  # as read (dataset.summary_rows), or dicts (tests, callers)
MODEL_COLUMNS = ("model_tag", "model_checkpoint", "model_step", "model_seed")


def as_table(rows: Rows) -> pa.Table:
    """`rows` as an Arrow table (dicts: one column per key any row has)."""
    if isinstance(rows, pa.Table):
        return rows
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})


_LATEST = b"unet_bench.latest"  # schema metadata: this table already holds latest attempts only


def latest_rows(rows: Rows) -> pa.Table:
    """The most recent attempt of each cell (an ok row wins over a later failed one); marked,
    so that the summary's parts, each asking for the latest rows, reduce them once."""
    table = as_table(rows)
    if table.schema.metadata and _LATEST in table.schema.metadata:
        return table
    latest = latest_attempts(table)
    return latest.replace_schema_metadata({**(latest.schema.metadata or {}), _LATEST: b"1"})


def _is_ok(table: pa.Table) -> pa.Array:
    if "status" not in table.column_names:
        return pa.array([False] * table.num_rows, pa.bool_())
    return pc.fill_null(pc.equal(table["status"], Status.OK.value), False)


def _model_label(row: dict) -> str:
    ckpt = row.get("model_checkpoint")
    if ckpt == "random":
        return f"{row.get('model_tag')} (random init, seed {row.get('model_seed')})"
    return f"{row.get('model_tag')} ({ckpt} step {row.get('model_step')})"


def model_tables(rows: Rows, fetch_ids: FetchIds | None = None) -> list[ModelTable]:
    """One ModelTable per model (by label), from the ok rows among the latest attempts."""
    latest = latest_rows(rows)
    wanted = [*MODEL_COLUMNS, *HARDWARE_COLUMNS, "method", *ROW_KEYS, *EXTRA_KEYS, *FIELDS]
    ok = _where(
        latest.select([c for c in dict.fromkeys(wanted) if c in latest.column_names]),
        _is_ok(latest),
    )
    if not ok.num_rows:
        return []
    ok = ok.append_column(HW, hardware_ids(ok))
    codes, models = combos(ok, list(MODEL_COLUMNS))
    by_label: dict[str, list[int]] = {}
    for code, combo in enumerate(models):
        by_label.setdefault(_model_label(combo), []).append(code)
    return [
        build(label, _where(ok, pc.is_in(codes, pa.array(by_label[label], pa.int32()))), fetch_ids)
        for label in sorted(by_label)
    ]


def _where(table: pa.Table, mask: pa.Array) -> pa.Table:
    """`table.filter(mask)`, without copying 100k rows when every row passes (the usual case)."""
    return table if pc.all(mask).as_py() is not False else table.filter(mask)


def records(rows: Rows, fetch_ids: FetchIds | None = None) -> list[dict]:
    """Every model table's rows as dicts (model, key columns, hardware, every metric column)."""
    out = []
    for table in model_tables(rows, fetch_ids):
        n = len(table.columns[0].values) if table.columns else 0
        for i in range(n):
            line: dict = {"model": table.label, "hardware": table.row_hardware[i]}
            for col in table.columns:
                value = col.raw[i] if col.raw is not None else col.values[i]
                line[col.wide] = value
            out.append(line)
    return out


def _wide(table: ModelTable) -> str:
    names = [col.wide for col in table.columns]
    return aligned(names, [list(col.values) for col in table.columns], ["left"] * len(names))


FAILURE_HEADERS = (
    "cell_id",
    "model",
    "method",
    "batch_size",
    "prompt_len",
    "max_tokens",
    "status",
    "attempt",
    "error",
)
ERROR_LINES = 3  # lines of a failed cell's error in the terminal form


def failure_table(rows: Rows, width: int | None = None) -> str | None:
    """The cells whose latest attempt did not succeed, or None: a table (errors cut to 100
    characters) when `width` is None, else two lines per cell fitted to `width`."""
    latest = latest_rows(rows)
    failed = latest.filter(pc.invert(_is_ok(latest))).to_pylist()
    if not failed:
        return None
    if width is None:
        table = [[str(r.get(h)) for h in FAILURE_HEADERS[:-1]] for r in failed]
        for line, r in zip(table, failed):
            error = " ".join((r.get("error") or "").split())
            line.append(error if len(error) <= 100 else error[:97] + "...")
        from tabulate import tabulate

        return tabulate(table, headers=FAILURE_HEADERS, tablefmt="simple", disable_numparse=True)
    models = len({r.get("model_tag") for r in failed}) > 1
    out = []
    for r in failed:
        cell = f"{r.get('model_tag')} " if models else ""
        cell += f"{r.get('method')} " + where_text(tuple(r.get(k) for k in ROW_KEYS), ROW_KEYS)
        out.append(f"{r.get('cell_id')}  {cell}  {r.get('status')} (attempt {r.get('attempt')})")
        error = " ".join((r.get("error") or "").split())
        if error:
            lines = textwrap.wrap(error, max(20, width - 4), break_on_hyphens=False)
            if len(lines) > ERROR_LINES:
                lines = [*lines[: ERROR_LINES - 1], lines[ERROR_LINES - 1][:-3] + "..."]
            out += ["    " + line for line in lines]
    return "\n".join(out)


def _value_counts(table: pa.Table, column: str) -> dict:
    """{value: rows} of one column (nulls under None); {} when the column is missing."""
    if column not in table.column_names:
        return {}
    counts = pc.value_counts(table[column]).to_pylist()
    return {c["values"]: c["counts"] for c in counts}


def status_counts(rows: Rows) -> dict[str, int]:
    latest = latest_rows(rows)
    if "status" not in latest.column_names:
        return {None: latest.num_rows} if latest.num_rows else {}
    return _value_counts(latest, "status")


def runs_note(rows: Rows) -> str | None:
    """A note when the latest attempts of the cells come from more than one run, else None.

    >>> runs_note([{"cell_id": "a", "run_id": "r1"}, {"cell_id": "b", "run_id": "r2"}])
    'note: these cells come from 2 runs: r1 (1 cell), r2 (1 cell)'
    """
    counts = {str(run): n for run, n in _value_counts(latest_rows(rows), "run_id").items() if run}
    if len(counts) < 2:
        return None
    parts = [f"{run} ({n} cell{'s' if n != 1 else ''})" for run, n in sorted(counts.items())]
    return f"note: these cells come from {len(counts)} runs: {', '.join(parts)}"


def notes(rows: Rows, fetch_ids: FetchIds | None = None) -> list[str]:
    """The lines render() prints under the tables: mixed hardware, the legend, mixed runs."""
    rows = as_table(rows)
    out = [note for table in model_tables(rows, fetch_ids) for note in table.notes]
    note = runs_note(rows)
    return [*out, note] if note else out


def _wrap(text: str, width: int | None) -> str:
    """A note folded to the table's width (continuation lines indented); as is when wide."""
    if width is None:
        return text
    return textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False)


def render(
    rows: Rows,
    title: str | None = None,
    *,
    wide: bool = False,
    width: int | None = None,
    fetch_ids: FetchIds | None = None,
) -> str:
    """All tables as one text block (for stdout): fitted to `width` (default: the terminal's
    columns) unless `wide`, which prints one line per row however long."""
    width = None if wide else (terminal_width() if width is None else width)
    rows = latest_rows(rows)  # once: the steps below find it marked
    parts = [f"== {title} =="] if title else []
    for table in model_tables(rows, fetch_ids):
        head = f"\nmodel {table.label}"
        if table.hardware and table.hardware != "?":
            head += f"\non {table.hardware}"
        body = _wide(table) if wide else fit(table.columns, width)
        parts.append(f"{head}\n{body}")
        parts += [""] * bool(table.notes) + [_wrap(note, width) for note in table.notes]
    failures = failure_table(rows, width)
    if failures:
        parts.append(f"\ncells that did not succeed\n{failures}")
    counts = status_counts(rows)
    parts.append(
        "\n"
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda c: str(c[0])))
        + " (cells)"
    )
    note = runs_note(rows)
    if note:
        parts.append(_wrap(note, width))
    return "\n".join(parts).lstrip("\n")
