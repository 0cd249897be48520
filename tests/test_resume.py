"""Which cells a submit runs (plain resume, --rerun failed, --fresh), decided from stored rows;
the summary line; the resume command printed after an interrupt."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.run.manifest import Invocation
from orchestrator.run.plan import CellState, cell_state, plan_cells
from orchestrator.run.store import ResultStore
from orchestrator.run.submit import SubmitOutcome, resume_command
from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import ModelSpec

MODEL = ModelSpec(tag="d[2]-h[64]", head_dim=32)


def cells(n: int) -> list[CellSpec]:
    return [CellSpec(model=MODEL, method="cached", batch_size=b, prompt_len=8, max_tokens=4)
            for b in range(1, n + 1)]


def row(cell: CellSpec, attempt: int, status: str, will_retry: bool | None = None) -> dict:
    return {"schema_version": 1, "run_id": f"r{attempt}", "job_name": "j",
            "cell_id": cell.cell_id, "attempt": attempt, "status": status,
            "will_retry": will_retry, "finished_at": f"2026-01-01T00:00:0{attempt}+00:00"}


# (rows as (attempt, status, will_retry), expected state)
STATES = [
    ([], CellState.UNFINISHED),
    ([(1, "ok", None)], CellState.OK),
    ([(1, "error", None)], CellState.FAILED),
    ([(1, "timeout", None)], CellState.FAILED),
    ([(1, "oom", None)], CellState.FAILED),
    ([(1, "skipped_oom", None)], CellState.FAILED),
    ([(1, "error", True)], CellState.UNFINISHED),  # driver stopped before the retry
    ([(1, "error", True), (2, "error", False)], CellState.FAILED),  # retries used up
    ([(1, "error", True), (2, "ok", None)], CellState.OK),
    ([(2, "ok", None), (3, "error", None)], CellState.OK),  # an ok row is never lost
    ([(2, "error", None), (1, "error", True)], CellState.FAILED),  # latest = highest attempt
]


@pytest.mark.parametrize(("rows", "state"), STATES)
def test_cell_state_from_rows(rows, state):
    (cell,) = cells(1)
    assert cell_state([row(cell, a, s, w) for a, s, w in rows]) is state


def test_plan_per_mode_from_stored_rows(tmp_path):
    ok, failed, retrying, new = cells(4)
    store = ResultStore(tmp_path / "j")
    for r in (row(ok, 1, "ok"), row(failed, 1, "error", True), row(failed, 2, "oom", False),
              row(retrying, 1, "error", True)):
        store.write(r)
    history = store.cell_history()
    grid = [ok, failed, retrying, new]

    resume = plan_cells(grid, history)
    assert [c.cell_id for c in resume.todo] == [retrying.cell_id, new.cell_id]
    assert (resume.skipped_ok, resume.skipped_failed) == (1, 1)
    assert resume.first_attempt == {retrying.cell_id: 2}  # numbering continues

    rerun = plan_cells(grid, history, mode="failed")
    assert [c.cell_id for c in rerun.todo] == [failed.cell_id, retrying.cell_id, new.cell_id]
    assert (rerun.skipped_ok, rerun.skipped_failed) == (1, 0)
    assert rerun.first_attempt == {failed.cell_id: 3, retrying.cell_id: 2}

    fresh = plan_cells(grid, history, mode="all")
    assert len(fresh.todo) == 4 and fresh.skipped == 0
    assert fresh.first_attempt[ok.cell_id] == 2


def test_summary_line_counts():
    outcome = SubmitOutcome(job_dir="results/sweep", total=12, skipped=8, ran=2, failed=3,
                            rows=[], wall_s=4.06, skipped_failed=2)
    assert outcome.summary_line() == (
        "12 cells: 2 run, 8 skipped (already ok), 2 skipped (failed before), 3 failed; 4.1s; "
        "results in results/sweep")
    assert outcome.exit_code == 1


def test_resume_command_drops_fresh():
    argv = ("python", "-m", "orchestrator", "submit", "jobs/my sweep.yaml", "--fresh",
            "--set", "grid.batch_size=[1, 2]")
    assert resume_command(Invocation(argv=argv)) == (
        "python -m orchestrator submit 'jobs/my sweep.yaml' --set 'grid.batch_size=[1, 2]'")


def test_rerun_and_fresh_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["submit", "x.yaml", "--rerun", "failed", "--fresh"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["submit", "x.yaml", "--rerun", "ok"])
    assert "invalid choice: 'ok'" in capsys.readouterr().err
