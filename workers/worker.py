"""`CellWorker`: load a model once, run cells on it, return one plain record per cell.

It runs in-process (tests, debugging) or inside the Ray actor of actor.py. The engine is reached
through a small backend object so tests can inject a fake one:

    worker = CellWorker()                      # real engine (engine.bench.measure_cell)
    record = worker.run(cell.to_dict())        # never raises: failures are records

Torch and the engine are imported lazily, so importing this module stays cheap for the driver.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from workers.errors import BadCellError
from workers.record import SCHEMA_VERSION, Status, dominates, params_of

log = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 4000
# Environment variable (read by the driver, passed to the actors) that lets a worker planned for
# a GPU measure on the CPU when torch sees no CUDA device: for tests with GPUs declared to Ray on
# a CPU-only machine. Rows then say cpu_stand_in=True.
CPU_STAND_IN_ENV = "ORCHESTRATOR_CPU_STAND_IN"
# Keys a worker adds for the driver only (popped before the row is written): the cell was not
# run (put it back in the queue), or the process must be replaced (sticky CUDA error).
NOT_RUN_KEY = "_not_run"
RESTART_KEY = "_restart_worker"


class Backend(Protocol):
    """What a worker needs from an engine: load a model, measure a cell on it."""

    def device(self) -> str: ...

    def load(self, model: dict, *, device: str, dtype: str) -> Any: ...

    def measure(self, model: Any, cell: dict, *, device: str) -> dict: ...


class EngineBackend:
    """The real backend: engine.model / engine.checkpoint / engine.bench."""

    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self, model: dict, *, device: str, dtype: str) -> Any:
        import torch

        torch_dtype = getattr(torch, dtype)
        if model["checkpoint"] == "random":
            from engine.config import UNetConfig
            from engine.model import UNet

            config = UNetConfig.from_tag(
                model["tag"],
                vocab_size=model["vocab_size"],
                head_dim=model["head_dim"],
                sequence_len=model["sequence_len"],
            )
            net = UNet(config)
            net.init_weights(kind="random", seed=model.get("seed", 0))
        else:
            from engine.checkpoint import load_checkpoint

            net, _meta = load_checkpoint(
                model["checkpoint"], step=model.get("step"), device=device, dtype=torch_dtype
            )
        net = net.to(device=device, dtype=torch_dtype)
        net.eval()
        return net

    def measure(self, model: Any, cell: dict, *, device: str) -> dict:
        from engine.bench import BenchSpec, measure_cell

        spec = BenchSpec(
            method=cell["method"],
            batch_size=cell["batch_size"],
            prompt_len=cell["prompt_len"],
            max_tokens=cell["max_tokens"],
            temperature=cell["temperature"],
            top_k=cell["top_k"],
            seed=cell["seed"],
            warmup=cell["warmup"],
            repeats=cell["repeats"],
            prompt_text=cell.get("prompt"),
            device=device,
            dtype=cell["dtype"],
            profile=cell.get("profile", False),
        )
        tokenizer = self._tokenizer(cell["model"]) if cell.get("prompt") else None
        result = measure_cell(
            model, spec, tokenizer, memory_budget_bytes=cell.get("memory_budget_bytes")
        )
        out = result.to_dict()
        if not cell["temperature"]:  # greedy: keep the ids so naive and cached can be compared
            out["generated_ids"] = [list(map(int, row)) for row in result.generated_ids]
        return out

    def _tokenizer(self, model: dict) -> Any:
        """The checkpoint's nanochat tokenizer (<base>/tokenizer/), else $NANOCHAT_BASE_DIR's,
        else the byte tokenizer (random models)."""
        from engine.tokenizer import ByteTokenizer, load_tokenizer

        if model["checkpoint"] == "random":
            return ByteTokenizer()
        base = Path(model["checkpoint"]).parent.parent  # <base>/base_checkpoints/<tag>
        if (base / "tokenizer" / "tokenizer.pkl").is_file():
            return load_tokenizer(base)
        return load_tokenizer()


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed or broken metadata
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _is_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (also raised by the engine's memory budget), or another
    error that says it ran out of memory (e.g. "CUDA error: out of memory" from a kernel)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


_STICKY_MARKERS = (
    "cuda error",
    "cublas_status",
    "cudnn_status",
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
)


def _is_sticky_cuda_error(exc: BaseException) -> bool:
    """An error that leaves the CUDA context unusable (illegal address, device-side assert,
    ...): torch.AcceleratorError, or a RuntimeError whose message says CUDA error. Call only
    for errors that are not out-of-memory."""
    if type(exc).__name__ == "AcceleratorError":
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _STICKY_MARKERS)


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo "model name"), else platform.processor(), else None.

    >>> isinstance(cpu_model(), (str, type(None)))
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _requested(cell: dict) -> str:
    """The sizes a cell asked for, for an out-of-memory message."""
    return (
        f"batch_size={cell.get('batch_size')} prompt_len={cell.get('prompt_len')} "
        f"max_tokens={cell.get('max_tokens')} dtype={cell.get('dtype')}"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CellWorker:
    """Runs cells in this process; keeps the most recently used model loaded.

    `backend` defaults to the real engine; `extra_provenance` (e.g. Ray node id, added by the
    actor) is merged into every record. A worker planned for a GPU (`gpu_planned`) whose torch
    sees no CUDA device fails its cells, unless `cpu_stand_in` allows measuring on the CPU
    instead (rows then say `cpu_stand_in=True`). After a sticky CUDA error (not an
    out-of-memory) the worker runs nothing more: its later cells come back marked not run, and
    the record of the failed cell asks the driver to replace the process.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        extra_provenance: Callable[[], dict] | None = None,
        *,
        gpu_planned: bool = False,
        cpu_stand_in: bool = False,
    ):
        self._backend = backend if backend is not None else EngineBackend()
        self._extra_provenance = extra_provenance
        self._gpu_planned = gpu_planned
        self._cpu_stand_in = cpu_stand_in
        self._models: dict[str, Any] = {}
        self._provenance: dict | None = None
        self._broken: str | None = None  # the sticky CUDA error that broke this process
        self._oom_cells: list[dict] = []  # cells that ran out of memory in this process

    def provenance(self) -> dict:
        """Where this worker runs: host, device, GPU, CUDA_VISIBLE_DEVICES, versions."""
        if self._provenance is None:
            self._provenance = self._gather_provenance()
        out = dict(self._provenance)
        if self._extra_provenance is not None:
            out.update(self._extra_provenance())
        return out

    def _gather_provenance(self) -> dict:
        device = self._backend.device()
        info = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "device": device,
            "gpu_name": None,
            "accelerator_model": None,
            "cpu_model": cpu_model(),
            # planned for a GPU, but this process has none: measuring here would be on the CPU
            "cpu_stand_in": bool(self._gpu_planned and not device.startswith("cuda")),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_version": _dist_version("torch"),
            "torch_num_threads": None,
        }
        torch = sys.modules.get("torch")
        if torch is not None:
            info["torch_num_threads"] = torch.get_num_threads()
            if device.startswith("cuda"):
                info["gpu_name"] = info["accelerator_model"] = torch.cuda.get_device_name(0)
        return info

    def _refusal(self, cell: dict, provenance: dict) -> dict | None:
        """The record fields of a cell this worker must not run, or None to run it."""
        if self._broken is not None:
            error = f"not run: this worker process had a sticky CUDA error ({self._broken})"
            return {"status": Status.ERROR.value, "error": error, NOT_RUN_KEY: True}
        if provenance.get("cpu_stand_in") and not self._cpu_stand_in:
            node = provenance.get("node_ip") or provenance.get("hostname")
            node_id = str(provenance.get("ray_node_id") or "")[:12]
            error = (
                f"worker planned for a GPU sees no CUDA device on node {node}"
                + (f" ({node_id})" if node_id else "")
                + f", CUDA_VISIBLE_DEVICES={provenance.get('cuda_visible_devices')}: "
                "not measuring on CPU (torch without CUDA, or GPUs declared but absent; "
                f"set {CPU_STAND_IN_ENV}=1 to measure on CPU on purpose)"
            )
            return {"status": Status.ERROR.value, "error": error}
        failed = next((c for c in self._oom_cells if dominates(c, cell)), None)
        if failed is not None:  # queued behind its oom cell before the driver could stop it
            error = f"not run: cell {failed.get('cell_id')} ran out of memory on this worker"
            return {"status": Status.SKIPPED_OOM.value, "error": error}
        return None

    def _model(self, model: dict, device: str, dtype: str) -> tuple[Any, float]:
        key = json.dumps([model, device, dtype], sort_keys=True, default=str)
        if key in self._models:
            return self._models[key], 0.0
        self._release_models()  # one model at a time: the driver groups cells by model
        t0 = time.perf_counter()
        net = self._backend.load(model, device=device, dtype=dtype)
        self._models[key] = net
        return net, time.perf_counter() - t0

    def _release_models(self) -> None:
        self._models.clear()
        self._free_memory()

    def _free_memory(self) -> None:
        """Drop unreferenced tensors (caches of a failed cell) and return CUDA's cached blocks."""
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, cell: dict) -> dict:
        """Run one cell and return its record (status ok/error/oom/skipped_oom); never raises."""
        started_at, t0 = _now(), time.perf_counter()
        record: dict = {"schema_version": SCHEMA_VERSION, **params_of(cell)}
        record.update(status=Status.OK.value, error=None, error_detail=None, model_load_s=None)
        try:
            missing = [
                k
                for k in ("method", "batch_size", "prompt_len", "max_tokens", "model", "dtype")
                if k not in cell
            ]
            if missing:
                raise BadCellError(f"cell is missing {', '.join(missing)}")
            provenance = self.provenance()
            record.update(provenance)
            refusal = self._refusal(cell, provenance)
            if refusal is not None:
                record.update(refusal)
                return _finish(record, started_at, t0)
            device = provenance["device"]
            model, load_s = self._model(cell["model"], device, cell["dtype"])
            record["model_load_s"] = load_s
            metrics = self._backend.measure(model, cell, device=device)
            for key, value in metrics.items():
                if key not in record:
                    record[key] = value
        except Exception as exc:  # noqa: BLE001 - failures are data, not crashes
            self._failed(cell, exc, record)
        if record["status"] != Status.OK.value and self._broken is None:
            # Outside the except block: the exception and its traceback (whose frames hold the
            # cell's activations and KV caches) are gone, so their memory can be released.
            self._free_memory()
        return _finish(record, started_at, t0)

    def _failed(self, cell: dict, exc: Exception, record: dict) -> None:
        """Fill in the record of a cell that raised `exc`."""
        oom = _is_oom(exc)
        error = _one_line(exc)
        record.update(
            status=(Status.OOM if oom else Status.ERROR).value,
            error=f"out of memory at {_requested(cell)}: {error}" if oom else error,
            error_detail=traceback.format_exc()[-MAX_DETAIL_CHARS:],
        )
        if oom:
            self._oom_cells.append(cell)
        elif _is_sticky_cuda_error(exc):
            # The CUDA context is unusable for the rest of this process: every later cell would
            # fail the same way. The driver replaces the process.
            self._broken = error[:200]
            record["error"] = f"{error} (sticky CUDA error: the worker process is replaced)"
            record[RESTART_KEY] = True
        log.warning("cell %s failed: %s", cell.get("cell_id"), record["error"])


def _finish(record: dict, started_at: str, t0: float) -> dict:
    record.update(started_at=started_at, finished_at=_now(), cell_wall_s=time.perf_counter() - t0)
    return record
