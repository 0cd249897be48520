"""One `submit`: expand the job, skip finished cells, run the rest on Ray, save every attempt.

    outcome = submit_job(job, Path("results"), address=None)
    outcome.exit_code   # 0 all cells ok, 1 some failed (the rest are saved)

The driver writes the dataset itself (workers only return records), so a cluster needs no
shared disk. Resume is by cell_id (orchestrator/run/plan.py): cells with an ok row are skipped,
cells whose latest attempt failed are skipped unless `rerun_failed`, `fresh` runs every cell.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import ClusterError, Interrupted, SpecError, StorageError, UsageError
from orchestrator.run.compact import compact_after_submit
from orchestrator.run.manifest import Invocation, RunManifest, mark_dead_runs, read_manifests
from orchestrator.run.plan import CellState, plan_job, state_of
from orchestrator.run.progress import LineProgress, Progress, reporting
from orchestrator.run.storage import resolve, storage_errors
from orchestrator.run.store import ResultStore
from orchestrator.run.writer import RowWriter
from orchestrator.spec.grid import (
    DEFAULT_MAX_CELLS,
    CellSpec,
    cell_limit_error,
    count_cells,
    iter_cell_ids,
)
from orchestrator.spec.job import JobSpec

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
GIT_COMMIT_ENV = "UNET_BENCH_GIT_COMMIT"  # the code version, when the code has no .git


@dataclass
class SubmitOutcome:
    """What a submit did: counts of cells and where the results are.

    `skipped`: cells not run because they already have an ok row; `skipped_failed`: cells not
    run because their latest attempt failed (run them with rerun_failed); `ran`: cells run now;
    `failed`: cells of the job whose latest attempt, now or earlier, failed; `not_run`: cells
    never tried because no worker was left (the same submit runs them; not counted failed)."""

    job_dir: Path
    total: int
    skipped: int
    ran: int
    failed: int
    cell_ids: frozenset[str]  # the job's cells that have rows (the CLI summarizes those)
    wall_s: float
    skipped_failed: int = 0
    not_run: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.not_run else 0

    def summary_line(self) -> str:
        """E.g. '12 cells: 2 run, 8 skipped (already ok), 2 skipped (failed before), 3 failed;
        4.1s; results in results/sweep'."""
        parts = [f"{self.ran} run", f"{self.skipped} skipped (already ok)"]
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} skipped (failed before)")
        parts.append(f"{self.failed} failed")
        if self.not_run:
            parts.append(f"{self.not_run} not run (no worker left; the same submit runs them)")
        return (
            f"{self.total} cells: {', '.join(parts)}; {self.wall_s:.1f}s; results in {self.job_dir}"
        )


