"""Running cells on Ray: start or join a cluster, create the worker actors, feed them cells.

One actor per GPU (`num_gpus=gpus_per_worker`, across all nodes, up to `max_workers`), or
`cpu_workers` actors with `num_cpus=1` on a cluster without GPUs. Actors pull cells from
per-model queues, so an actor keeps the model it has loaded and a fast actor never waits for a
slow one. Scheduling uses `ray.wait` with a timeout; nothing busy-waits.

Faults: a worker that dies mid-cell is restarted by Ray and the cell retried up to
`workers.retries` times; a cell past `workers.cell_timeout_s` is recorded as `timeout` and its
worker replaced; an `oom` cell makes the queued cells it dominates `skipped_oom`. A restarted
worker gets no cell until it answers `ready()` again, so no cell is lost to a restarting actor.

Ray is imported here, in cluster.py (connecting) and in workers/actor.py only.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from orchestrator.errors import ClusterError, Interrupted
from orchestrator.run.cluster import import_ray
from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import WorkersSpec
from workers.record import SCHEMA_VERSION, Status, params_of

log = logging.getLogger(__name__)

ACTOR_START_TIMEOUT_S = 180.0
INTERRUPT_GRACE_S = 10.0
WAIT_TICK_S = 1.0


# ---------------------------------------------------------------------------------------------
# actors


@dataclass
class WorkerPlan:
    count: int
    options: dict
    kind: str  # "gpu" or "cpu"


def plan_workers(spec: WorkersSpec, resources: dict, n_cells: int) -> WorkerPlan:
    """How many actors and with which resource requests, from the cluster's resources.

    >>> plan_workers(WorkersSpec(), {"CPU": 8.0, "GPU": 2.0}, 10).count
    2
    >>> plan_workers(WorkersSpec(cpu_workers=1), {"CPU": 8.0}, 10).options
    {'num_cpus': 1}
    """
    gpus = float(resources.get("GPU", 0))
    if gpus >= spec.gpus_per_worker:
        count, options, kind = (
            int(gpus // spec.gpus_per_worker),
            {"num_gpus": spec.gpus_per_worker},
            "gpu",
        )
    else:
        cpus = max(1, int(resources.get("CPU", 1)))
        count, options, kind = min(spec.cpu_workers, cpus), {"num_cpus": 1}, "cpu"
    if spec.max_workers is not None:
        count = min(count, spec.max_workers)
    return WorkerPlan(count=max(1, min(count, max(1, n_cells))), options=options, kind=kind)


@dataclass
class _Slot:
    index: int
    handle: Any
    provenance: dict = field(default_factory=dict)
    model_key: str | None = None


def _start_actors(plan: WorkerPlan, backend: Any) -> list[_Slot]:
    ray = import_ray()
    from workers.actor import RemoteCellActor

    handles = [
        RemoteCellActor.options(**plan.options, max_restarts=-1, max_task_retries=0).remote(
            backend, logging.getLogger().getEffectiveLevel()
        )
        for _ in range(plan.count)
    ]
    pending = {h.ready.remote(): i for i, h in enumerate(handles)}
    provenance: dict[int, dict] = {}
    deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        done, _ = ray.wait(
            list(pending), num_returns=1, timeout=max(0.1, deadline - time.monotonic())
        )
        for ref in done:
            i = pending.pop(ref)
            try:
                provenance[i] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - any start failure: log it, go on
                log.warning("worker %d failed to start: %s", i, " ".join(str(e).split())[:300])
    for ref, i in pending.items():
        log.warning(
            "worker %d did not start within %.0fs (not enough %s resources?)",
            i,
            ACTOR_START_TIMEOUT_S,
            plan.kind.upper(),
        )
    slots = []
    for i, handle in enumerate(handles):
        if i in provenance:
            slots.append(_Slot(index=len(slots), handle=handle, provenance=provenance[i]))
        else:
            ray.kill(handle, no_restart=True)
    if not slots:
        raise ClusterError(
            f"no worker actor could start ({plan.count} requested with "
            f"{plan.options}); see the Ray log"
        )
    return slots


# ---------------------------------------------------------------------------------------------
# dispatching


@dataclass
class _Task:
    cell: CellSpec
    attempt: int
    slot: _Slot | None = None
    started: float = 0.0
    started_at: str = ""


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
    numbering). `on_record(record)` is called in the driver for every attempt, in finishing order;
    `on_start(cell, worker_index)`, if given, when a cell is sent to a worker.
    """

    def __init__(
        self,
        cells: list[CellSpec],
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
        self.queues: OrderedDict[str, deque] = OrderedDict()
        self.inflight: dict[Any, _Task] = {}
        self.slots: list[_Slot] = []
        self.restarting: dict[Any, _Slot] = {}  # ready() probe -> slot whose actor restarts
        self.restart_deadlines: dict[Any, float] = {}  # probe -> when to give the worker up
        self.lost: set[int] = set()  # slots whose actor could not be restarted

    # -- records made by the driver (worker died, timeout, skipped) --------------------------
    def _driver_record(self, task: _Task, status: Status, error: str) -> dict:
        record = {
            "schema_version": SCHEMA_VERSION,
            **params_of(task.cell.to_dict()),
            "status": status.value,
            "error": error,
            "started_at": task.started_at or _now(),
            "finished_at": _now(),
        }
        if task.slot is not None:
            record.update(task.slot.provenance)
            record["cell_wall_s"] = time.monotonic() - task.started
        return record

    def _emit(self, task: _Task, record: dict) -> None:
        record["attempt"] = task.attempt
        if task.slot is not None:
            record["worker_index"] = task.slot.index
        self.on_record(record)

    # -- queueing ---------------------------------------------------------------------------
    def _enqueue(self, task: _Task, front: bool = False) -> None:
        queue = self.queues.setdefault(task.cell.model.key(), deque())
        queue.appendleft(task) if front else queue.append(task)

    def _next_task(self, slot: _Slot) -> _Task | None:
        if slot.model_key and self.queues.get(slot.model_key):
            return self.queues[slot.model_key].popleft()
        held = {s.model_key for s in self.slots if s is not slot}
        candidates = [k for k, q in self.queues.items() if q]
        if not candidates:
            return None
        free = [k for k in candidates if k not in held] or candidates
        key = max(free, key=lambda k: len(self.queues[k]))
        return self.queues[key].popleft()

    def _busy(self) -> set[int]:
        busy = {t.slot.index for t in self.inflight.values() if t.slot is not None}
        return busy | {s.index for s in self.restarting.values()} | self.lost

    # -- restarted workers ------------------------------------------------------------------
    def _await_restart(self, slot: _Slot) -> None:
        """Hold `slot` back until its restarted actor answers ready() (Ray fails calls made
        while an actor restarts, which would cost the next cell an attempt)."""
        slot.model_key = None  # the new process has no model loaded
        probe = slot.handle.ready.options(max_task_retries=-1).remote()
        self.restarting[probe] = slot
        self.restart_deadlines[probe] = time.monotonic() + ACTOR_START_TIMEOUT_S
        log.debug("worker %d: waiting for its restart", slot.index)

    def _restarted(self, ref: Any) -> None:
        ray = import_ray()
        slot = self.restarting.pop(ref)
        self.restart_deadlines.pop(ref, None)
        try:
            slot.provenance = ray.get(ref)
            log.info("worker %d: restarted (pid %s)", slot.index, slot.provenance.get("pid"))
        except Exception as e:  # noqa: BLE001 - gone for good (e.g. its node died)
            log.warning("worker %d is gone and will get no more cells: %s", slot.index, _short(e))
            self.lost.add(slot.index)

    def _fail_queued(self, reason: str) -> None:
        for queue in self.queues.values():
            while queue:
                task = queue.popleft()
                self._emit(task, self._driver_record(task, Status.ERROR, reason))

    def _dispatch_idle(self) -> None:
        busy = self._busy()
        for slot in self.slots:
            if slot.index in busy:
                continue
            task = self._next_task(slot)
            if task is None:
                return
            task.slot, task.started, task.started_at = slot, time.monotonic(), _now()
            slot.model_key = task.cell.model.key()
            self.inflight[slot.handle.run.remote(task.cell.to_dict())] = task
            if self.on_start is not None:
                self.on_start(task.cell, slot.index)

    # -- results ----------------------------------------------------------------------------
    def _finish(self, ref: Any, task: _Task) -> None:
        ray = import_ray()
        try:
            record = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._worker_died(task, e)
            return
        except ray.exceptions.RayError as e:
            record = self._driver_record(task, Status.ERROR, f"Ray error: {_short(e)}")
        self._emit(task, record)
        if record.get("status") == Status.OOM.value:
            self._skip_dominated(task.cell)

    def _worker_died(self, task: _Task, exc: Exception) -> None:
        if task.slot is not None:
            self._await_restart(task.slot)
        tries = 1 + self.workers.retries
        first = self.first_attempt.get(task.cell.cell_id, 1)
        used = task.attempt - first + 1
        retry = used < tries
        note = (
            f"; retrying ({used} of {tries} tries used)"
            if retry
            else f"; giving up after {tries} tries"
        )
        record = self._driver_record(task, Status.ERROR, f"worker died: {_short(exc)}{note}")
        record["will_retry"] = retry
        self._emit(task, record)
        if retry:
            self._enqueue(_Task(cell=task.cell, attempt=task.attempt + 1), front=True)

    def _skip_dominated(self, failed: CellSpec) -> None:
        for queue in self.queues.values():
            keep = deque()
            for task in queue:
                if _dominates(failed, task.cell):
                    self._emit(
                        task,
                        self._driver_record(
                            task,
                            Status.SKIPPED_OOM,
                            f"not run: cell {failed.cell_id} ({failed.label()}) ran out of memory",
                        ),
                    )
                else:
                    keep.append(task)
            queue.clear()
            queue.extend(keep)

    def _check_timeouts(self) -> None:
        ray = import_ray()
        limit = self.workers.cell_timeout_s
        now = time.monotonic()
        for ref, task in list(self.inflight.items()):
            if now - task.started <= limit:
                continue
            del self.inflight[ref]
            self._emit(
                task,
                self._driver_record(
                    task, Status.TIMEOUT, f"exceeded cell_timeout_s={limit:g}; worker replaced"
                ),
            )
            ray.kill(task.slot.handle, no_restart=False)  # Ray restarts it
            self._await_restart(task.slot)

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Run every cell; raises Interrupted on Ctrl-C/SIGTERM after saving what finished."""
        ray = import_ray()
        for cell in self.cells:
            self._enqueue(_Task(cell=cell, attempt=self.first_attempt.get(cell.cell_id, 1)))
        plan = plan_workers(self.workers, ray.cluster_resources(), len(self.cells))
        log.info("starting %d %s worker(s) with %s", plan.count, plan.kind, plan.options)
        try:
            self.slots = _start_actors(plan, self.backend)
            for slot in self.slots:
                p = slot.provenance
                log.info(
                    "worker %d: %s on %s (node %s, CUDA_VISIBLE_DEVICES=%s)",
                    slot.index,
                    p.get("device"),
                    p.get("hostname"),
                    str(p.get("ray_node_id"))[:12],
                    p.get("cuda_visible_devices"),
                )
            self._loop()
        except KeyboardInterrupt:
            self._drain()
            raise Interrupted(
                "interrupted: finished cells are saved; run the same submit again to resume"
            ) from None
        finally:
            for slot in self.slots:
                ray.kill(slot.handle, no_restart=True)

    def _loop(self) -> None:
        ray = import_ray()
        while True:
            self._dispatch_idle()
            if not self.inflight and not any(self.queues.values()):
                return
            waiting = [*self.inflight, *self.restarting]
            if not waiting:  # cells left but every worker is lost
                self._fail_queued("not run: no worker left (every worker actor was lost)")
                return
            done, _ = ray.wait(waiting, num_returns=1, timeout=WAIT_TICK_S)
            for ref in done:
                if ref in self.restarting:
                    self._restarted(ref)
                    continue
                task = self.inflight.pop(ref, None)
                if task is not None:
                    self._finish(ref, task)
            self._check_timeouts()
            self._check_restarts()

    def _check_restarts(self) -> None:
        """A worker whose restart never completes (its node died, no GPU left to place it on) is
        lost, so its cells go to other workers or fail instead of waiting forever."""
        now = time.monotonic()
        for probe, deadline in list(self.restart_deadlines.items()):
            if now > deadline:
                slot = self.restarting.pop(probe)
                del self.restart_deadlines[probe]
                log.warning("worker %d did not restart within %.0fs and will get no more cells",
                            slot.index, ACTOR_START_TIMEOUT_S)
                self.lost.add(slot.index)

    def _drain(self) -> None:
        """After an interrupt: keep what finishes within a short grace period."""
        ray = import_ray()
        self.queues.clear()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        if self.inflight:
            log.warning(
                "interrupted: waiting up to %.0fs for %d running cell(s)",
                INTERRUPT_GRACE_S,
                len(self.inflight),
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
                    self._emit(task, ray.get(ref))
                except Exception as e:  # noqa: BLE001 - stopping anyway
                    log.warning("dropped cell %s while stopping: %s", task.cell.cell_id, _short(e))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
