"""Which cells a `submit` runs, from the rows already in the job's results directory.

Each cell of the job is in one of three states, decided by its rows (matched by `cell_id`):

    ok          some attempt has status ok
    failed      no ok row, and its latest attempt (highest `attempt`) is a final failure:
                error (retries used up), timeout, oom or skipped_oom
    unfinished  no row at all, or its latest row is a worker death that was going to be
                retried (`will_retry`) when the driver stopped

    mode      runs                          skips
    resume    unfinished                    ok, failed (reported; --rerun failed runs them)
    failed    unfinished + failed           ok                      (submit --rerun failed)
    all       every cell                    nothing                 (submit --fresh)

    plan = plan_cells(cells, store.cell_history(), mode="resume")
    plan.todo, plan.skipped_ok, plan.skipped_failed

Earlier rows are never deleted; a re-run cell continues its attempt numbering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from orchestrator.spec.grid import CellSpec
from workers.record import Status

RerunMode = Literal["resume", "failed", "all"]


class CellState(str, Enum):
    """Where a cell stands according to its rows."""

    OK = "ok"
    FAILED = "failed"
    UNFINISHED = "unfinished"


def _latest(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r.get("attempt") or 0, str(r.get("finished_at") or "")))


def cell_state(rows: Iterable[dict]) -> CellState:
    """The state of one cell from its rows (see the module docstring).

    >>> cell_state([])
    <CellState.UNFINISHED: 'unfinished'>
    >>> cell_state([{"attempt": 1, "status": "oom"}]).value
    'failed'
    >>> cell_state([{"attempt": 1, "status": "error", "will_retry": True}]).value
    'unfinished'
    >>> cell_state([{"attempt": 1, "status": "ok"}, {"attempt": 2, "status": "error"}]).value
    'ok'
    """
    rows = list(rows)
    if not rows:
        return CellState.UNFINISHED
    if any(r.get("status") == Status.OK.value for r in rows):
        return CellState.OK
    return CellState.UNFINISHED if _latest(rows).get("will_retry") else CellState.FAILED


@dataclass(frozen=True)
class ResumePlan:
    """The cells to run now, what was skipped and why, and where attempt numbering resumes."""

    todo: list[CellSpec]
    skipped_ok: int
    skipped_failed: int
    first_attempt: dict[str, int]  # cell_id -> attempt number of its next try

    @property
    def skipped(self) -> int:
        return self.skipped_ok + self.skipped_failed


def plan_cells(
    cells: list[CellSpec], history: dict[str, list[dict]], *, mode: RerunMode = "resume"
) -> ResumePlan:
    """Split `cells` by their rows in `history` (cell_id -> rows) according to `mode`."""
    runs = {
        "resume": {CellState.UNFINISHED},
        "failed": {CellState.UNFINISHED, CellState.FAILED},
        "all": set(CellState),
    }[mode]
    todo: list[CellSpec] = []
    skipped_ok = skipped_failed = 0
    for cell in cells:
        state = cell_state(history.get(cell.cell_id, ()))
        if state in runs:
            todo.append(cell)
        elif state is CellState.OK:
            skipped_ok += 1
        else:
            skipped_failed += 1
    first_attempt = {
        c.cell_id: max(r.get("attempt") or 0 for r in history[c.cell_id]) + 1
        for c in todo
        if history.get(c.cell_id)
    }
    return ResumePlan(todo, skipped_ok, skipped_failed, first_attempt)
