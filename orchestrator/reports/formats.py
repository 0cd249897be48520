"""Rendering result tables for stdout: an aligned text table, CSV, JSON or Markdown.

    print(render(table, "markdown"))      # table: a pyarrow Table or a list of dicts

Lists (e.g. the raw `decode_step_ms`) are shortened in text tables and written as JSON in CSV;
timestamps are ISO 8601; NaN is written as empty/null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import date, datetime
from typing import Any, Literal

import pyarrow as pa

Format = Literal["table", "csv", "json", "markdown"]
FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown")
LIST_PREVIEW = 3


def _rows(data: pa.Table | list[dict]) -> tuple[list[str], list[dict]]:
    if isinstance(data, pa.Table):
        return data.column_names, data.to_pylist()
    names: list[str] = []
    for row in data:
        names.extend(k for k in row if k not in names)
    return names, list(data)


def _plain(value: Any) -> Any:
    """JSON-ready value: timestamps as ISO text, NaN as None."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _short(value: Any) -> Any:
    """A value for a text table: short lists, ISO timestamps, numbers left as numbers."""
    if isinstance(value, (list, tuple)):
        head = ", ".join(str(_short(v)) for v in value[:LIST_PREVIEW])
        more = f", ... ({len(value)})" if len(value) > LIST_PREVIEW else ""
        return f"[{head}{more}]"
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ", timespec="seconds")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _text_table(names: list[str], rows: list[dict], tablefmt: str) -> str:
    body = [[_short(row.get(n)) for n in names] for row in rows]
    # numbers are formatted here and right-aligned; text is never parsed as a number (a cell_id
    # such as "1234e567..." would otherwise print as a float)
    align = [
        "right"
        if any(line[i] is not None for line in body)
        and all(line[i] is None or _is_number(line[i]) for line in body)
        else "left"
        for i in range(len(names))
    ]
    from tabulate import tabulate  # ~60 ms to import: only for the table and markdown forms

    return tabulate(
        [[_cell_text(v) for v in line] for line in body],
        headers=names,
        tablefmt=tablefmt,
        disable_numparse=True,
        colalign=align,
    )


def render(data: pa.Table | list[dict], fmt: Format = "table") -> str:
    """The rows of `data` in one of FORMATS (no trailing newline).

    >>> print(render([{"method": "cached", "decode_tok_s": 1234.5}], "csv"))
    method,decode_tok_s
    cached,1234.5
    """
    names, rows = _rows(data)
    if fmt == "json":
        lines = [json.dumps({n: _plain(r.get(n)) for n in names}) for r in rows]
        return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            line = []
            for n in names:
                v = _plain(row.get(n))
                line.append(json.dumps(v) if isinstance(v, (list, dict)) else v)
            writer.writerow(line)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        return _text_table(names, rows, "github")
    if fmt == "table":
        return _text_table(names, rows, "simple")
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
