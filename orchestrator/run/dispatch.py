"""Running cells on Ray: feed the worker actors, collect one record per attempt.

Each worker holds up to `DEPTH` cells at once: one running and the next already in the actor's
queue, so the driver's round trip (record back, next cell out) hides behind the running cell.
A cell's clock (`cell_timeout_s`, `started_at`) starts when it actually starts: when the cell
before it on that worker has finished. Cells go out in units (the cells a summary compares, see
cellqueue.py), each unit to one worker, and per-model queues keep a worker on the model it has
loaded. Dispatch starts as soon as the first worker is ready; the others join as they come up.
The driver waits only on each worker's running cell (plus cancelled and start-up calls), with
`ray.wait` and a timeout; nothing busy-waits.

Faults: a worker that dies mid-cell is restarted by Ray and the cell retried up to
`workers.retries` times, first in the queue for any ready worker; the cells it held that had not
started go back unrun (when it dies holding two, neither is charged: both run again one at a
time, so a death is only ever charged to the cell that caused it). A cell past
`workers.cell_timeout_s` is recorded as `timeout` and its worker replaced. An `oom` cell makes
the cells it dominates `skipped_oom`, including those already in a worker's queue (cancelled
before they start). A sticky CUDA error makes the driver replace that worker's process. A
restarted worker gets no cell until it answers `ready()` again.

Ray is imported here, in actors.py, cluster.py and workers/actor.py only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from itertools import islice
from typing import Any

from orchestrator.errors import ClusterError, Interrupted
from orchestrator.run.actors import (
    Slot,
    cluster_plan,
    cpu_stand_in_allowed,
    create_actors,
    describe,
    shortfall,
)
from orchestrator.run.cellqueue import CellQueue, Task
from orchestrator.run.cluster import import_ray
from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import WorkersSpec
from workers.record import SCHEMA_VERSION, Status, params_of
from workers.worker import NOT_RUN_KEY, RESTART_KEY

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT_S = 180.0
INTERRUPT_GRACE_S = 10.0
WAIT_TICK_S = 1.0
DEPTH = 2  # cells held by one worker: the running one and one queued behind it
CHECK_EVERY_S = 0.25  # how often running cells and pending workers are checked against limits


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _dominates(failed: CellSpec, other: CellSpec) -> bool:
    return (
        failed.model.key() == other.model.key()
        and failed.method == other.method
        and failed.dtype == other.dtype
        and other.batch_size >= failed.batch_size
        and other.prompt_len >= failed.prompt_len
        and other.max_tokens >= failed.max_tokens
    )


class Dispatcher:
    """Feeds cells to actors and reports every finished attempt through `on_record`.

    `first_attempt` maps cell_id -> the attempt number to start from (resume continues the
    numbering). `on_record(record)` is called in the driver's thread for every attempt, in
    finishing order; `on_start(cell, worker_index)`, if given, when a cell starts on a worker.
    """

    def __init__(
        self,
        cells: Iterable[CellSpec],
        workers: WorkersSpec,
        on_record: Callable[[dict], None],
        *,
        backend: Any = None,
        first_attempt: dict[str, int] | None = None,
        on_start: Callable[[CellSpec, int], None] | None = None,
    ):
        self.cells = cells
        self.on_start = on_start
        self.workers = workers
        self.on_record = on_record
        self.backend = backend
        self.first_attempt = first_attempt or {}
        self.queue = CellQueue()
        self.inflight: dict[Any, Task] = {}  # run() call -> its task
        self.slots: list[Slot] = []
        self.probes: dict[Any, Slot] = {}  # ready() call -> slot starting or restarting
        self.probe_deadlines: dict[Any, float] = {}  # probe -> when to give the worker up
        self.plan_options: dict = {}
        self.ever_ready = False
        self.model_dicts: dict[str, dict] = {}  # model key -> its dict, as sent to workers
        self.feed_all = False  # cells went back to the shared queue: offer them to every worker

    # -- state views (kept for callers and tests) -------------------------------------------
    @property
    def restarting(self) -> dict[Any, Slot]:
        return self.probes

    @property
    def restart_deadlines(self) -> dict[Any, float]:
        return self.probe_deadlines

    @property
    def lost(self) -> set[int]:
        return {s.index for s in self.slots if s.state == "lost"}

    def _busy(self) -> set[int]:
        return {s.index for s in self.slots if s.state != "ready" or len(s.tasks) >= DEPTH}

    # -- records made by the driver (worker died, timeout, skipped) --------------------------
    def _driver_record(self, task: Task, status: Status, error: str) -> dict:
        record = {
            "schema_version": SCHEMA_VERSION,
            **params_of(task.cell.to_dict()),
            "status": status.value,
            "error": error,
            "started_at": task.started_at or _now(),
            "finished_at": _now(),
        }
        if task.slot is not None and task.started_at:
            record.update(task.slot.provenance)
            record["cell_wall_s"] = time.monotonic() - task.started
        return record

    def _emit(self, task: Task, record: dict) -> None:
        record["attempt"] = task.attempt
        if task.slot is not None and task.started_at:
            record["worker_index"] = task.slot.index
        self.on_record(record)

    # -- feeding workers --------------------------------------------------------------------
    def _next_task(self, slot: Slot) -> Task | None:
        if not slot.backlog:
            held: set[str] = set()
            if not self.queue.queues.get(slot.model_key or ""):  # its own model is done
                held = {s.model_key for s in self.slots if s is not slot and s.model_key}
            unit = self.queue.pop_unit(slot.model_key, held)
            if unit is None:
                return None
            slot.backlog.extend(unit)
        return slot.backlog.popleft()

    def _feed(self, slots: list[Slot]) -> None:
        """Give each of `slots` that is ready a running cell first, then one queued behind it.
        (Only workers something happened to need looking at, unless cells came back to the
        shared queue: then every worker, as an idle one may take them.)"""
        if self.feed_all:
            slots, self.feed_all = self.slots, False
        for depth in range(1, DEPTH + 1):
            for slot in slots:
                if slot.state == "ready" and len(slot.tasks) < depth:
                    self._feed_one(slot)

    def _feed_one(self, slot: Slot) -> None:
        task = self._next_task(slot)
        if task is None:
            return
        if slot.tasks and (task.alone or slot.tasks[-1].alone):
            slot.backlog.appendleft(task)  # waits until the worker is free
            return
        self._send(slot, task)

    def _send(self, slot: Slot, task: Task) -> None:
        task.slot, task.cancelled = slot, None
        slot.model_key = key = task.cell.model.key()
        model = self.model_dicts.get(key)
        if model is None:
            model = self.model_dicts[key] = asdict(task.cell.model)
        # CellSpec.to_dict() without re-converting the model and re-hashing the cell id
        cell = {**task.cell.params(), "model": model, "cell_id": task.cell_id}
        task.ref = slot.handle.run.remote(cell)
        self.inflight[task.ref] = task
        slot.tasks.append(task)
        if len(slot.tasks) == 1:
            self._started(task)

    def _started(self, task: Task) -> None:
        task.started, task.started_at = time.monotonic(), _now()
        if self.on_start is not None:
            self.on_start(task.cell, task.slot.index)

    def _unsend(self, slot: Slot) -> None:
        """The worker's process is gone or going: its cells that never started go back to the
        front of its backlog, at the same attempt (their calls fail and are ignored)."""
        while slot.tasks:
            task = slot.tasks.pop()
            self.inflight.pop(task.ref, None)
            if not task.cancelled:
                task.slot, task.ref, task.started_at = None, None, ""
                slot.backlog.appendleft(task)
            else:
                self._emit(task, self._driver_record(task, Status.SKIPPED_OOM, task.cancelled))

    def _fail_queued(self, reason: str) -> None:
        # Never tried: a `not_run` record is reported but not stored (run/submit.py), so the next
        # submit runs the cell as unfinished, without counting it failed or using an attempt.
        tasks = [t for slot in self.slots for t in slot.backlog]
        for slot in self.slots:
            slot.backlog.clear()
        for task in [*tasks, *self.queue.drain()]:
            record = self._driver_record(task, Status.ERROR, reason)
            record.update(not_run=True, will_retry=True)
            self._emit(task, record)

    # -- worker start-up and restarts -------------------------------------------------------
    def _probe(self, slot: Slot, state: str, deadline: float | None = None) -> None:
        slot.state, slot.model_key = state, None  # a new process has no model loaded
        probe = slot.handle.ready.options(max_task_retries=-1).remote()
        self.probes[probe] = slot
        self.probe_deadlines[probe] = deadline or time.monotonic() + ACTOR_START_TIMEOUT_S

    def _probe_done(self, ref: Any) -> None:
        ray = import_ray()
        slot = self.probes.pop(ref)
        deadline = self.probe_deadlines.pop(ref, None)
        was = slot.state
        try:
            provenance = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - failed to start, or gone (its node died)
            what = "failed to start" if was == "starting" else "is gone and will get no more cells"
            log.warning("worker %d %s: %s", slot.index, what, _short(e))
            self._lose(slot)
            return
        if was == "restarting" and provenance.get("pid") == slot.provenance.get("pid"):
            self._probe(slot, was, deadline)  # the old process answered before the kill landed
            return
        slot.provenance = provenance
        slot.state, self.ever_ready = "ready", True
        if was == "starting":
            log.info("%s", describe(slot))
            if slot.provenance.get("cpu_stand_in") and not cpu_stand_in_allowed():
                log.warning(
                    "worker %d was planned for a GPU but torch sees no CUDA device "
                    "(CUDA_VISIBLE_DEVICES=%s): its cells fail",
                    slot.index,
                    slot.provenance.get("cuda_visible_devices"),
                )
        else:
            log.info("worker %d: restarted (pid %s)", slot.index, slot.provenance.get("pid"))

    def _check_probes(self) -> None:
        """A worker that never starts (no resources) or never restarts (its node died) is lost,
        so its cells go to other workers or fail instead of waiting forever."""
        now = time.monotonic()
        for probe, deadline in list(self.probe_deadlines.items()):
            if now <= deadline:
                continue
            slot = self.probes.pop(probe)
            del self.probe_deadlines[probe]
            if slot.state == "starting":
                log.warning(
                    "worker %d did not start within %.0fs: %s",
                    slot.index,
                    ACTOR_START_TIMEOUT_S,
                    shortfall(self.plan_options),
                )
            else:
                log.warning(
                    "worker %d did not restart within %.0fs and will get no more cells",
                    slot.index,
                    ACTOR_START_TIMEOUT_S,
                )
            self._lose(slot)

    def _lose(self, slot: Slot) -> None:
        """No more cells for `slot`; what it was promised goes back to the shared queue."""
        was_starting = slot.state == "starting"
        slot.state = "lost"
        if slot.handle is not None:
            try:
                import_ray().kill(slot.handle, no_restart=True)
            except Exception as e:  # noqa: BLE001 - already gone
                log.debug("worker %d: kill: %s", slot.index, _short(e))
        self._unsend(slot)
        self._release_backlog(slot)
        if was_starting and not self.ever_ready and all(s.state == "lost" for s in self.slots):
            raise ClusterError(
                f"no worker actor could start ({len(self.slots)} requested with "
                f"{self.plan_options}); see the Ray log"
            )

    def _replace(self, slot: Slot, reason: str) -> None:
        """Kill the worker's process; Ray starts a new one (same slot, new pid)."""
        log.info("worker %d: replacing its process (%s)", slot.index, reason)
        self._unsend(slot)
        self._release_backlog(slot)
        import_ray().kill(slot.handle, no_restart=False)
        self._probe(slot, "restarting")

    def _release_backlog(self, slot: Slot) -> None:
        """Cells promised to `slot` go back to the front of the shared queue (together), so a
        ready worker runs them instead of waiting for this one to come back."""
        if slot.backlog:
            self.queue.push(list(slot.backlog), front=True)
            slot.backlog.clear()
            self.feed_all = True

    # -- results ----------------------------------------------------------------------------
    def _finish(self, ref: Any) -> None:
        ray = import_ray()
        task = self.inflight.pop(ref)
        slot = task.slot
        try:
            record = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._advance(slot, task)
            self._emit(task, self._driver_record(task, Status.SKIPPED_OOM, task.cancelled or ""))
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            head = self._take(slot, task)
            if not task.cancelled:
                if any(not t.cancelled for t in slot.tasks):
                    self._ambiguous_death(task, e)
                else:
                    self._worker_died(task, e)
                return
            self._emit(task, self._driver_record(task, Status.SKIPPED_OOM, task.cancelled))
            if head:  # else the running cell's own call reports the death
                self._after_death(slot)
            return
        except ray.exceptions.RayError as e:
            record = self._driver_record(task, Status.ERROR, f"Ray error: {_short(e)}")
        self._advance(slot, task)
        if record.pop(NOT_RUN_KEY, None):  # the worker refused it: back in line, same attempt
            task.slot, task.ref, task.started_at = None, None, ""
            slot.backlog.appendleft(task)
            return
        restart = record.pop(RESTART_KEY, None)
        self._emit(task, record)
        if restart and slot.state == "ready":
            self._replace(slot, "sticky CUDA error")
        if record.get("status") == Status.OOM.value:
            self._skip_dominated(task.cell)

    @staticmethod
    def _take(slot: Slot, task: Task) -> bool:
        """Remove `task` from its worker's list; True if it was the running (first) one."""
        head = bool(slot.tasks) and slot.tasks[0] is task
        slot.tasks.remove(task)
        return head

    def _advance(self, slot: Slot, task: Task) -> None:
        """`task` is over; the cell queued behind it on that worker starts now."""
        if self._take(slot, task) and slot.tasks:
            self._started(slot.tasks[0])

    def _after_death(self, slot: Slot, first: Task | None = None) -> None:
        """The worker's process died: its unstarted cells (after `first`, if given) go back to
        the shared queue, and it gets no cell until its restarted process answers ready() (Ray
        fails calls made while it restarts; a node that died may never give it back)."""
        self._unsend(slot)
        if first is not None:
            first.slot, first.ref, first.started_at = None, None, ""
            slot.backlog.appendleft(first)
        self._release_backlog(slot)
        if slot.state == "ready":
            self._probe(slot, "restarting")

    def _ambiguous_death(self, task: Task, exc: Exception) -> None:
        """The worker died holding a running cell and a queued one: either may have killed it
        (a process that dies just after a cell can lose that cell's reply). Neither is charged;
        both run again, one at a time, so the next death names its cell."""
        slot = task.slot
        queued = [t for t in slot.tasks if not t.cancelled]
        log.warning(
            "worker %d died holding %s and %s queued (%s); running them again one at a time",
            slot.index,
            task.cell.label(),
            ", ".join(t.cell.label() for t in queued),
            _short(exc),
        )
        for t in (task, *queued):
            t.alone = True
        self._after_death(slot, first=task)

    def _worker_died(self, task: Task, exc: Exception) -> None:
        slot = task.slot
        tries = 1 + self.workers.retries
        used = task.attempt - self.first_attempt.get(task.cell_id, 1) + 1
        retry = used < tries
        note = (
            f"; retrying ({used} of {tries} tries used)"
            if retry
            else f"; giving up after {tries} tries"
        )
        record = self._driver_record(task, Status.ERROR, f"worker died: {_short(exc)}{note}")
        record["will_retry"] = retry
        self._emit(task, record)
        retry_task = None
        if retry:  # alone: it may kill its worker again, and should not take a cell with it
            retry_task = Task(
                cell=task.cell, cell_id=task.cell_id, attempt=task.attempt + 1, alone=True
            )
        self._after_death(slot, first=retry_task)

    def _skip_dominated(self, failed: CellSpec) -> None:
        reason = f"not run: cell {failed.cell_id} ({failed.label()}) ran out of memory"

        def dominated(task: Task) -> bool:
            return _dominates(failed, task.cell)

        skipped = self.queue.remove_if(dominated)
        for slot in self.slots:
            skipped.extend(t for t in slot.backlog if dominated(t))
            kept = [t for t in slot.backlog if not dominated(t)]
            slot.backlog.clear()
            slot.backlog.extend(kept)
            for task in list(slot.tasks)[1:]:  # queued in the actor, not started: cancel
                if not task.cancelled and dominated(task):
                    task.cancelled = reason
                    import_ray().cancel(task.ref)
        for task in skipped:
            self._emit(task, self._driver_record(task, Status.SKIPPED_OOM, reason))

    def _check_timeouts(self) -> None:
        limit = self.workers.cell_timeout_s
        now = time.monotonic()
        for slot in self.slots:
            if not slot.tasks or slot.state != "ready":
                continue
            task = slot.tasks[0]
            if now - task.started <= limit:
                continue
            slot.tasks.popleft()
            self.inflight.pop(task.ref, None)
            self._emit(
                task,
                self._driver_record(
                    task, Status.TIMEOUT, f"exceeded cell_timeout_s={limit:g}; worker replaced"
                ),
            )
            self._replace(slot, "cell timeout")

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Run every cell; raises Interrupted on Ctrl-C/SIGTERM after saving what finished."""
        import_ray()  # a ClusterError naming the fix if Ray is missing, before anything starts
        n = self.queue.add_cells(self.cells, self.first_attempt)
        if not n:
            return
        plan = cluster_plan(self.workers, n)
        self.plan_options = plan.options
        log.info("starting %d %s worker(s) with %s", plan.count, plan.kind, plan.options)
        try:
            self.slots = create_actors(plan, self.backend)
            for slot in self.slots:
                self._probe(slot, "starting")
            self._loop()
        except KeyboardInterrupt:
            self._drain()
            raise Interrupted(
                "interrupted: finished cells are saved; run the same submit again to resume"
            ) from None
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Kill every worker; start-up probes still pending are cancelled first (killing an
        actor under a pending retried call makes Ray print a retry message)."""
        ray = import_ray()
        for probe in self.probes:
            try:
                ray.cancel(probe)
            except Exception as e:  # noqa: BLE001 - stopping anyway
                log.debug("cancel of a ready() probe: %s", _short(e))
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)

    def _waiting(self) -> list:
        """The calls worth waiting on: each worker's running cell (a queued one cannot finish
        first), cancelled queued cells (they can), and start-up/restart probes."""
        refs = []
        for slot in self.slots:
            if slot.tasks:
                refs.append(slot.tasks[0].ref)
                refs.extend(t.ref for t in islice(slot.tasks, 1, None) if t.cancelled)
        refs.extend(self.probes)
        return refs

    def _pending(self) -> bool:
        return bool(self.inflight or self.queue or any(s.backlog for s in self.slots))

    def _loop(self) -> None:
        ray = import_ray()
        touched, next_check = self.slots, 0.0
        while True:
            self._feed(touched)
            if not self._pending():
                return
            waiting = self._waiting()
            if not waiting:  # cells left but every worker is lost
                self._fail_queued("not run: no worker left (every worker actor was lost)")
                return
            done, rest = ray.wait(waiting, num_returns=1, timeout=WAIT_TICK_S)
            if done and len(rest) > 1:  # others finished meanwhile: take them in this round too
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            touched = []
            for ref in done:
                if ref in self.probes:
                    touched.append(self.probes[ref])
                    self._probe_done(ref)
                elif ref in self.inflight:
                    touched.append(self.inflight[ref].slot)
                    self._finish(ref)
            now = time.monotonic()
            if now >= next_check:  # timeouts and start-up limits are seconds: no need per cell
                self._check_timeouts()
                self._check_probes()
                next_check, self.feed_all = now + CHECK_EVERY_S, True

    def _drain(self) -> None:
        """After an interrupt: cancel the cells not started; keep what finishes within a short
        grace period."""
        ray = import_ray()
        self.queue = CellQueue()
        for slot in self.slots:
            slot.backlog.clear()
            for task in list(slot.tasks)[1:]:
                task.cancelled = "interrupted"
                ray.cancel(task.ref)
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        running = sum(1 for s in self.slots if s.tasks)
        if running:
            log.warning(
                "interrupted: waiting up to %.0fs for %d running cell(s)",
                INTERRUPT_GRACE_S,
                running,
            )
        while self.inflight and time.monotonic() < deadline:
            try:
                done, _ = ray.wait(
                    list(self.inflight),
                    num_returns=1,
                    timeout=max(0.1, deadline - time.monotonic()),
                )
            except KeyboardInterrupt:
                break
            for ref in done:
                task = self.inflight.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    continue  # never started: the next submit runs it
                except Exception as e:  # noqa: BLE001 - stopping anyway
                    log.warning("dropped cell %s while stopping: %s", task.cell_id, _short(e))
                    continue
                record.pop(RESTART_KEY, None)
                if not record.pop(NOT_RUN_KEY, None):
                    self._emit(task, record)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
