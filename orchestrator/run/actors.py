"""Worker actors: how many, with which explicit resource requests, and starting them.

One actor per GPU (`num_gpus=gpus_per_worker`, across all nodes, up to `max_workers`), or
`cpu_workers` actors with `num_cpus=1` on a cluster without GPUs. Every actor states both its CPU
and its GPU amount: a GPU actor asks for the CPU share that fits every GPU node (at most 1, e.g.
0.5 on a node with 1 CPU and 2 GPUs), never Ray's implicit CPU, so no GPU is left without a
worker for want of a CPU. Actors are created together and each becomes usable when its `ready()`
answers; dispatch does not wait for the others.

Ray is imported here, in cluster.py, dispatch.py and workers/actor.py only.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.run.cluster import import_ray
from orchestrator.spec.job import WorkersSpec
from workers.worker import CPU_STAND_IN_ENV

log = logging.getLogger(__name__)


@dataclass
class WorkerPlan:
    count: int
    options: dict  # Ray resource requests of each actor: num_cpus and num_gpus, both explicit
    kind: str  # "gpu" or "cpu"


def gpu_worker_cpus(nodes: list[dict], gpus_per_worker: float) -> float:
    """The CPU amount each GPU actor asks for: 1, or less where a GPU node has fewer CPUs than
    GPU workers (rounded down to 1/100, Ray's resource granularity).

    >>> gpu_worker_cpus([{"CPU": 1.0, "GPU": 2.0}, {"CPU": 64.0, "GPU": 8.0}], 1)
    0.5
    >>> gpu_worker_cpus([{"GPU": 4.0}], 1)
    0.0
    """
    share = 1.0
    for node in nodes:
        per_node = int(node.get("GPU", 0) // gpus_per_worker)
        if per_node:
            share = min(share, node.get("CPU", 0.0) / per_node)
    return math.floor(share * 100) / 100


def plan_workers(
    spec: WorkersSpec, resources: dict, n_cells: int, nodes: list[dict] | None = None
) -> WorkerPlan:
    """How many actors and with which resource requests, from the cluster's resources
    (`nodes`: each alive node's resources, for the CPU share of GPU actors).

    >>> plan_workers(WorkersSpec(), {"CPU": 8.0, "GPU": 2.0}, 10).count
    2
    >>> plan_workers(WorkersSpec(), {"CPU": 1.0, "GPU": 2.0}, 10, [{"CPU": 1.0, "GPU": 2.0}]).options
    {'num_cpus': 0.5, 'num_gpus': 1}
    >>> plan_workers(WorkersSpec(cpu_workers=1), {"CPU": 8.0}, 10).options
    {'num_cpus': 1, 'num_gpus': 0}
    """
    gpus = float(resources.get("GPU", 0))
    if gpus >= spec.gpus_per_worker:
        cpus = gpu_worker_cpus(nodes if nodes is not None else [resources], spec.gpus_per_worker)
        count = int(gpus // spec.gpus_per_worker)
        options, kind = {"num_cpus": cpus, "num_gpus": spec.gpus_per_worker}, "gpu"
    else:
        cpus = max(1, int(resources.get("CPU", 1)))
        count, options, kind = min(spec.cpu_workers, cpus), {"num_cpus": 1, "num_gpus": 0}, "cpu"
    if spec.max_workers is not None:
        count = min(count, spec.max_workers)
    return WorkerPlan(count=max(1, min(count, max(1, n_cells))), options=options, kind=kind)


def cluster_plan(spec: WorkersSpec, n_cells: int) -> WorkerPlan:
    """plan_workers() for the connected Ray cluster."""
    ray = import_ray()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return plan_workers(spec, ray.cluster_resources(), n_cells, nodes)


def cpu_stand_in_allowed() -> bool:
    """Whether $ORCHESTRATOR_CPU_STAND_IN lets GPU-planned workers without CUDA use the CPU."""
    return os.environ.get(CPU_STAND_IN_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(eq=False)
class Slot:
    """One worker: its actor, where it runs, and the cells it holds.

    `tasks`: cells sent to the actor, in order (Ray runs them one after another; the first is
    running, the rest wait in the actor's queue). `backlog`: cells promised to this worker (the
    rest of a unit of compared cells, or a retry) and not sent yet."""

    index: int
    handle: Any
    provenance: dict = field(default_factory=dict)
    model_key: str | None = None
    state: str = "starting"  # starting -> ready <-> restarting; lost
    tasks: deque = field(default_factory=deque)
    backlog: deque = field(default_factory=deque)


def create_actors(plan: WorkerPlan, backend: Any) -> list[Slot]:
    """Create the plan's actors (not waiting for them); each slot starts in state `starting`."""
    from workers.actor import RemoteCellActor

    level = logging.getLogger().getEffectiveLevel()
    stand_in = plan.kind == "gpu" and cpu_stand_in_allowed()
    return [
        Slot(
            index=i,
            handle=RemoteCellActor.options(
                **plan.options, max_restarts=-1, max_task_retries=0
            ).remote(backend, level, plan.kind == "gpu", stand_in),
        )
        for i in range(plan.count)
    ]


def shortfall(options: dict) -> str:
    """What an actor asked for against what the cluster has free now, naming what is short,
    e.g. 'it needs CPU 1, GPU 1; free: CPU 0 of 1, GPU 1 of 2 (not enough CPU)'."""
    ray = import_ray()
    try:
        free, total = ray.available_resources(), ray.cluster_resources()
    except Exception:  # noqa: BLE001 - only for a message
        free, total = {}, {}
    names = {"num_cpus": "CPU", "num_gpus": "GPU"}
    asked = {names[k]: v for k, v in options.items() if k in names and v}
    need = ", ".join(f"{r} {v:g}" for r, v in asked.items()) or "no resources"
    have = ", ".join(f"{r} {free.get(r, 0):g} of {total.get(r, 0):g}" for r in asked)
    short = [r for r, v in asked.items() if free.get(r, 0) < v]
    why = f" (not enough {' and '.join(short)})" if short else " (placement or start-up failed)"
    return f"it needs {need}; free now: {have or 'nothing asked'}{why}"


def describe(slot: Slot) -> str:
    p = slot.provenance
    stand_in = " as a CPU stand-in for a GPU" if p.get("cpu_stand_in") else ""
    return (
        f"worker {slot.index}: {p.get('device')}{stand_in} on {p.get('hostname')} "
        f"({p.get('node_ip')}, node {str(p.get('ray_node_id'))[:12]}, "
        f"CUDA_VISIBLE_DEVICES={p.get('cuda_visible_devices')}, pid {p.get('pid')})"
    )
