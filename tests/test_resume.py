"""Which cells a submit runs (plain resume, --rerun failed, --fresh, --continue-run), decided
from stored rows; the summary line; the resume command printed after an interrupt, run for real;
cells no worker was left for."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.run.manifest import Invocation, read_manifests
from orchestrator.run.plan import CellState, cell_state, plan_cells, plan_job
from orchestrator.run.store import ResultStore
from orchestrator.run.submit import SubmitOutcome, resume_command, submit_job
from orchestrator.spec.grid import CellSpec, iter_cells
from orchestrator.spec.job import ModelSpec, load_job_spec

ROOT = Path(__file__).resolve().parents[1]

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


SMALL_JOB = """\
name: small
model: {tag: "d[2]-h[64]", head_dim: 32, sequence_len: 64}
grid: {batch_size: [1, 2, 3], prompt_len: [8, 16], max_tokens: [4]}
exclude: [{batch_size: 3, method: naive}]
include: [{batch_size: 5, prompt_len: 8, max_tokens: 4, method: cached}]
"""
# each cell's rows (attempt, status, will_retry), in the order written
SMALL_ROWS = [
    [(1, "ok", None)],
    [(1, "ok", None), (2, "error", None)],  # an ok row, then a --fresh run that failed
    [(1, "error", True), (2, "oom", False)],
    [(1, "error", True)],
    [(2, "ok", None), (1, "error", None)],  # written out of order
    [(1, "timeout", None), (2, "error", True)],
]


def test_plan_job_equals_plan_cells_over_plain_rows(tmp_path):
    """The submit's planning (cell ids streamed, the store's CellHistory) decides as planning
    the built cells against plain dicts of rows, in every mode, continuing a run or not."""
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL_JOB)
    job = load_job_spec(str(spec))
    grid = list(iter_cells(job))
    assert len(grid) == 11  # 3 x 2 x 2, less 2 excluded, plus 1 included
    store = ResultStore(tmp_path / "small")
    plain: dict[str, list[dict]] = {}
    for cell, rows in zip(grid, SMALL_ROWS):
        for attempt, status, will_retry in rows:
            r = row(cell, attempt, status, will_retry)
            r["run_id"] = "r2" if attempt == 2 else "r1"
            store.write(r)
            plain.setdefault(cell.cell_id, []).append(r)
    history = store.cell_history()
    assert len(history) == len(plain) == 6 and set(history) == set(plain)
    assert history.get("nope") is None and grid[-1].cell_id not in history
    for cid, rows in plain.items():
        assert [(r["attempt"], r["status"]) for r in history[cid]] == sorted(
            (r["attempt"], r["status"]) for r in rows)
    r2 = {cid: [r for r in rows if r["run_id"] == "r2"] for cid, rows in plain.items()}
    for mode in ("resume", "failed", "all"):
        for continuing in (None, r2):
            fast = plan_job(job, store.cell_history(), mode=mode, continuing=continuing)
            slow = plan_cells(iter_cells(job), plain, mode=mode, continuing=continuing)
            assert [c.cell_id for c in fast.todo] == [c.cell_id for c in slow.todo]
            assert fast.todo == slow.todo
            assert (fast.skipped_ok, fast.skipped_failed, fast.first_attempt) == (
                slow.skipped_ok, slow.skipped_failed, slow.first_attempt), (mode, continuing)
    fresh = plan_job(job, store.cell_history(), mode="all")
    assert fresh.first_attempt == {c.cell_id: len(rows) + 1 for c, rows in zip(grid, SMALL_ROWS)}


def test_summary_line_counts():
    outcome = SubmitOutcome(job_dir="results/sweep", total=12, skipped=8, ran=2, failed=3,
                            cell_ids=frozenset(), wall_s=4.06, skipped_failed=2)
    assert outcome.summary_line() == (
        "12 cells: 2 run, 8 skipped (already ok), 2 skipped (failed before), 3 failed; 4.1s; "
        "results in results/sweep")
    assert outcome.exit_code == 1


def test_resume_command_continues_a_fresh_run_by_its_id():
    argv = ("python", "-m", "orchestrator", "submit", "jobs/my sweep.yaml", "--fresh",
            "--set", "grid.batch_size=[1, 2]")
    assert resume_command(Invocation(argv=argv)) == (  # a plain run: the same command
        "python -m orchestrator submit 'jobs/my sweep.yaml' --fresh --set 'grid.batch_size=[1, 2]'")
    assert resume_command(Invocation(argv=argv), "R1") == (
        "python -m orchestrator submit 'jobs/my sweep.yaml' --fresh --set 'grid.batch_size=[1, 2]'"
        " --continue-run R1")
    again = (*argv, "--continue-run", "R1", "--continue-run=R0")
    assert resume_command(Invocation(argv=again), "R1").endswith("]' --continue-run R1")


def test_continuing_a_run_runs_what_it_left_undone(tmp_path):
    """A --fresh run (r2) over a finished one (r1), interrupted: continuing r2 runs the cells r2
    had not settled, whatever r1 left; --continue-run of a plain run equals a plain resume."""
    a, b, c, d = cells(4)
    store = ResultStore(tmp_path / "j")
    rows = [row(x, 1, "ok") for x in (a, b, c, d)]
    rows += [row(a, 2, "ok"), row(b, 2, "oom"), row(c, 2, "error", True)]  # r2, interrupted
    for r in rows:
        r["run_id"] = "r2" if r["attempt"] == 2 else "r1"
        store.write(r)
    history = store.cell_history()
    own = {x.cell_id: [r for r in rows if r["cell_id"] == x.cell_id and r["run_id"] == "r2"]
           for x in (a, b, c, d)}
    plan = plan_cells(iter([a, b, c, d]), history, mode="all", continuing=own)
    assert [x.cell_id for x in plan.todo] == [c.cell_id, d.cell_id]
    assert plan.first_attempt == {c.cell_id: 3, d.cell_id: 2}  # attempt numbers never reused
    assert (plan.skipped_ok, plan.skipped_failed) == (2, 0)  # b's ok row from r1 still counts
    plain = plan_cells([a, b, c, d], history, mode="resume", continuing=own)
    assert plain.todo == plan_cells([a, b, c, d], history).todo == []  # all ok since r1


def test_rerun_and_fresh_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["submit", "x.yaml", "--rerun", "failed", "--fresh"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["submit", "x.yaml", "--rerun", "ok"])
    assert "invalid choice: 'ok'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# with Ray: cells that never ran, and the printed resume command of an interrupted --fresh run

JOB = """\
name: {name}
model: {{tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 64,
        head_dim: 32}}
