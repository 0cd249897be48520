"""The ETA of a submit, estimated per kind of cell (see orchestrator/run/progress.py).

    est = EtaEstimator.for_cells(todo)            # the cells to run (CellSpec)
    est.finished(record, final=True)              # each finished attempt (a record dict)
    est.seconds_left(running, workers=2, now=t)   # -> (seconds, complete) or None

Kinds are (model tag, method, batch size, prompt length, new tokens); a cell to run is counted
as the mean measured time of its kind; else from the cells of its model and method (else of its
method), scaled to its size by a power law fitted to them (a naive cell's time grows with batch
x sequence, a cached one's barely); else (then `complete` is False) as the slowest method so far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Kind = tuple  # (model tag, method, batch_size, prompt_len, max_tokens)


def cell_kind(cell: Any) -> Kind:
    """The kind of a cell (a CellSpec or a record dict) for the ETA: model, method, sizes."""
    if isinstance(cell, dict):
        get = cell.get
        model = get("model_tag")
    else:

        def get(name: str) -> Any:
            return getattr(cell, name, None)

        model = getattr(getattr(cell, "model", None), "tag", None)
    return (model, get("method"), get("batch_size"), get("prompt_len"), get("max_tokens"))


def cell_size(kind: Kind) -> float | None:
    """Tokens a cell holds, batch x (prompt + new tokens): what its time grows with."""
    _, _, batch, prompt, new = kind
    if not all(isinstance(v, int) and v > 0 for v in (batch, prompt, new)):
        return None
    return float(batch * (prompt + new))


def scaled(points: list[tuple[float | None, float]], size: float | None) -> float:
    """Seconds at `size` from (size, seconds) points: seconds ~ size^e fitted on a log-log
    scale (e kept within [0, 2]; naive cells grow with the size, cached ones barely), or their
    mean when the sizes are unknown or all alike.

    >>> round(scaled([(100.0, 1.0), (400.0, 4.0)], 200.0), 3)
    2.0
    """
    mean = sum(w for _, w in points) / len(points)
    logs = [(math.log(s), math.log(w)) for s, w in points if s and w > 0]
    if size is None or len({x for x, _ in logs}) < 2:
        return mean
    mx = sum(x for x, _ in logs) / len(logs)
    my = sum(y for _, y in logs) / len(logs)
    var = sum((x - mx) ** 2 for x, _ in logs)
    e = min(2.0, max(0.0, sum((x - mx) * (y - my) for x, y in logs) / var))
    return math.exp(my + e * (math.log(size) - mx))


@dataclass
class EtaEstimator:
    """Seconds left from the cells to run and the measured time of finished cells by kind."""

    pending: dict[str, Kind] = field(default_factory=dict)  # cell_id -> kind, not yet final
    by_label: dict[str, Kind] = field(default_factory=dict)  # label -> kind (running cells)
    walls: dict[Kind, list[float]] = field(default_factory=dict)  # kind -> measured seconds

    @classmethod
    def for_cells(cls, cells: Sequence[Any]) -> EtaEstimator:
        est = cls()
        for cell in cells:
            kind = cell_kind(cell)
            est.pending[str(getattr(cell, "cell_id", id(cell)))] = kind
            label = getattr(cell, "label", None)
            if callable(label):
                est.by_label[label()] = kind
        return est

    def finished(self, record: dict, *, final: bool) -> None:
        cid = str(record.get("cell_id"))
        kind = self.pending.get(cid) or cell_kind(record)
        wall = record.get("cell_wall_s")
        if wall is not None:
            self.walls.setdefault(kind, []).append(
                max(0.0, wall - (record.get("model_load_s") or 0))
            )
        if final:
            self.pending.pop(cid, None)

    def _method_mean(self, method: str) -> float:
        seen = [w for k, ws in self.walls.items() if k[1] == method for w in ws]
        return sum(seen) / len(seen) if seen else 0.0

    def _guess(self, kind: Kind) -> float | None:
        """Seconds for a cell of `kind`: the mean of finished cells of the same kind, else a
        power law in the cell's size fitted to the same model and method (else method)."""
        same_kind = [w for w in self.walls.get(kind, ())]
        if same_kind:
            return sum(same_kind) / len(same_kind)
        for same in (lambda k: k[:2] == kind[:2], lambda k: k[1] == kind[1]):
            points = [(cell_size(k), w) for k, ws in self.walls.items() if same(k) for w in ws]
            if points:
                return scaled(points, cell_size(kind))
        return None

    def seconds_left(
        self, running: dict[int, tuple[str, float]], workers: int, now: float
    ) -> tuple[float, bool] | None:
        """(seconds, complete) or None before any measured cell; `complete` is False when
        some cell's method has no finished cell yet (then counted as the slowest method)."""
        if not self.walls or not self.pending:
            return None if not self.walls else (0.0, True)
        slowest = max(self._method_mean(kind[1]) for kind in self.walls)
        total, complete = 0.0, True
        for kind in self.pending.values():
            guess = self._guess(kind)
            if guess is None:
                guess, complete = slowest, False
            total += guess
        for label, since in running.values():  # time a running cell has already spent
            kind = self.by_label.get(label)
            if kind is not None:
                total -= min(now - since, self._guess(kind) or 0.0)
        return max(0.0, total) / max(1, workers), complete
