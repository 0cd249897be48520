"""Grid expansion: a job's axes, zip groups, include and exclude become a list of cells.

- axes (`grid:`) are combined as a Cartesian product; an axis left out takes its default;
- each `zip:` group varies its axes together (equal-length lists);
- `exclude:` entries drop product cells matching every key of the entry (a value, a list of
  values, or a comparison such as ">= 1024");
- `include:` entries add cells; axes they leave out take the first value of that axis.

Every cell has a `cell_id`: a hash of its canonical parameters and its model's identity, stable
across key order and runs, used to resume.

>>> c = parse_condition("prompt_len", ">= 1024", lambda v: None)
>>> c.matches(2048), c.matches(16)
(True, False)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.spec import checks

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.spec.job import JobSpec, ModelSpec

# axis -> value check; the order is the product order (method varies fastest)
AXES: dict[str, checks.Check] = {
    "batch_size": checks.positive_int,
    "prompt_len": checks.positive_int,
    "max_tokens": checks.positive_int,
    "temperature": checks.temperature,
    "top_k": checks.optional_positive_int,
    "dtype": checks.dtype,
    "method": checks.method,
}
AXIS_DEFAULTS: dict[str, tuple] = {
    "batch_size": (1,),
    "prompt_len": (32,),
    "max_tokens": (32,),
    "temperature": (0.0,),
    "top_k": (None,),
    "dtype": (None,),  # None: the model's dtype
    "method": ("naive", "cached"),
}
MATCH_KEYS = ("model",)  # include/exclude may also name a model by tag
NUMERIC_AXES = ("batch_size", "prompt_len", "max_tokens", "temperature", "top_k")
CELL_ID_CHARS = 16

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}
_COMPARISON = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(\S.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One exclude test on an axis: `op` applied as `cell_value op value` ("in": membership)."""

    op: str
    value: Any

    def matches(self, actual: Any) -> bool:
        if self.op == "in":
            return any(_same(actual, v) for v in self.value)
        if self.op in ("==", "!="):
            same = _same(actual, self.value)
            return same if self.op == "==" else not same
        if actual is None or isinstance(actual, str):
            return False
        return _OPS[self.op](actual, self.value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def parse_condition(axis: str, raw: Any, check: checks.Check) -> Condition:
    """A value, a list of values, or a "<op> number" string -> Condition (ValueError if bad)."""
    if isinstance(raw, list):
        if not raw:
            raise ValueError("empty list of values")
        for v in raw:
            reason = check(v)
            if reason:
                raise ValueError(reason)
        return Condition("in", tuple(raw))
    if isinstance(raw, str):
        m = _COMPARISON.match(raw)
        if m:
            import yaml

            op, rhs = m.group(1), m.group(2)
            try:
                value = yaml.safe_load(rhs)
            except yaml.YAMLError:
                value = rhs
            if op in ("==", "!="):
                reason = check(value)
                if reason:
                    raise ValueError(reason)
                return Condition(op, value)
            if axis not in NUMERIC_AXES:
                raise ValueError(f"comparison {raw!r} needs a numeric axis; {axis} is not")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"comparison {raw!r} must compare with a number")
            return Condition(op, value)
    reason = check(raw)
    if reason:
        raise ValueError(reason + " (or a comparison such as '>= 1024')")
    return Condition("==", raw)


