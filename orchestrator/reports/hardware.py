"""Which hardware a result row was measured on, so that a ratio never divides two machines.

    hardware_id(row)   # 'cuda NVIDIA H100 80GB HBM3 @ 10.0.0.5', 'cpu AMD EPYC 7B13 @ host-a'

Two rows are comparable (a speed-up, a run comparison) only when their identities are equal:
same device kind, same accelerator model (GPU) or CPU model, same node. Rows written before the
model and node columns existed fall back to what they have (`gpu_name`, `hostname`, `device`);
a column missing from both rows of a pair simply does not take part.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from orchestrator.reports.combos import combos

# Each part of the identity: the first of these columns a row has (newest names first).
ACCELERATOR_COLUMNS = ("accelerator_model", "gpu_name")
CPU_COLUMNS = ("cpu_model",)
NODE_COLUMNS = ("node_ip", "hostname")
HARDWARE_COLUMNS = ("device", *ACCELERATOR_COLUMNS, *CPU_COLUMNS, *NODE_COLUMNS)


def _first(row: dict, columns: tuple[str, ...]) -> str | None:
    for column in columns:
        value = row.get(column)
        if value not in (None, ""):
            return str(value)
    return None


def hardware_id(row: dict) -> str:
    """One text naming the device kind, its model and the node ('?' when nothing is recorded).

    >>> hardware_id({"device": "cuda:0", "gpu_name": "NVIDIA H100", "hostname": "n1"})
    'cuda NVIDIA H100 @ n1'
    >>> hardware_id({"device": "cpu", "cpu_model": "AMD EPYC 7B13", "node_ip": "10.0.0.5"})
    'cpu AMD EPYC 7B13 @ 10.0.0.5'
    """
    kind = str(row.get("device") or "").split(":")[0] or None
    model = _first(row, ACCELERATOR_COLUMNS if kind == "cuda" else CPU_COLUMNS)
    node = _first(row, NODE_COLUMNS)
    text = " ".join(p for p in (kind, model) if p)
    if node:
        text = f"{text} @ {node}" if text else f"@ {node}"
    return text or "?"


def hardware_ids(table: pa.Table) -> pa.Array:
    """`hardware_id` of every row of `table` (computed once per distinct machine)."""
    codes, machines = combos(table, list(HARDWARE_COLUMNS))
    return pa.array([hardware_id(m) for m in machines], pa.string()).take(codes)


def letters(ids: Iterable[str]) -> dict[str, str]:
    """Short names A, B, ... for the distinct identities, in first-seen order.

    >>> letters(["x", "y", "x"])
    {'x': 'A', 'y': 'B'}
    """
    out: dict[str, str] = {}
    for hw in ids:
        if hw not in out:
            n = len(out)
            out[hw] = chr(ord("A") + n) if n < 26 else f"H{n + 1}"
    return out


def legend(names: dict[str, str]) -> list[str]:
    """'hardware A: cpu ... @ host' lines for a letters() mapping."""
    return [f"hardware {short}: {hw}" for hw, short in names.items()]
