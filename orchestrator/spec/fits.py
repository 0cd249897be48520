"""Refusing cells that cannot fit in memory, before anything runs (estimates: memory.py).

Two limits, both checked at validation:

- host-side bytes of every cell (building the model in float32, prompt rows, generated ids)
  against this machine's RAM, always: any worker's host needs them, whatever its device, and a
  sane cell needs little of them;
- all of a cell's bytes against `worker_memory_bytes` when the caller knows the workers are CPU
  workers with that much memory (a local submit on a machine without GPUs passes its RAM).

A cell over `measure.memory_budget_bytes` is not refused: the worker records it as `oom` before
allocating anything (that budget simulates a smaller device).

Whole grids are not expanded when they fit: the estimate grows with batch size, prompt length,
new tokens and dtype width, so one bound per model and method (the largest values any cell can
take) clears every cell at once; only a bound that does not fit leads to a search for a real
offending cell, largest cells first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.spec import checks, memory
from orchestrator.spec.grid import AXIS_DEFAULTS, SIZE_AXES, CellSpec, largest_cells_first

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.spec.job import JobSpec, ModelSpec
    from orchestrator.spec.source import Document


def estimate(model: ModelSpec, *, method: str, dtype: str, batch_size: int, prompt_len: int,
             max_tokens: int, synthetic_prompt: bool) -> memory.CellMemory:
    depths, widths = checks.parse_tag(model.tag)
    return memory.estimate_cell(
        depths=depths, widths=widths, vocab_size=model.vocab_size, head_dim=model.head_dim,
        sequence_len=model.sequence_len, dtype=dtype, method=method, batch_size=batch_size,
        prompt_len=prompt_len, max_tokens=max_tokens, synthetic_prompt=synthetic_prompt,
    )


def cell_estimate(cell: CellSpec) -> memory.CellMemory:
    return estimate(cell.model, method=cell.method, dtype=cell.dtype, batch_size=cell.batch_size,
                    prompt_len=cell.prompt_len, max_tokens=cell.max_tokens,
                    synthetic_prompt=cell.prompt is None)


def _values(job: JobSpec, axis: str) -> list:
    """Every value `axis` takes anywhere in the job: grid, zip groups, include entries."""
    values = list(job.grid.axes.get(axis, ()))
    for group in job.grid.zip:
        values += list(group.get(axis, ()))
    values += [entry[axis] for entry in job.grid.include if axis in entry]
    return values or list(AXIS_DEFAULTS[axis])


def _bounds(job: JobSpec, model: ModelSpec) -> list[memory.CellMemory]:
    """Upper bounds of every cell's estimate for `model`, one per method."""
    sizes = {axis: max(_values(job, axis)) for axis in SIZE_AXES}
    dtypes = [model.dtype if d is None else d for d in _values(job, "dtype")]
    widest = max(dtypes, key=lambda d: memory.ITEMSIZE[d])
    return [estimate(model, method=m, dtype=widest, synthetic_prompt=True, **sizes)
            for m in set(_values(job, "method"))]


def _too_big(job: JobSpec, cell: CellSpec, est: memory.CellMemory, host: int | None,
             worker: int | None) -> str | None:
    """Why `cell` cannot fit, or None."""
    if host is not None and est.host_bytes > host:  # built before any budget is checked
        return (f"needs an estimated {memory.human_bytes(est.host_bytes)} of host memory "
                f"({est.host_breakdown()}) on any worker, but this machine has "
                f"{memory.human_bytes(host)}")
    budget = job.measure.memory_budget_bytes
    if budget is not None and est.budget_bytes > budget:
        return None  # recorded as oom by the worker before the model runs (a simulated device)
    if worker is not None and est.cpu_bytes > worker:
        return (f"needs an estimated {memory.human_bytes(est.cpu_bytes)} ({est.breakdown()}) "
                f"but a CPU worker here has {memory.human_bytes(worker)} of memory")
    return None


def check_memory(doc: Document, job: JobSpec, worker_memory_bytes: int | None = None) -> None:
    """Raise a SpecError naming the first model or cell that cannot fit (module docstring)."""
    host = memory.host_memory_bytes()
    limits = [x for x in (host, worker_memory_bytes) if x is not None]
    if not limits:
        return
    if host is not None:
        _check_models(doc, job, host)
    smallest = min(limits)
    if all(max(b.host_bytes, b.cpu_bytes if worker_memory_bytes else 0) <= smallest
           for model in job.models for b in _bounds(job, model)):
        return
    for cell in largest_cells_first(job):  # a too-big cell is found early, not after the rest
        reason = _too_big(job, cell, cell_estimate(cell), host, worker_memory_bytes)
        if reason:
            raise doc.error(_locate(doc, job, cell),
                            f"cell '{cell.label()}' {reason}; lower batch_size, prompt_len or "
                            "max_tokens (the estimate: docs/failures.md)")


def _check_models(doc: Document, job: JobSpec, host: int) -> None:
    """Every worker builds its model on the host first: refuse a model that cannot be built."""
    for i, model in enumerate(job.models):
        dtypes = [model.dtype if d is None else d for d in _values(job, "dtype")]
        narrowest = min(dtypes, key=lambda d: memory.ITEMSIZE[d])  # the cast copy costs most
        est = estimate(model, method="naive", dtype=narrowest, batch_size=1, prompt_len=1,
                       max_tokens=1, synthetic_prompt=False)
        if est.load_bytes > host:
            path = ("models", i) if ("models",) in doc.origins else ("model",)
            raise doc.error(path, (
                f"model {model.tag} (vocab_size {model.vocab_size}, sequence_len "
                f"{model.sequence_len}) needs an estimated {memory.human_bytes(est.load_bytes)} "
                f"of host memory to build (float32 parameters, cast copy, rotary tables), but "
                f"this machine has {memory.human_bytes(host)}; use a smaller model"))


def _locate(doc: Document, job: JobSpec, cell: CellSpec) -> tuple:
    """The field path of the cell's size that is largest against the job's smallest value."""
    ratio = {axis: getattr(cell, axis) / min(_values(job, axis)) for axis in SIZE_AXES}
    for axis in sorted(SIZE_AXES, key=lambda a: -ratio[a]):
        value = getattr(cell, axis)
        if value in job.grid.axes.get(axis, ()):
            return ("grid", axis, list(job.grid.axes[axis]).index(value))
        for i, group in enumerate(job.grid.zip):
            if value in group.get(axis, ()):
                return ("zip", i, axis) if ("zip", i) in doc.origins else ("zip", axis)
        for i, entry in enumerate(job.grid.include):
            if entry.get(axis) == value:
                return ("include", i, axis) if ("include", i) in doc.origins else ("include",)
    return ("grid",)
