"""Summary tables from result rows (plain dicts): one table per model.

    print(render(rows, title="sweep"))              # fits the terminal (blocks of columns)
    print(render(rows, title="sweep", wide=True))   # one line per row, every column
    records(rows)                                   # the same data as dicts (csv/json/markdown)

Rows are (batch_size, prompt_len, max_tokens) plus any other parameter that varies; columns are
decode tokens/s per method, each method's speedup over naive, TTFT, peak memory, and whether
its greedy tokens matched naive's. Only the latest attempt of each cell counts.

A speedup divides two measurements, so it is computed only when both ran on one hardware
identity (orchestrator/reports/hardware.py); otherwise the cell says "mixed hw" and a note
names the hardware. Token matches are decided from `tokens_sha256` and `n_generated`; the
generated ids are needed only to name the first mismatching token, and `fetch_ids` can supply
them for just the mismatching cells (rows read without the `generated_ids` column).
"""

from __future__ import annotations

import textwrap
from collections import Counter, OrderedDict

from tabulate import tabulate

from orchestrator.reports.layout import fit, terminal_width
from orchestrator.reports.model_table import ROW_KEYS, FetchIds, ModelTable, build, where_text
from workers.record import Status


def latest_rows(rows: list[dict]) -> list[dict]:
    """The most recent attempt of each cell (an ok row wins over a later failed one)."""
    best: dict[str, dict] = {}
    for row in rows:
        cid = row.get("cell_id")
        cur = best.get(cid)
        if cur is None or _rank(row) > _rank(cur):
            best[cid] = row
    return list(best.values())


def _rank(row: dict) -> tuple:
    return (
        row.get("status") == Status.OK.value,
        str(row.get("finished_at") or ""),
        row.get("attempt") or 0,
    )


def _model_label(row: dict) -> str:
    ckpt = row.get("model_checkpoint")
    if ckpt == "random":
        return f"{row.get('model_tag')} (random init, seed {row.get('model_seed')})"
    return f"{row.get('model_tag')} ({ckpt} step {row.get('model_step')})"


def model_tables(rows: list[dict], fetch_ids: FetchIds | None = None) -> list[ModelTable]:
    """One ModelTable per model, from the ok rows among the latest attempts."""
    ok = [r for r in latest_rows(rows) if r.get("status") == Status.OK.value]
    by_model: OrderedDict[str, list[dict]] = OrderedDict()
    for row in sorted(ok, key=lambda r: (_model_label(r), *(r.get(k) or 0 for k in ROW_KEYS))):
        by_model.setdefault(_model_label(row), []).append(row)
    return [build(label, rs, fetch_ids) for label, rs in by_model.items()]


def records(rows: list[dict], fetch_ids: FetchIds | None = None) -> list[dict]:
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
    body = list(zip(*(col.values for col in table.columns)))
    return tabulate(
        body,
        headers=[col.wide for col in table.columns],
        tablefmt="simple",
        disable_numparse=True,
    )


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


def failure_table(rows: list[dict], width: int | None = None) -> str | None:
    """The cells whose latest attempt did not succeed, or None: a table (errors cut to 100
    characters) when `width` is None, else two lines per cell fitted to `width`."""
    failed = [r for r in latest_rows(rows) if r.get("status") != Status.OK.value]
    if not failed:
        return None
    if width is None:
        table = [[str(r.get(h)) for h in FAILURE_HEADERS[:-1]] for r in failed]
        for line, r in zip(table, failed):
            error = " ".join((r.get("error") or "").split())
            line.append(error if len(error) <= 100 else error[:97] + "...")
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


def status_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in latest_rows(rows):
        counts[row.get("status")] = counts.get(row.get("status"), 0) + 1
    return counts


def runs_note(rows: list[dict]) -> str | None:
    """A note when the latest attempts of the cells come from more than one run, else None.

    >>> runs_note([{"cell_id": "a", "run_id": "r1"}, {"cell_id": "b", "run_id": "r2"}])
    'note: these cells come from 2 runs: r1 (1 cell), r2 (1 cell)'
    """
    counts = Counter(str(r.get("run_id")) for r in latest_rows(rows) if r.get("run_id"))
    if len(counts) < 2:
        return None
    parts = [f"{run} ({n} cell{'s' if n != 1 else ''})" for run, n in sorted(counts.items())]
    return f"note: these cells come from {len(counts)} runs: {', '.join(parts)}"


def notes(rows: list[dict], fetch_ids: FetchIds | None = None) -> list[str]:
    """The lines render() prints under the tables: mixed hardware, the legend, mixed runs."""
    out = [note for table in model_tables(rows, fetch_ids) for note in table.notes]
    note = runs_note(rows)
    return [*out, note] if note else out


def _wrap(text: str, width: int | None) -> str:
    """A note folded to the table's width (continuation lines indented); as is when wide."""
    if width is None:
        return text
    return textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False)


def render(
    rows: list[dict],
    title: str | None = None,
    *,
    wide: bool = False,
    width: int | None = None,
    fetch_ids: FetchIds | None = None,
) -> str:
    """All tables as one text block (for stdout): fitted to `width` (default: the terminal's
    columns) unless `wide`, which prints one line per row however long."""
    width = None if wide else (terminal_width() if width is None else width)
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
    parts.append("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " (cells)")
    note = runs_note(rows)
    if note:
        parts.append(_wrap(note, width))
    return "\n".join(parts).lstrip("\n")
