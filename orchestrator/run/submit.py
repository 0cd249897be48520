"""One `submit`: expand the job, skip finished cells, run the rest on Ray, save every attempt.

    outcome = submit_job(job, Path("results"), address=None)
    outcome.exit_code   # 0 all cells ok, 1 some failed (the rest are saved)

The driver writes the dataset itself (workers only return records), so a cluster needs no
shared disk. Resume is by cell_id (orchestrator/run/plan.py): cells with an ok row are skipped,
cells whose latest attempt failed are skipped unless `rerun_failed`, `fresh` runs every cell.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import ClusterError, Interrupted, StorageError
from orchestrator.results import summary
from orchestrator.run.manifest import Invocation, RunManifest, mark_dead_runs
from orchestrator.run.plan import plan_cells
from orchestrator.run.progress import LineProgress, Progress, reporting
from orchestrator.run.storage import resolve, storage_errors
from orchestrator.run.store import ResultStore
from orchestrator.run.writer import RowWriter, store_sink
from orchestrator.spec.grid import CellSpec, expand_cells
from orchestrator.spec.job import JobSpec
from workers.record import Status

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SubmitOutcome:
    """What a submit did: counts of cells and where the results are.

    `skipped`: cells not run because they already have an ok row; `skipped_failed`: cells not
    run because their latest attempt failed (run them with rerun_failed); `ran`: cells run now;
    `failed`: cells of the job whose latest attempt, now or earlier, is not ok."""

    job_dir: Path
    total: int
    skipped: int
    ran: int
    failed: int
    rows: list[dict]
    wall_s: float
    skipped_failed: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary_line(self) -> str:
        """E.g. '12 cells: 2 run, 8 skipped (already ok), 2 skipped (failed before), 3 failed;
        4.1s; results in results/sweep'."""
        parts = [f"{self.ran} run", f"{self.skipped} skipped (already ok)"]
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} skipped (failed before)")
        parts.append(f"{self.failed} failed")
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
        self.commit = git_commit()
        self.writer = RowWriter(store_sink(store))

    def started(self, cell: CellSpec, worker_index: int) -> None:
        self.display.started(worker_index, self.labels.get(cell.cell_id, cell.cell_id))

    def __call__(self, record: dict) -> None:
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
) -> SubmitOutcome:
    """Run the job's unfinished cells, plus those whose latest attempt failed when
    `rerun_failed`, or every cell when `fresh`; return the outcome.

    Earlier rows are kept either way; new attempts go under a new run_id.
    `progress` shows the run (default: one log line per cell); `invocation` (the command line)
    goes into the run manifest, `<job dir>/_manifests/<run_id>.json`."""
    t0 = time.perf_counter()
    cells = expand_cells(job)
    root = resolve(results_root)  # a local path (made absolute) or a storage URI
    # a local job dir is a Path (printed absolute, never cwd-relative), a remote one a Location
    job_dir = root.local_path() / job.name if root.is_local else root / job.name
    created = [p for p in (root.local_path(), job_dir) if not p.exists()] if root.is_local else []
    store = ResultStore(job_dir)
    store.lock()
    try:
        mark_dead_runs(job_dir)  # under the lock: a "running" run of this job is a dead one
        mode = "all" if fresh else "failed" if rerun_failed else "resume"
        plan = plan_cells(cells, store.cell_history(), mode=mode)
        todo = plan.todo
        log.info(
            "job %s: %d cells, %d already ok (skipped), %d to run; results in %s",
            job.name,
            len(cells),
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
        if todo:
            run = _RunContext(progress or LineProgress(), invocation, len(cells), plan.skipped_ok)
            _run(job, todo, store, address, backend, plan.first_attempt, created, run)
    finally:
        store.unlock()
    ids = {c.cell_id for c in cells}
    rows = [r for r in store.load().rows() if r.get("cell_id") in ids]
    latest = {r["cell_id"]: r for r in summary.latest_rows(rows)}
    failed = sum(1 for c in cells if latest.get(c.cell_id, {}).get("status") != Status.OK.value)
    return SubmitOutcome(
        job_dir=job_dir,
        total=len(cells),
        skipped=plan.skipped_ok,
        ran=len(todo),
        failed=failed,
        rows=rows,
        wall_s=time.perf_counter() - t0,
        skipped_failed=plan.skipped_failed,
    )


def _run(
    job: JobSpec,
    todo: list[CellSpec],
    store: ResultStore,
    address: str | None,
    backend: Any,
    first_attempt: dict,
    created: list[Path],
    run: _RunContext,
) -> None:
    from orchestrator.run.cluster import connect
    from orchestrator.run.dispatch import Dispatcher

    try:
        with storage_errors(str(store.ray_log.parent)):  # e.g. `_ray` is a file
            conn = connect(address, store.ray_log)
    except ClusterError:
        store.unlock()
        if created and not store.part_files():  # leave no trace of a run that never started
            shutil.rmtree(created[0], ignore_errors=True)
        raise
    if conn.started:
        log.info(
            "Ray logs: %s (worker logs under the Ray session directory, "
            "/tmp/ray/session_latest/logs)",
            store.ray_log,
        )
    run_id = new_run_id()
    recorder = _Progress(store, job, todo, run_id, run.progress)
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
            f"resume with: {resume_command(run.invocation)}"
        ) from None
    except StorageError as e:  # disk full, read-only, ...: rows written so far stay
        status, error = "storage_error", str(e)
        raise
    except Exception as e:
        error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise
    finally:
        manifest.finish(status, recorder.statuses, error)
        conn.close()


def resume_command(invocation: Invocation | None) -> str:
    """The command that resumes an interrupted submit: the same one, without --fresh (which
    would run the finished cells again).

    >>> resume_command(Invocation(argv=("python", "-m", "orchestrator", "submit", "j.yaml",
    ...                                 "--fresh")))
    'python -m orchestrator submit j.yaml'
    """
    if invocation is None:
        return "the same submit_job call (fresh=False)"
    return shlex.join(a for a in invocation.argv if a != "--fresh")


@dataclass(frozen=True)
class _RunContext:
    progress: Progress
    invocation: Invocation | None
    total: int
    skipped: int