grid: {{method: [naive, cached], batch_size: [1, 2, 3, 4, 5, 6], prompt_len: [8],
       max_tokens: [{max_tokens}]}}
measure: {{warmup: 1, repeats: 1}}
workers: {{cpu_workers: 1, retries: 0}}
"""


@pytest.mark.slow
def test_cells_no_worker_was_left_for_run_next_time_as_new(tmp_path, ray_session, monkeypatch):
    """Every worker is killed for good (as when its node is gone) after the first ok row: the
    other cells are reported as not run, not failed; they leave no row and no used attempt, and
    the same submit runs them."""
    pytest.importorskip("engine.bench")
    from orchestrator.run import dispatch

    spec = tmp_path / "lost.yaml"
    spec.write_text(JOB.format(name="lost", max_tokens=4))
    job = load_job_spec(str(spec))
    emit = dispatch.Dispatcher._emit

    def emit_then_lose_every_worker(self, task, record):
        emit(self, task, record)
        if record.get("status") == "ok":
            for slot in self.slots:
                ray_session.kill(slot.handle, no_restart=True)

    monkeypatch.setattr(dispatch.Dispatcher, "_emit", emit_then_lose_every_worker)
    first = submit_job(job, tmp_path / "r")
    monkeypatch.undo()
    store = ResultStore(first.job_dir)
    history = store.cell_history()
    ok = [cid for cid, rows in history.items() if any(r["status"] == "ok" for r in rows)]
    assert len(ok) == 1 and first.ran == 12 - first.not_run
    assert first.not_run >= 10 and first.failed == 0 and first.exit_code == 1
    assert f"{first.not_run} not run (no worker left; the same submit runs them)" in (
        first.summary_line())
    (manifest,) = read_manifests(first.job_dir)
    assert manifest["statuses"]["not_run"] == first.not_run
    plan = plan_cells(iter_cells(job), history)
    assert len(plan.todo) == 11 and plan.skipped_failed == 0
    died = [cid for cid, rows in history.items() if cid not in ok]  # a cell its worker died in
    assert plan.first_attempt == {cid: 2 for cid in died}
    again = submit_job(job, tmp_path / "r")
    assert (again.ran, again.skipped, again.failed, again.not_run) == (11, 1, 0, 0)
    rows = store.read(("cell_id", "attempt", "status")).table.to_pylist()
    assert sorted(r["attempt"] for r in rows if r["status"] == "ok") == [1] * (12 - len(died)) + [
        2] * len(died)


@pytest.mark.slow
def test_interrupted_fresh_run_prints_a_command_that_continues_it(tmp_path):
    """A finished job, then --fresh, stopped by SIGINT: the printed command runs exactly the
    cells the fresh run had not reached, under the fresh run's id, and leaves one ok row per
    cell in that run."""
    pytest.importorskip("engine.bench")
    spec = tmp_path / "fresh.yaml"
    spec.write_text(JOB.format(name="fresh", max_tokens=24))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results", str(results)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    job_dir = results / "fresh"
    first_runs = {m["run_id"] for m in read_manifests(job_dir)}
    proc = subprocess.Popen([*argv, "--fresh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_fresh_ok(job_dir, first_runs)) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the fresh run finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:  # Ray processes the driver left behind, if any
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (fresh_run,) = {m["run_id"] for m in read_manifests(job_dir)} - first_runs
    resume = err.split("resume with: ", 1)[-1].strip()
    assert resume == shlex.join(["python", "-m", "orchestrator", *argv[3:], "--fresh",
                                 "--continue-run", fresh_run]), err[-3000:]
    reached = _fresh_ok(job_dir, first_runs)
    assert 2 <= len(reached) < 12
    cont = subprocess.run([sys.executable, *shlex.split(resume)[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert cont.returncode == 0, cont.stderr[-3000:]
    left = 12 - len(reached)
    assert f"12 cells: {left} run, {12 - left} skipped (already ok), 0 failed" in cont.stderr
    rows = ResultStore(job_dir).read(("cell_id", "status", "run_id")).table.to_pylist()
    in_fresh = [r["cell_id"] for r in rows if r["run_id"] == fresh_run and r["status"] == "ok"]
    assert len(in_fresh) == len(set(in_fresh)) == 12  # the fresh run is whole, each cell once
    assert {m["run_id"]: m["status"] for m in read_manifests(job_dir)}[fresh_run] == "finished"


def _fresh_ok(job_dir, first_runs) -> list[str]:
    try:
        rows = ResultStore(job_dir).read(("cell_id", "status", "run_id")).table.to_pylist()
    except Exception:  # noqa: BLE001 - a file mid-write: look again
        return []
    return [r["cell_id"] for r in rows if r["status"] == "ok" and r["run_id"] not in first_runs]


def test_continue_run_of_an_unknown_run_is_refused_in_one_line(tmp_path, capsys):
    spec = tmp_path / "j.yaml"
    spec.write_text("name: j\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n")
    results = tmp_path / "results"
    assert main(["submit", str(spec), "--results", str(results), "--continue-run", "R9"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --continue-run R9: no such run in {results.absolute() / 'j'} "
                   "(latest runs: none)\n")
    assert not results.exists()
