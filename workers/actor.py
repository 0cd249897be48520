"""The Ray actor: a thin wrapper that runs a `CellWorker` inside a Ray worker process.

Ray is imported here (and in orchestrator/run/) only. The actor adds Ray provenance (node id and
IP, actor id, assigned GPU ids, Ray version) to every record. GPU pinning is Ray's job: an actor
created with `num_gpus=1` sees its GPU as `cuda:0` through CUDA_VISIBLE_DEVICES. An actor planned
for a GPU whose torch sees no CUDA fails its cells (see `CellWorker`), unless the driver allowed a
CPU stand-in.
"""

from __future__ import annotations

import logging

try:
    import ray
except ImportError as exc:  # pragma: no cover - ray is a dependency
    raise ImportError("workers.actor needs Ray: pip install 'ray>=2.9'") from exc

from workers.worker import Backend, CellWorker


def _ray_provenance() -> dict:
    ctx = ray.get_runtime_context()
    return {
        "ray_node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "ray_actor_id": ctx.get_actor_id(),
        "ray_gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()) or None,
        "ray_version": ray.__version__,
    }


class CellActor:
    """Ray actor around CellWorker: `ready()` -> provenance, `run(cell)` -> record."""

    def __init__(
        self,
        backend: Backend | None = None,
        log_level: int = logging.INFO,
        gpu_planned: bool = False,
        cpu_stand_in: bool = False,
    ):
        logging.basicConfig(
            level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        provenance = _ray_provenance()  # fixed for the life of the process
        self._worker = CellWorker(
            backend=backend,
            extra_provenance=lambda: provenance,
            gpu_planned=gpu_planned,
            cpu_stand_in=cpu_stand_in,
        )

    def ready(self) -> dict:
        return self._worker.provenance()

    def run(self, cell: dict) -> dict:
        return self._worker.run(cell)


RemoteCellActor = ray.remote(CellActor)