def new_run_id() -> str:
    return f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def git_commit() -> str | None:
    """The project's git commit (with '-dirty' when tracked files changed), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            text=True,
            capture_output=True,
            timeout=5,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            text=True,
            capture_output=True,
            timeout=5,
            check=False,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class _Progress:
    """Writes each record (on the RowWriter's thread, off the dispatch loop) and reports it to
    the progress display; counts final outcomes. `close()` once the dispatch is over."""

    def __init__(
        self,
        store: ResultStore,
        job: JobSpec,
        cells: list[CellSpec],
        run_id: str,
        display: Progress,
    ):
        self.store, self.job, self.run_id, self.display = store, job, run_id, display
        self.labels = {c.cell_id: c.label() for c in cells}
        self.statuses: dict[str, int] = {}
        self.not_run = 0
        # `ray job submit` uploads the working dir without a usable .git: the submitter passes
        # the code version in (README: --runtime-env-json ... UNET_BENCH_GIT_COMMIT).
        self.commit = os.environ.get(GIT_COMMIT_ENV, "").strip() or git_commit()
        self.writer = RowWriter(store.write_many)

    def started(self, cell: CellSpec, worker_index: int) -> None:
        self.display.started(worker_index, self.labels.get(cell.cell_id, cell.cell_id))

    def __call__(self, record: dict) -> None:
        if record.get("not_run"):  # never tried: no row, so the next submit runs it
            self.not_run += 1
            return
        record.update(run_id=self.run_id, job_name=self.job.name, git_commit=self.commit)
        self.writer.put(record)
        status = record.get("status")
        cid = record.get("cell_id")
        retrying = bool(record.get("will_retry"))
        if not retrying:
            self.statuses[status] = self.statuses.get(status, 0) + 1
        self.display.finished(record, self.labels.get(cid, cid), final=not retrying)

    def close(self) -> None:
        """Wait until every record is written; raises the first write error."""
        self.writer.close()


def submit_job(
    job: JobSpec,
    results_root: Path | str,
    *,
    address: str | None = None,
    backend: Any = None,
    fresh: bool = False,
    rerun_failed: bool = False,
    progress: Progress | None = None,
    invocation: Invocation | None = None,
    max_cells: int | None = DEFAULT_MAX_CELLS,
    continue_run: str | None = None,
) -> SubmitOutcome:
    """Run the job's unfinished cells, plus those whose latest attempt failed when
    `rerun_failed`, or every cell when `fresh`; return the outcome.

    Earlier rows are kept either way; new attempts go under a new run_id.
    `progress` shows the run (default: one log line per cell); `invocation` (the command line)
    goes into the run manifest, `<job dir>/_manifests/<run_id>.json`.

    A job of more than `max_cells` cells is refused (SpecError, nothing created; None: no
    limit). `continue_run`: the run_id of an interrupted run to continue (orchestrator/run/
    plan.py): its undone cells run under that run_id. The cells are streamed, never listed."""
    t0 = time.perf_counter()
    total = count_cells(job)
    refusal = None if max_cells is None else cell_limit_error(total, max_cells)
    if refusal:
        raise SpecError(job.source, "", refusal)
    root = resolve(results_root)  # a local path (made absolute) or a storage URI
    # a local job dir is a Path (printed absolute, never cwd-relative), a remote one a Location
    job_dir = root.local_path() / job.name if root.is_local else root / job.name
    created = [p for p in (root.local_path(), job_dir) if not p.exists()] if root.is_local else []
    previous = _previous_run(job_dir, continue_run) if continue_run else None
    store = ResultStore(job_dir)
    store.lock()
    try:
        mark_dead_runs(job_dir)  # under the lock: a "running" run of this job is a dead one
        store.recover()  # a compaction killed midway: finish or undo it (run/compact.py)
        mode = "all" if fresh else "failed" if rerun_failed else "resume"
        continuing = _run_history(store, continue_run) if continue_run else None
        plan = plan_job(job, store.cell_history(), mode=mode, continuing=continuing)
        todo = plan.todo
        log.info(
            "job %s: %d cells, %d already ok (skipped), %d to run; results in %s",
            job.name,
            total,
            plan.skipped_ok,
            len(todo),
            job_dir,
        )
        if plan.skipped_failed:
            log.warning(
                "%d cell(s) failed in an earlier run and are not run again; "
                "add --rerun failed to retry them",
                plan.skipped_failed,
            )
        not_run = 0
        if todo:
            run = _RunContext(
                progress or LineProgress(),
                invocation,
                total,
                plan.skipped_ok,
                run_id=continue_run,
                previous=previous,
                continuable=mode != "resume" or continue_run is not None,
            )
            not_run = _run(job, todo, store, address, backend, plan.first_attempt, created, run)
        compact_after_submit(store)
    finally:
        store.unlock()
    # the job's cell ids streamed again against the rows: memory follows the rows, not the job
    history = store.cell_history()
    states = {s: 0 for s in CellState}
    ids = set()
    for cid, _ in iter_cell_ids(job):
        states[state_of(history, cid)] += 1
        if cid in history:  # it has rows
            ids.add(cid)
    failed = states[CellState.FAILED] + max(0, states[CellState.UNFINISHED] - not_run)
    return SubmitOutcome(
        job_dir=job_dir,
        total=total,
        skipped=plan.skipped_ok,
        ran=len(todo) - not_run,
        failed=failed,
        cell_ids=frozenset(ids),
        wall_s=time.perf_counter() - t0,
        skipped_failed=plan.skipped_failed,
        not_run=min(not_run, states[CellState.UNFINISHED]),
    )


def _previous_run(job_dir: Any, run_id: str) -> dict:
    """The manifest of the run `--continue-run` names (`job_dir`: a Path or a storage Location),
    or a UsageError listing the job's latest runs."""
    manifests = read_manifests(job_dir) if job_dir.is_dir() else []
    for manifest in manifests:
        if manifest.get("run_id") == run_id:
            return manifest
    known = ", ".join(m.get("run_id", "?") for m in manifests[-5:]) or "none"
    raise UsageError(f"--continue-run {run_id}: no such run in {job_dir} (latest runs: {known})")


def _run_history(store: ResultStore, run_id: str) -> dict[str, list[dict]]:
    """cell_id -> the rows of run `run_id` (attempt and status only)."""
    import pyarrow.compute as pc

    columns = ("cell_id", "attempt", "status", "will_retry")
    table = store.read(columns, pc.field("run_id") == run_id).table
    history: dict[str, list[dict]] = {}
    for row in [] if table is None else table.to_pylist():
        history.setdefault(row["cell_id"], []).append(row)
    return history


def _run(
    job: JobSpec,
    todo: list[CellSpec],
    store: ResultStore,
    address: str | None,
    backend: Any,
    first_attempt: dict,
    created: list[Path],
    run: _RunContext,
) -> int:
    """Run `todo`; returns how many cells were never tried because no worker was left."""
    from orchestrator.run.cluster import connect, ray_log_file
    from orchestrator.run.dispatch import Dispatcher

    ray_log = ray_log_file(job.name)

    try:
        with storage_errors(str(ray_log.parent)):  # the Ray log: system temp dir, outlives results
            conn = connect(address, ray_log)
    except (ClusterError, KeyboardInterrupt):
        store.unlock()
        if created and not store.part_files():  # leave no trace of a run that never started
            shutil.rmtree(created[0], ignore_errors=True)
        raise
    if conn.started:
        log.info(
            "Ray logs: %s (worker logs under the Ray session directory, "
            "/tmp/ray/session_latest/logs)",
            conn.log_file,
        )
    run_id = run.run_id or new_run_id()
    recorder = _Progress(store, job, todo, run_id, run.progress)
    if run.previous:  # a continued run: its counts go on from where it stopped
        recorder.statuses = {k: v for k, v in (run.previous.get("statuses") or {}).items()
                             if k != "not_run"}
    try:
        manifest = RunManifest.start(
            store.location,
            run_id,
            job,
            run.invocation,
            cells_to_run=len(todo),
            skipped=run.skipped,
            git_commit=recorder.commit,
            address=address,
        )
    except StorageError:
        conn.close()
        raise
    if run.previous:  # the manifest keeps the run's first start and command, lists each go-on
        manifest.data.update(
            {k: run.previous.get(k) for k in ("started_at", "command", "argv") if k in run.previous},
            continued=[
                *(run.previous.get("continued") or []),
                {"command": manifest.data["command"], "started_at": manifest.data["started_at"]},
            ],
        )
    status, error = "failed", None
    try:
        with reporting(
            run.progress, total=run.total, skipped=run.skipped, to_run=len(todo), cells=todo
        ):
            try:
                Dispatcher(
                    todo,
                    job.workers,
                    recorder,
                    backend=backend,
                    first_attempt=first_attempt,
                    on_start=recorder.started,
                ).run()
            finally:
                recorder.close()  # every finished row is written before the run ends
        status = "finished"
    except (Interrupted, KeyboardInterrupt):
        status = "interrupted"
        saved = sum(recorder.statuses.values())
        raise Interrupted(
            f"interrupted: {saved} cell(s) finished in this run are saved in {store.job_dir}; "
            f"resume with: {resume_command(run.invocation, run_id if run.continuable else None)}"
        ) from None
    except StorageError as e:  # disk full, read-only, ...: rows written so far stay
        status, error = "storage_error", str(e)
        raise
    except Exception as e:
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise
    finally:
        statuses = dict(recorder.statuses)
        if recorder.not_run:
            statuses["not_run"] = recorder.not_run
        manifest.finish(status, statuses, error)
        conn.close()
    if recorder.not_run:
        log.warning(
            "%d cell(s) not run: no worker was left; they have no row and the same submit "
            "runs them",
            recorder.not_run,
        )
    return recorder.not_run


def resume_command(invocation: Invocation | None, continue_run: str | None = None) -> str:
    """The command that resumes an interrupted submit: the same one, plus `--continue-run RUN_ID`
    when given (a --fresh or --rerun run, which the same command would not continue: --fresh
    would start over, a plain resume would find every cell ok from an earlier run).

    >>> resume_command(Invocation(argv=("python", "-m", "orchestrator", "submit", "j.yaml",
    ...                                 "--fresh")), "20261130T071500-1a2b3c")
    'python -m orchestrator submit j.yaml --fresh --continue-run 20261130T071500-1a2b3c'
    """
    if invocation is None:
        if continue_run is None:
            return "the same submit_job call"
        return f"the same submit_job call with continue_run={continue_run!r}"
    argv, skip = [], False
    for arg in invocation.argv:  # drop an earlier --continue-run (its value is the same run)
        if skip or arg.startswith("--continue-run="):
            skip = False
            continue
        if arg == "--continue-run":
            skip = True
            continue
        argv.append(arg)
    if continue_run is not None:
        argv += ["--continue-run", continue_run]
    return shlex.join(argv)


@dataclass(frozen=True)
class _RunContext:
    progress: Progress
    invocation: Invocation | None
    total: int
    skipped: int
    run_id: str | None = None  # a run being continued (--continue-run), else a new one
    previous: dict | None = None  # that run's manifest
    continuable: bool = False  # print --continue-run after an interrupt
