"""Typed job specs: a YAML file (plus --set overrides) validated into frozen dataclasses.

    spec = load_job_spec("jobs/sweep.yaml", overrides=["measure.repeats=5"])

Every problem raises `SpecError` naming the file, line and field path, e.g.
`jobs/x.yaml:7: grid.batch_size[1]: must be a positive integer, got -3`. Unknown keys get a
did-you-mean suggestion. Checkpoints are checked on disk (directory, steps) without loading them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.spec import checks, fits
from orchestrator.spec.grid import (
    AXES,
    AXIS_DEFAULTS,
    MATCH_KEYS,
    Condition,
    canonical,
    count_cells,
    parse_condition,
    too_long,
)
from orchestrator.spec.overrides import apply_overrides
from orchestrator.spec.source import Document, did_you_mean, read_regular_file
from workers.record import MODEL_KEYS  # the model fields a record carries are the spec's

SCHEMA_KEYS = (
    "name",
    "model",
    "models",
    "grid",
    "zip",
    "include",
    "exclude",
    "measure",
    "workers",
    "profile",
)
MEASURE_KEYS = ("warmup", "repeats", "seed", "prompt", "memory_budget_bytes")
WORKERS_KEYS = ("gpus_per_worker", "max_workers", "cpu_workers", "retries", "cell_timeout_s")
ROTARY_LEN_FACTOR = 10  # mirrors engine.config.ROTARY_LEN_FACTOR
MAX_META_BYTES = 16 * 2**20  # a checkpoint's meta_<step>.json is a few KB
_STEP_FILE = re.compile(r"^model_(\d+)\.pt$")


def _require(check: checks.Check, value: Any, name: str) -> None:
    reason = check(value)
    if reason:
        raise ValueError(f"{name}: {reason}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model: a nanochat tag plus where its weights come from.

    `checkpoint` is "random" (random init with `seed`) or the resolved checkpoint directory;
    `step` is resolved to the latest step when the spec leaves it out.
    """

    tag: str
    checkpoint: str = "random"
    step: int | None = None
    vocab_size: int = 4096
    sequence_len: int = 1024
    head_dim: int = 128
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        _require(checks.model_tag, self.tag, "tag")
        _require(checks.positive_int, self.vocab_size, "vocab_size")
        _require(checks.positive_int, self.sequence_len, "sequence_len")
        _require(checks.positive_int, self.head_dim, "head_dim")
        _require(checks.dtype, self.dtype, "dtype")
        _require(checks.any_int, self.seed, "seed")

    @property
    def is_random(self) -> bool:
        return self.checkpoint == "random"

    @property
    def max_len(self) -> int:
        """Largest prompt + new tokens a cell may ask of this model: the engine's rotary length
        (engine.config: UNetConfig.max_len = sequence_len * ROTARY_LEN_FACTOR; a test keeps the
        two in step, since the driver does not import the engine)."""
        return self.sequence_len * ROTARY_LEN_FACTOR

    def identity(self) -> dict:
        """What makes two models the same model (hashed into every cell_id)."""
        ident = {"tag": self.tag, "checkpoint": self.checkpoint, "step": self.step}
        if self.is_random:
            ident.update(
                vocab_size=self.vocab_size,
                sequence_len=self.sequence_len,
                head_dim=self.head_dim,
                seed=self.seed,
            )
        return ident

    def key(self) -> str:
        """A short string naming the model identity, e.g. for grouping cells."""
        if self.is_random:
            return (f"{self.tag}@random(seed={self.seed},vocab={self.vocab_size},"
                    f"seq={self.sequence_len},head_dim={self.head_dim})")
        return f"{self.tag}@{self.checkpoint}#{self.step}"


@dataclass(frozen=True, kw_only=True)
class MeasureSpec:
    """How each cell is measured (passed through to the engine's bench)."""

    warmup: int = 1
    repeats: int = 3
    seed: int = 42
    prompt: str | None = None
    memory_budget_bytes: int | None = None  # simulate a device memory limit (OOM before running)

    def __post_init__(self) -> None:
        _require(checks.optional_positive_int, self.memory_budget_bytes, "memory_budget_bytes")
        _require(checks.positive_int, self.warmup, "warmup")
        _require(checks.positive_int, self.repeats, "repeats")
        _require(checks.seed, self.seed, "seed")
        _require(checks.prompt, self.prompt, "prompt")