@dataclass(frozen=True, kw_only=True)
class CellSpec:
    """One benchmark cell: a model, the grid parameters, and the measurement settings."""

    model: ModelSpec
    method: str
    batch_size: int
    prompt_len: int
    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    dtype: str = "float32"
    warmup: int = 1
    repeats: int = 3
    seed: int = 42
    prompt: str | None = None
    profile: bool = False
    memory_budget_bytes: int | None = None

    def params(self) -> dict:
        """Canonical parameters (everything but the model), JSON-ready."""
        return {
            "method": self.method,
            "batch_size": int(self.batch_size),
            "prompt_len": int(self.prompt_len),
            "max_tokens": int(self.max_tokens),
            "temperature": float(self.temperature),
            "top_k": None if self.top_k is None else int(self.top_k),
            "dtype": self.dtype,
            "warmup": int(self.warmup),
            "repeats": int(self.repeats),
            "seed": int(self.seed),
            "prompt": self.prompt,
            "profile": bool(self.profile),
            "memory_budget_bytes": self.memory_budget_bytes,
        }

    @property
    def cell_id(self) -> str:
        return cell_id(self.params(), self.model.identity())

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.max_tokens

    def to_dict(self) -> dict:
        """The plain dict sent to a worker: params, model fields and cell_id."""
        return {**self.params(), "model": asdict(self.model), "cell_id": self.cell_id}

    def label(self) -> str:
        """Short human label, e.g. 'd[2,4]-h[128,256] cached b=1 p=16 n=32'."""
        extra = ""
        if self.temperature:
            extra += f" T={self.temperature:g}"
        if self.top_k is not None:
            extra += f" k={self.top_k}"
        if self.dtype != self.model.dtype:
            extra += f" {self.dtype}"
        return (
            f"{self.model.tag} {self.method} b={self.batch_size} p={self.prompt_len} "
            f"n={self.max_tokens}{extra}"
        )


def cell_id(params: dict, model_identity: dict) -> str:
    """Stable hash of canonical params + model identity (independent of key order)."""
    blob = json.dumps(
        {"params": params, "model": model_identity},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:CELL_ID_CHARS]


def _axis_values(job: JobSpec, model: ModelSpec, axis: str) -> tuple:
    values = job.grid.axes.get(axis, AXIS_DEFAULTS[axis])
    if axis == "dtype":
        values = tuple(model.dtype if v is None else v for v in values)
    return values


def _first_values(job: JobSpec, model: ModelSpec) -> dict:
    first = {axis: _axis_values(job, model, axis)[0] for axis in AXES}
    for group in job.grid.zip:
        first.update({axis: values[0] for axis, values in group.items()})
    return first


def _make_cell(job: JobSpec, model: ModelSpec, params: dict) -> CellSpec:
    m = job.measure
    return CellSpec(
        model=model,
        warmup=m.warmup,
        repeats=m.repeats,
        seed=m.seed,
        prompt=m.prompt,
        memory_budget_bytes=m.memory_budget_bytes,
        profile=job.profile,
        **params,
    )


def _excluded(job: JobSpec, model: ModelSpec, params: dict) -> bool:
    for entry in job.grid.exclude:
        values = {**params, "model": model.tag}
        if all(cond.matches(values[key]) for key, cond in entry.items()):
            return True
    return False


def expand_cells(job: JobSpec) -> list[CellSpec]:
    """All cells of a job, models outermost, deduplicated by cell_id, in a stable order."""
    cells: list[CellSpec] = []
    zipped = {axis for group in job.grid.zip for axis in group}
    for model in job.models:
        factors: list[tuple[int, list[dict]]] = []
        for pos, axis in enumerate(AXES):
            if axis not in zipped:
                factors.append((pos, [{axis: v} for v in _axis_values(job, model, axis)]))
        for group in job.grid.zip:
            pos = min(list(AXES).index(axis) for axis in group)
            n = len(next(iter(group.values())))
            factors.append((pos, [{a: vs[i] for a, vs in group.items()} for i in range(n)]))
        factors.sort(key=lambda f: f[0])
        for combo in itertools.product(*(f[1] for f in factors)):
            params = {k: v for part in combo for k, v in part.items()}
            if params["dtype"] is None:
                params["dtype"] = model.dtype
            if not _excluded(job, model, params):
                cells.append(_make_cell(job, model, params))
        for entry in job.grid.include:
            if "model" in entry and entry["model"] != model.tag:
                continue
            params = _first_values(job, model)
            params.update({k: v for k, v in entry.items() if k in AXES})
            cells.append(_make_cell(job, model, params))
    seen: set = set()
    unique = []
    for cell in cells:
        if cell.cell_id not in seen:
            seen.add(cell.cell_id)
            unique.append(cell)
    return unique


def cells_too_long(cells: list[CellSpec]) -> list[CellSpec]:
    """Cells whose prompt + new tokens exceed their model's limit."""
    return [c for c in cells if c.total_len > c.model.max_len]
