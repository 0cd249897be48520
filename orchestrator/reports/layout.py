"""Text tables that fit a terminal: columns under two-line grouped headers, split into blocks.

    print(fit(columns, width=80))

Key columns (the cell's parameters) start every block; the other columns are added group by
group (a group is a run of columns with the same group label, e.g. "decode tok/s" over "naive"
and "cached") while the block stays within `width`, then a new block starts. A group wider
than a whole block is split column by column. Nothing is ever cut.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

GAP = "  "
MIN_WIDTH = 40


@dataclass(frozen=True, kw_only=True)
class Column:
    """One column: a group label (first header line), a name (second line) and its texts."""

    group: str
    name: str
    values: list[str]
    key: bool = False
    align: str = "right"  # or "left"
    wide: str = ""  # its header in the one-line (wide) form
    raw: list | None = None  # the values as numbers, for csv/json (default: the texts)

    @cached_property
    def width(self) -> int:
        """Its widest text, name included (at least 1); measured once, laid out many times."""
        return max(len(self.name), max(map(len, self.values), default=0), 1)

    @cached_property
    def array(self) -> pa.Array:
        """The texts as an Arrow array (padded and joined into lines without a Python loop)."""
        return pa.array(self.values, pa.string())


def terminal_width() -> int:
    """The terminal's columns (COLUMNS, then the terminal, else 80), at least MIN_WIDTH."""
    return max(MIN_WIDTH, shutil.get_terminal_size((80, 24)).columns)


def _groups(columns: list[Column]) -> list[list[Column]]:
    """Consecutive non-key columns with one group label form a group; a key column is alone."""
    out: list[list[Column]] = []
    for col in columns:
        if out and not col.key and not out[-1][0].key and out[-1][0].group == col.group:
            out[-1].append(col)
        else:
            out.append([col])
    return out


def _widths(group: list[Column]) -> list[int]:
    widths = [c.width for c in group]
    span = sum(widths) + len(GAP) * (len(widths) - 1)
    widths[-1] += max(0, len(group[0].group) - span)  # a long group label widens its last column
    return widths


def block_width(groups: list[list[Column]]) -> int:
    widths = [w for g in groups for w in _widths(g)]
    return sum(widths) + len(GAP) * (len(widths) - 1)


def render_block(groups: list[list[Column]]) -> str:
    """One block: group line (if any group has a label), name line, dashes, rows."""
    heads, names, dashes, padded = [], [], [], []
    for group in groups:
        widths = _widths(group)
        span = sum(widths) + len(GAP) * (len(widths) - 1)
        align_head = str.rjust if len(group) == 1 and group[0].align == "right" else str.ljust
        heads.append(align_head(group[0].group, span))
        for col, w in zip(group, widths):
            pad = str.rjust if col.align == "right" else str.ljust
            names.append(pad(col.name, w))
            dashes.append("-" * w)
            padder = pc.utf8_lpad if col.align == "right" else pc.utf8_rpad
            padded.append(padder(col.array, w))  # a column at a time, in Arrow
    lines = [GAP.join(heads)] if any(h.strip() for h in heads) else []
    head = "\n".join(line.rstrip() for line in [*lines, GAP.join(names), GAP.join(dashes)])
    if not padded or not len(padded[0]):
        return head
    rows = pc.utf8_rtrim_whitespace(pc.binary_join_element_wise(*padded, GAP))
    return head + "\n" + "\n".join(rows.to_pylist())


def fit(columns: list[Column], width: int | None = None) -> str:
    """The columns as one or more blocks no wider than `width` (see the module docstring)."""
    width = terminal_width() if width is None else width
    groups = _groups(columns)
    keys = [g for g in groups if g[0].key]
    blocks: list[list[list[Column]]] = []
    current: list[list[Column]] = []
    queue = [g for g in groups if not g[0].key]
    while queue:
        group = queue.pop(0)
        if block_width([*keys, *current, group]) <= width:
            current.append(group)
            continue
        if current:  # start a new block and try again
            blocks.append(current)
            current = []
            queue.insert(0, group)
            continue
        # a group too wide for a block of its own: its longest prefix that fits (>= 1 column)
        n = len(group) - 1
        while n > 1 and block_width([*keys, group[:n]]) > width:
            n -= 1
        n = max(n, 1)
        current.append(group[:n])
        if group[n:]:
            queue.insert(0, group[n:])
    if current or not blocks:
        blocks.append(current)
    return "\n\n".join(render_block([*keys, *block]) for block in blocks if keys or block)