@dataclass(frozen=True, kw_only=True)
class WorkersSpec:
    """How many Ray actors, what they request, and how failures are retried."""

    gpus_per_worker: float = 1
    max_workers: int | None = None
    cpu_workers: int = 1
    retries: int = 2
    cell_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        _require(checks.positive_number, self.gpus_per_worker, "gpus_per_worker")
        _require(checks.optional_positive_int, self.max_workers, "max_workers")
        _require(checks.positive_int, self.cpu_workers, "cpu_workers")
        _require(checks.nonneg_int, self.retries, "retries")
        _require(checks.positive_number, self.cell_timeout_s, "cell_timeout_s")


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    """Axes (product), zip groups (varied together), extra cells, and partial cells to drop."""

    axes: dict = field(default_factory=dict)  # axis -> tuple of values
    zip: tuple = ()  # of dict axis -> tuple of values (equal lengths)
    include: tuple = ()  # of dict axis -> value
    exclude: tuple = ()  # of dict axis -> Condition


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A whole validated job."""

    name: str
    models: tuple
    grid: GridSpec
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    workers: WorkersSpec = field(default_factory=WorkersSpec)
    profile: bool = False
    source: str = "<spec>"

    def __post_init__(self) -> None:
        _require(checks.job_name, self.name, "name")
        if not self.models:
            raise ValueError("models: at least one model is required")


# ---------------------------------------------------------------------------------------------
# parsing


def load_job_spec(
    filename: str, overrides: list[str] | None = None, *, worker_memory_bytes: int | None = None
) -> JobSpec:
    """Read, override and validate a job spec file; raises SpecError with file:line: path.

    `worker_memory_bytes`: the memory of the CPU workers that will run the cells (the submit of
    a local run without GPUs passes this machine's RAM); a cell whose estimate exceeds it is
    refused (see orchestrator/spec/memory.py). Host-side sizes are always checked.
    """
    doc = Document.from_file(filename)
    apply_overrides(doc, list(overrides or []))
    default_name = Path(filename).stem
    return parse_job_spec(doc, default_name=default_name, worker_memory_bytes=worker_memory_bytes)


def parse_job_spec(
    doc: Document, default_name: str = "job", *, worker_memory_bytes: int | None = None
) -> JobSpec:
    """Validate a loaded Document into a JobSpec (see load_job_spec)."""
    data = doc.data
    if not isinstance(data, dict):
        raise doc.error((), f"the spec must be a mapping of keys, got {type(data).__name__}")
    _check_keys(doc, (), data, SCHEMA_KEYS)
    name = data.get("name", default_name)
    _check(doc, ("name",), checks.job_name, name)
    models = _parse_models(doc, data)
    grid = _parse_grid(doc, data)
    measure = MeasureSpec(
        **_parse_section(
            doc,
            data,
            "measure",
            {
                "warmup": checks.positive_int,
                "repeats": checks.positive_int,
                "seed": checks.seed,
                "prompt": checks.prompt,
                "memory_budget_bytes": checks.optional_positive_int,
            },
        )
    )
    workers = WorkersSpec(
        **_parse_section(
            doc,
            data,
            "workers",
            {
                "gpus_per_worker": checks.positive_number,
                "max_workers": checks.optional_positive_int,
                "cpu_workers": checks.positive_int,
                "retries": checks.nonneg_int,
                "cell_timeout_s": checks.positive_number,
            },
        )
    )
    profile = data.get("profile", False)
    _check(doc, ("profile",), checks.boolean, profile)
    job = JobSpec(
        name=name,
        models=models,
        grid=grid,
        measure=measure,
        workers=workers,
        profile=profile,
        source=doc.name,
    )
    _check_lengths(doc, job)
    _check_prompt_ids(doc, job)
    fits.check_memory(doc, job, worker_memory_bytes)
    return job


def _check_prompt_ids(doc: Document, job: JobSpec) -> None:
    """A random model encodes the prompt with the byte tokenizer: every UTF-8 byte must be an id
    of its vocabulary (the engine refuses the cell otherwise)."""
    if job.measure.prompt is None:
        return
    top = max(job.measure.prompt.encode("utf-8"))
    for model in job.models:
        if model.is_random and top >= model.vocab_size:
            raise doc.error(
                ("measure", "prompt"),
                f"encodes (UTF-8 bytes: random models use the byte tokenizer) to ids up to {top} "
                f"but model {model.tag} has vocab_size {model.vocab_size}; use vocab_size >= 256",
            )


def _check_lengths(doc: Document, job: JobSpec) -> None:
    """Refuse a cell whose prompt + new tokens exceed its model's limit (naming the cell), and a
    grid that `exclude` empties. Both are counted per axis, never by expanding the grid."""
    _check_partial_models(doc, job)
    if job.grid.exclude and count_cells(job) == 0:
        raise doc.error(("exclude",), "removes every cell of the job; nothing would run")
    n_long, cell = too_long(job)
    if cell is None:
        return
    path: tuple = ("grid",)
    for candidate in (("grid", "prompt_len"), ("grid", "max_tokens"), ("zip",), ("include",)):
        if candidate in doc.origins:
            path = candidate
            break
    more = f" (and {n_long - 1:,} more)" if n_long > 1 else ""
    raise doc.error(
        path,
        f"cell '{cell.label()}' needs prompt_len + max_tokens = "
        f"{cell.total_len} tokens but model {cell.model.tag} allows at most "
        f"{cell.model.max_len} ({ROTARY_LEN_FACTOR} x sequence_len){more}",
    )


def _check_partial_models(doc: Document, job: JobSpec) -> None:
    """An include/exclude entry naming a model the job does not have would be dropped silently."""
    tags = [m.tag for m in job.models]
    for key, entries in (("include", job.grid.include), ("exclude", job.grid.exclude)):
        for i, entry in enumerate(entries):
            named = entry.get("model")
            if isinstance(named, Condition):  # exclude: a value, a list or "== tag"
                if named.op not in ("==", "in") or any(named.matches(t) for t in tags):
                    continue
                named = named.value
            elif named is None or named in tags:
                continue
            path = (key,) if isinstance(doc.data.get(key), dict) else (key, i)
            raise doc.error(
                path + ("model",),
                f"no model {named!r} in this job (its models: {', '.join(tags)})",
            )


def _check(doc: Document, path: tuple, check: checks.Check, value: Any) -> None:
    reason = check(value)
    if reason:
        raise doc.error(path, reason)


def _check_keys(doc: Document, path: tuple, mapping: dict, allowed: tuple) -> None:
    for key in mapping:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            if not hint:
                hint = f" (allowed: {', '.join(allowed)})"
            raise doc.error(path + (key,), f"unknown key{hint}")


def _mapping(doc: Document, path: tuple, value: Any, what: str = "a mapping") -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise doc.error(path, f"must be {what}, got {type(value).__name__} {checks.show(value)}")
    return value


def _parse_section(doc: Document, data: dict, key: str, fields: dict) -> dict:
    section = _mapping(doc, (key,), data.get(key))
    _check_keys(doc, (key,), section, tuple(fields))
    for name, check in fields.items():
        if name in section:
            _check(doc, (key, name), check, section[name])
    return dict(section)


def _parse_models(doc: Document, data: dict) -> tuple:
    if "model" in data and "models" in data:
        raise doc.error(("models",), "give either 'model' or 'models', not both")
    if "models" in data:
        items = data["models"]
        if not isinstance(items, list) or not items:
            raise doc.error(("models",), "must be a non-empty list of model mappings")
        entries = [(("models", i), item) for i, item in enumerate(items)]
    elif "model" in data:
        entries = [(("model",), data["model"])]
    else:
        raise doc.error(
            (), "missing 'model' (e.g. model: {tag: 'd[2,4]-h[128,256]', checkpoint: random})"
        )
    models = tuple(_parse_model(doc, path, item) for path, item in entries)
    seen: dict = {}
    for (path, _), model in zip(entries, models):
        if model.key() in seen:
            raise doc.error(path, f"duplicate model (same as {seen[model.key()]})")
        seen[model.key()] = ".".join(str(p) for p in path)
    return models


def _parse_model(doc: Document, path: tuple, raw: Any) -> ModelSpec:
    raw = _mapping(doc, path, raw)
    _check_keys(doc, path, raw, MODEL_KEYS)
    if "tag" not in raw:
        raise doc.error(path, "missing 'tag' (e.g. tag: 'd[2,4]-h[128,256]')")
    for key, check in (
        ("tag", checks.model_tag),
        ("step", checks.optional_positive_int),
        ("vocab_size", checks.positive_int),
        ("head_dim", checks.positive_int),
        ("sequence_len", checks.positive_int),
        ("dtype", checks.dtype),
        ("seed", checks.any_int),
    ):
        if key in raw:
            _check(doc, path + (key,), check, raw[key])
    tag = raw["tag"].strip()
    depths, widths = checks.parse_tag(tag)
    checkpoint = raw.get("checkpoint", "random")
    if not isinstance(checkpoint, str) or not checkpoint:
        raise doc.error(
            path + ("checkpoint",),
            f"must be 'random', 'auto' or a directory path, got {checks.show(checkpoint)}",
        )
    common = {"tag": tag, "dtype": raw.get("dtype", "float32")}
    if checkpoint == "random":
        if "step" in raw and raw["step"] is not None:
            raise doc.error(path + ("step",), "only applies to checkpoints, not 'random'")
        head_dim = raw.get("head_dim", 128)
        if head_dim % 2:
            raise doc.error(
                path + ("head_dim",), f"must be even (rotary embeddings), got {head_dim}"
            )
        for i, width in enumerate(widths):
            if width % head_dim:
                raise doc.error(
                    path + ("head_dim",),
                    f"head_dim {head_dim} does not divide stage {i} width {width} of tag {tag}",
                )
        return ModelSpec(
            **common,
            checkpoint="random",
            vocab_size=raw.get("vocab_size", 4096),
            sequence_len=raw.get("sequence_len", 1024),
            head_dim=head_dim,
            seed=raw.get("seed", 0),
        )
    directory = _resolve_checkpoint_dir(doc, path + ("checkpoint",), checkpoint, tag)
    for key in ("vocab_size", "sequence_len", "head_dim", "seed"):
        if key in raw:
            raise doc.error(
                path + (key,), "only applies to checkpoint: random (a checkpoint brings its own)"
            )
    step = _resolve_step(doc, path, directory, raw.get("step"))
    meta = _read_meta(doc, path, directory, step)
    cfg = meta.get("model_config") or {}
    try:
        n_embd, n_head = list(cfg["n_embd"]), list(cfg["n_head"])
        if list(cfg["n_layer"]) != depths or n_embd != widths:
            raise doc.error(
                path + ("tag",),
                f"tag {tag} does not match the checkpoint's "
                f"n_layer={cfg['n_layer']} n_embd={cfg['n_embd']}",
            )
        return ModelSpec(
            **common,
            checkpoint=str(directory),
            step=step,
            vocab_size=int(cfg["vocab_size"]),
            sequence_len=int(cfg["sequence_len"]),
            head_dim=int(n_embd[0] // n_head[0]),
        )
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
        raise doc.error(
            path + ("checkpoint",),
            f"meta_{step:06d}.json in {directory} has no usable model_config "
            f"({type(e).__name__}: {e})",
        ) from None


def _resolve_checkpoint_dir(doc: Document, path: tuple, checkpoint: str, tag: str) -> Path:
    if checkpoint == "auto":
        base = os.environ.get("NANOCHAT_BASE_DIR")
        if not base:
            raise doc.error(
                path,
                "checkpoint: auto needs $NANOCHAT_BASE_DIR to be set (or give a path, or 'random')",
            )
        candidates = [Path(base) / "base_checkpoints" / tag]
    else:
        given = Path(os.path.expanduser(checkpoint))
        # a base dir holding base_checkpoints/<tag>, or the tag directory itself
        candidates = [given / "base_checkpoints" / tag, given]
    for candidate in candidates:
        if candidate.is_dir() and _steps(candidate):
            return candidate.resolve()
    last = candidates[-1]
    if not last.exists():
        raise doc.error(path, f"checkpoint directory {str(last)!r} does not exist")
    raise doc.error(path, f"checkpoint directory {str(last)!r} has no model_<step>.pt files")


def _steps(directory: Path) -> list[int]:
    try:  # os.listdir, never glob: tags contain literal brackets
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _STEP_FILE.match(n)))


def _resolve_step(doc: Document, path: tuple, directory: Path, step: int | None) -> int:
    steps = _steps(directory)
    if step is None:
        return steps[-1]
    if step not in steps:
        shown = ", ".join(str(s) for s in steps[-10:])
        raise doc.error(
            path + ("step",), f"step {step} not found in {directory} (available: {shown})"
        )
    return step


def _read_meta(doc: Document, path: tuple, directory: Path, step: int) -> dict:
    meta_path = directory / f"meta_{step:06d}.json"
    try:  # a checkpoint directory may come from anyone: bounded, regular files only
        meta = json.loads(read_regular_file(meta_path, MAX_META_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise doc.error(path + ("checkpoint",), f"{meta_path} is missing") from None
    except (OSError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise doc.error(path + ("checkpoint",), f"cannot read {meta_path}: {reason}") from None
    if not isinstance(meta, dict):
        raise doc.error(path + ("checkpoint",), f"{meta_path} is not a JSON object")
    return meta


def _parse_grid(doc: Document, data: dict) -> GridSpec:
    raw = _mapping(doc, ("grid",), data.get("grid"))
    axes: dict = {}
    for axis, values in raw.items():
        if axis not in AXES:
            raise doc.error(("grid", axis), f"unknown axis{_axis_hint(axis)}")
        axes[axis] = _parse_axis_values(doc, ("grid", axis), axis, values)
    zip_raw = data.get("zip") or []
    if isinstance(zip_raw, dict):
        zip_raw = [zip_raw]
        zip_paths = [("zip",)]
    elif isinstance(zip_raw, list):
        zip_paths = [("zip", i) for i in range(len(zip_raw))]
    else:
        raise doc.error(("zip",), "must be a list of mappings of axis -> equal-length lists")
    groups = []
    used: dict = {axis: "grid" for axis in axes}
    for zpath, group in zip(zip_paths, zip_raw):
        group = _mapping(doc, zpath, group, "a mapping of axis -> list")
        if len(group) < 1:
            raise doc.error(zpath, "empty zip group")
        parsed = {}
        for axis, values in group.items():
            if axis not in AXES:
                raise doc.error(zpath + (axis,), f"unknown axis{_axis_hint(axis)}")
            if axis in used:
                raise doc.error(zpath + (axis,), f"axis also given in {used[axis]}")
            used[axis] = "zip"
            parsed[axis] = _parse_axis_values(doc, zpath + (axis,), axis, values)
        lengths = {axis: len(v) for axis, v in parsed.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{a}: {n}" for a, n in lengths.items())
            raise doc.error(zpath, f"zip lists must have equal lengths, got {shown}")
        groups.append(parsed)
    include = tuple(_parse_partial_cells(doc, data, "include"))
    exclude = tuple(_parse_partial_cells(doc, data, "exclude"))
    return GridSpec(axes=axes, zip=tuple(groups), include=include, exclude=exclude)


def _axis_hint(axis: Any) -> str:
    return did_you_mean(str(axis), AXES) or f" (axes: {', '.join(AXES)})"


def _parse_axis_values(doc: Document, path: tuple, axis: str, values: Any) -> tuple:
    if not isinstance(values, list):
        values = [values]  # a scalar is a one-value axis
    if not values:
        raise doc.error(path, "empty axis; give at least one value")
    for i, value in enumerate(values):
        _check(doc, path + (i,), AXES[axis], value)
    if len({canonical(axis, v) for v in values}) != len(values):  # 0 and 0.0 are one value
        raise doc.error(path, f"repeated values in {checks.show(values)}")
    return tuple(values)


def _parse_partial_cells(doc: Document, data: dict, key: str) -> list:
    raw = data.get(key) or []
    if isinstance(raw, dict):
        raw = [raw]
        paths = [(key,)]
    elif isinstance(raw, list):
        paths = [(key, i) for i in range(len(raw))]
    else:
        raise doc.error((key,), "must be a list of mappings of axis -> value")
    out = []
    for path, item in zip(paths, raw):
        item = _mapping(doc, path, item, "a mapping of axis -> value")
        if not item:
            raise doc.error(path, "empty entry")
        parsed: dict = {}
        for axis, value in item.items():
            if axis not in AXES and axis not in MATCH_KEYS:
                hint = did_you_mean(str(axis), (*AXES, *MATCH_KEYS))
                raise doc.error(path + (axis,), f"no such axis{hint or _axis_hint(axis)}")
            check = AXES.get(axis, checks.model_tag)
            if key == "include":
                _check(doc, path + (axis,), check, value)
                parsed[axis] = value
            else:
                try:
                    parsed[axis] = parse_condition(axis, value, check)
                except ValueError as e:
                    raise doc.error(path + (axis,), str(e)) from None
        out.append(parsed)
    return out


__all__ = [
    "AXIS_DEFAULTS",
    "Condition",
    "GridSpec",
    "JobSpec",
    "MeasureSpec",
    "ModelSpec",
    "WorkersSpec",
    "load_job_spec",
    "parse_job_spec",
]
