"""The cells waiting to run: grouped into units of compared cells, queued per model.

A unit is the cells a summary compares with each other: the same model and the same parameters
except `method` (naive and cached of one batch size, prompt and length). A unit goes to one
worker, which runs its cells one after another, so a speed-up divides two numbers measured by
one process on one device. Units wait in one queue per model, so a worker keeps the model it has
loaded.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.spec.grid import CellSpec


@dataclass(eq=False)
class Task:
    """One attempt of one cell. `slot` and the clock are set when it is sent to a worker;
    `started` is reset when it actually starts (it may first wait behind another cell)."""

    cell: CellSpec
    cell_id: str
    attempt: int
    slot: Any = None
    ref: Any = None
    started: float = 0.0
    started_at: str = ""
    cancelled: str | None = None  # why the driver cancelled it before it started
    alone: bool = False  # run with no other cell queued on its worker (it may kill the worker)


def unit_key(cell: CellSpec) -> tuple:
    """Cells with the same key are compared by the summary (all but `method` equal)."""
    return (
        cell.model.key(),
        cell.batch_size,
        cell.prompt_len,
        cell.max_tokens,
        cell.temperature,
        cell.top_k,
        cell.dtype,
        cell.warmup,
        cell.repeats,
        cell.seed,
        cell.prompt,
        cell.profile,
        cell.memory_budget_bytes,
    )


class CellQueue:
    """Units of tasks, one FIFO per model key.

    >>> q = CellQueue()
    >>> bool(q)
    False
    """

    def __init__(self) -> None:
        self.queues: OrderedDict[str, deque[list[Task]]] = OrderedDict()

    def add_cells(self, cells: Iterable[CellSpec], first_attempt: dict[str, int]) -> int:
        """Group `cells` into units (first appearance order) and queue them; returns the count."""
        units: dict[tuple, list[Task]] = {}
        n = 0
        for cell in cells:
            cid = cell.cell_id
            task = Task(cell=cell, cell_id=cid, attempt=first_attempt.get(cid, 1))
            units.setdefault(unit_key(cell), []).append(task)
            n += 1
        for unit in units.values():
            self.push(unit)
        return n

    def push(self, unit: list[Task], front: bool = False) -> None:
        if not unit:
            return
        queue = self.queues.setdefault(unit[0].cell.model.key(), deque())
        queue.appendleft(unit) if front else queue.append(unit)

    def pop_unit(self, model_key: str | None, held: set[str]) -> list[Task] | None:
        """The next unit for a worker holding `model_key`: its own model first, then a model
        no other worker holds, then the model with the most units left."""
        if model_key is not None and self.queues.get(model_key):
            return self.queues[model_key].popleft()
        candidates = [k for k, q in self.queues.items() if q]
        if not candidates:
            return None
        free = [k for k in candidates if k not in held] or candidates
        key = max(free, key=lambda k: len(self.queues[k]))
        return self.queues[key].popleft()

    def remove_if(self, predicate) -> list[Task]:
        """Take out every queued task for which predicate(task) holds; returns them."""
        taken: list[Task] = []
        for queue in self.queues.values():
            kept: deque[list[Task]] = deque()
            for unit in queue:
                rest = [t for t in unit if not predicate(t)]
                taken.extend(t for t in unit if predicate(t))
                if rest:
                    kept.append(rest)
            queue.clear()
            queue.extend(kept)
        return taken

    def drain(self) -> Iterator[Task]:
        """Every queued task, emptying the queue."""
        for queue in self.queues.values():
            while queue:
                yield from queue.popleft()

    def __bool__(self) -> bool:
        return any(self.queues.values())
