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
    columns = [_column_texts([row.get(n) for row in rows]) for n in names]
    return aligned(names, [t for t, _ in columns], [a for _, a in columns], tablefmt)


def aligned(
    names: list[str], texts: list[list[str]], align: list[str], tablefmt: str = "simple"
) -> str:
    """Columns of texts (one list per column) under their names, as tabulate lays them out
    (`align`: "left" or "right" per column; `tablefmt`: "simple" or "github")."""
    if tablefmt == "simple" and all(_plain_text(t) for t in [*texts, names]):
        return _simple_table(names, texts, align)  # tabulate's "simple" layout, in C-speed steps
    from tabulate import tabulate  # ~60 ms to import: only for the markdown form and odd text

    return tabulate(
        [list(line) for line in zip(*texts)] if texts else [],
        headers=names,
        tablefmt=tablefmt,
        disable_numparse=True,
        colalign=align,
    )


def _column_texts(values: list) -> tuple[list[str], str]:
    """(each value's text, the column's alignment). Numbers are formatted here and right-aligned;
    text is never parsed as a number (a cell_id such as "1234e567..." would print as a float)."""
    kinds = set(map(type, values))
    if kinds <= {int, float, type(None)}:  # the usual column, in one pass (bool is not int here)
        texts = [_number_text(v) for v in values]
        return texts, "right" if any(t != "-" for t in texts) else "left"
    if kinds <= {str, type(None)}:
        return ["-" if v is None else v for v in values], "left"
    shown = [_short(v) for v in values]
    numbers = [v for v in shown if v is not None]
    right = bool(numbers) and all(_is_number(v) for v in numbers)
    return [_cell_text(v) for v in shown], "right" if right else "left"


def _number_text(value: float | None) -> str:
    """`_cell_text(_short(value))` for a number (int or float) or None (NaN shows as "-")."""
    if value is None:
        return "-"
    if value.__class__ is float:
        return "-" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _plain_text(texts: list[str]) -> bool:
    """Whether every text is printable Latin-1 on one line ("±" included), one column per
    character: what `_simple_table` lays out as tabulate would (tabulate also measures wide
    characters and colour codes)."""
    joined = "".join(texts)
    return joined.isprintable() and max(joined, default=" ") <= "\xff"


def _simple_table(names: list[str], texts: list[list[str]], align: list[str]) -> str:
    """tabulate(tablefmt="simple") for plain text: values trimmed, each column as wide as its
    widest text or its name plus two, names aligned like their column, two spaces apart, lines
    right-stripped.

    >>> print(_simple_table(["x", "yy"], [["a", "bb"], ["1", "22"]], ["left", "right"]))
    x      yy
    ---  ----
    a       1
    bb     22
    """
    texts = [[t.strip() for t in col] for col in texts]  # as tabulate trims values (not names)
    widths = [max(len(n) + 2, max(map(len, t), default=0)) for n, t in zip(names, texts)]
    pads = [str.rjust if a == "right" else str.ljust for a in align]
    head = "  ".join(pad(n, w) for n, w, pad in zip(names, widths, pads)).rstrip()
    dashes = "  ".join("-" * w for w in widths)
    for col, w, pad in zip(texts, widths, pads):
        col[:] = [pad(t, w) for t in col]  # in place: 500k-line tables hold one copy of the text
    body = ["  ".join(line).rstrip() for line in zip(*texts)]
    return "\n".join([head, dashes, *body])


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
