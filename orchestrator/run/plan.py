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

    plan = plan_job(job, store.cell_history(), mode="resume")
    plan.todo, plan.skipped_ok, plan.skipped_failed

The job's cell ids are streamed (orchestrator/spec/grid.py `iter_cell_ids`) against the history
(orchestrator/run/history.py), and only the cells to run are built: memory grows with the cells
to run and the history, not with the job. Earlier rows are never deleted; a re-run cell
continues its attempt numbering. `plan_cells` plans given cells the same way.

Continuing an interrupted run (`submit --continue-run RUN_ID`, `continuing=` its rows): the
cells that run was to run (its mode applied to the rows that are not its own) and has not
settled (no ok row and no final failure of its own), so an interrupted `--fresh` run goes on
with the cells it had not reached, instead of finding them all ok from an earlier run.

A cell that never ran because no worker was left has no row (the driver reports it as
`not_run` and stores nothing), so it stays unfinished and keeps its attempt numbering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from orchestrator.run.history import CellHistory
from orchestrator.spec.grid import CellSpec, iter_cell_ids
from workers.record import Status

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.spec.job import JobSpec

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


MODES: dict[str, set[CellState]] = {
    "resume": {CellState.UNFINISHED},
    "failed": {CellState.UNFINISHED, CellState.FAILED},
    "all": set(CellState),
}


def plan_job(
    job: JobSpec,
    history: Mapping[str, list[dict]],
    *,
    mode: RerunMode = "resume",
    continuing: dict[str, list[dict]] | None = None,
) -> ResumePlan:
    """What a submit of `job` runs: its cells split by their rows in `history` (a CellHistory,
    or cell_id -> rows) according to `mode`; with `continuing` (cell_id -> the rows of one
    earlier run), only what that run left undone. Only the cells to run are built."""
    return _plan(iter_cell_ids(job), CellHistory.of(history), mode, continuing)


def plan_cells(
    cells: Iterable[CellSpec],
    history: Mapping[str, list[dict]],
    *,
    mode: RerunMode = "resume",
    continuing: dict[str, list[dict]] | None = None,
) -> ResumePlan:
    """`plan_job` for the given `cells` instead of a job's."""
    given = ((cell.cell_id, _returning(cell)) for cell in cells)
    return _plan(given, CellHistory.of(history), mode, continuing)


def _returning(cell: CellSpec) -> Callable[[], CellSpec]:
    return lambda: cell


def state_of(history: CellHistory, cell_id: str) -> CellState:
    """`cell_state` of the cell's rows in `history` (an ok cell's rows are not looked at)."""
    return CellState.OK if cell_id in history.ok else cell_state(history.rows(cell_id))


def _plan(
    cells: Iterable[tuple[str, Callable[[], CellSpec]]],
    history: CellHistory,
    mode: RerunMode,
    continuing: dict[str, list[dict]] | None,
) -> ResumePlan:
    """The plan for `cells`, given as (cell_id, a function that builds the cell)."""
    runs = MODES[mode]
    todo: list[CellSpec] = []
    first_attempt: dict[str, int] = {}
    skipped_ok = skipped_failed = 0
    for cid, build in cells:
        state = state_of(history, cid)
        own = continuing.get(cid) if continuing else None
        if own:  # without rows of its own, _left_undone(rows, [], runs) is `state in runs`
            selected = _left_undone(history.rows(cid), own, runs)
        else:
            selected = state in runs
        if selected:
            todo.append(build())
            attempt = history.next_attempt(cid)
            if attempt is not None:
                first_attempt[cid] = attempt
        elif state is CellState.OK:
            skipped_ok += 1
        else:
            skipped_failed += 1
    return ResumePlan(todo, skipped_ok, skipped_failed, first_attempt)


def _left_undone(rows: Sequence[dict], own: Sequence[dict], runs: set[CellState]) -> bool:
    """Whether a run whose rows of this cell are `own` was to run it and has not settled it.

    >>> _left_undone([{"attempt": 1, "status": "ok"}], [], MODES["all"])  # --fresh, not reached
    True
    >>> _left_undone([{"attempt": 1, "status": "ok"}, {"attempt": 2, "status": "oom"}],
    ...              [{"attempt": 2, "status": "oom"}], MODES["all"])  # it failed there: settled
    False
    """
    if cell_state(own) is not CellState.UNFINISHED:
        return False
    attempts = {r.get("attempt") for r in own}  # a cell's attempt numbers are unique
    return cell_state([r for r in rows if r.get("attempt") not in attempts]) in runs
