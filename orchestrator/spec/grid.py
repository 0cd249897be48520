"""Grid expansion: a job's axes, zip groups, include and exclude become a stream of cells.

- axes (`grid:`) are combined as a Cartesian product; an axis left out takes its default;
- each `zip:` group varies its axes together (equal-length lists);
- `exclude:` entries drop product cells matching every key of the entry (a value, a list of
  values, or a comparison such as ">= 1024");
- `include:` entries add cells; axes they leave out take the first value of that axis.

The cells are produced lazily (`iter_cells`) and counted without producing them (`count_cells`),
so a grid of millions of cells costs memory only for what is kept of it; `too_long` checks every
cell's length the same way, per axis.

Every cell has a `cell_id`: a hash of its canonical parameters and its model's identity, stable
across key order and runs, used to resume; `iter_cell_ids` streams the ids without building the
cells.

>>> c = parse_condition("prompt_len", ">= 1024", lambda v: None)
>>> c.matches(2048), c.matches(16)
(True, False)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.spec import checks
from orchestrator.spec.product import Product

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
SIZE_AXES = ("batch_size", "prompt_len", "max_tokens")
NUMERIC_AXES = ("batch_size", "prompt_len", "max_tokens", "temperature", "top_k")
CELL_ID_CHARS = 16
DEFAULT_MAX_CELLS = 1_000_000  # submit refuses bigger jobs unless --max-cells raises it

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
            from orchestrator.errors import SpecError
            from orchestrator.spec.source import load_yaml  # bounded: no alias bombs

            op, rhs = m.group(1), m.group(2)
            try:
                value, _ = load_yaml(rhs, "exclude")
            except SpecError:
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
        """`cell_id(self.params(), self.model.identity())`, computed once per cell and from
        cached JSON pieces (a stream of a million cells hashes each of them)."""
        cached = self.__dict__.get("_cell_id")  # frozen: cache through __dict__ directly
        if cached is None:
            blob = f'{{"model":{_model_json(self.model)},"params":{{{_params_json(self.params())}}}}}'
            cached = hashlib.sha256(blob.encode()).hexdigest()[:CELL_ID_CHARS]
            self.__dict__["_cell_id"] = cached
        return cached

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


# The same JSON as `cell_id` writes, assembled from pieces: {"model":...,"params":{...}} with
# keys sorted, so the model's JSON and each parameter value's JSON can be cached.
_SORTED_PARAMS = sorted(CellSpec.__dataclass_fields__.keys() - {"model"})
_JSON_PIECES: dict[tuple, str] = {}


def _params_json(params: dict) -> str:
    """The inside of `{...}` that json.dumps(params, sort_keys=True, ...) writes."""
    pieces, out = _JSON_PIECES, []
    for key in _SORTED_PARAMS:
        value = params[key]
        piece_key = (key, value.__class__, value)  # the type keeps 1, 1.0 and True apart
        try:
            out.append(pieces[piece_key])
        except KeyError:
            piece = f'"{key}":{json.dumps(value, default=str)}'
            if len(pieces) < 100_000:
                pieces[piece_key] = piece
            out.append(piece)
    return ",".join(out)


def _model_json(model: ModelSpec) -> str:
    cached = model.__dict__.get("_identity_json")  # frozen: cache through __dict__ directly
    if cached is None:
        cached = json.dumps(model.identity(), sort_keys=True, separators=(",", ":"), default=str)
        model.__dict__["_identity_json"] = cached
    return cached


class _CellIds:
    """The cell_id of each cell of one model's grid without building the cell: the JSON
    `cell_id` hashes is the model's part, hashed once, then a template (measure settings) with
    one slot per axis, filled from the JSON of each factor row's values, written once per row
    (a stream of 100k cells is hashed at about two microseconds each)."""

    def __init__(self, job: JobSpec, model: ModelSpec, grid: Product):
        fixed = _make_cell(job, model, _first_values(job, model)).params()
        parts = [  # fixed text is escaped for the %-template
            f'"{key}":%s' if key in AXES else f'"{key}":{json.dumps(fixed[key])}'.replace("%", "%%")
            for key in _SORTED_PARAMS
        ]
        self.model_hash = hashlib.sha256(f'{{"model":{_model_json(model)},"params":{{'.encode())
        self.template = ",".join(parts) + "}}"
        self.axes = [key for key in _SORTED_PARAMS if key in AXES]  # the slots, in order
        self.grid = grid
        # walked with the JSON of its rows' values, the grid yields each cell's pieces: one per
        # axis (a flat tuple, factor by factor), picked into slot order by `slot_values`
        flat = [axis for f in grid.factors for axis in f.axes]
        pick = operator.itemgetter(*(flat.index(axis) for axis in self.axes))
        rows = [[tuple(_axis_json(a, v) for a, v in zip(f.axes, row)) for row in f.rows]
                for f in grid.factors]
        if all(len(f.axes) == 1 for f in grid.factors):  # no zip group: one piece per factor
            self.pieces, self.slot_values = [[r for (r,) in f] for f in rows], pick
        else:
            self.pieces = rows
            self.slot_values = lambda cell: pick(tuple(itertools.chain.from_iterable(cell)))

    def of_grid(self) -> Iterator[str]:
        """The id of each kept cell of the grid, in `grid.indices()` order."""
        template, slot_values, model_hash = self.template, self.slot_values, self.model_hash
        for cell in self.grid.walk(self.pieces):
            sha = model_hash.copy()
            sha.update((template % slot_values(cell)).encode())
            yield sha.hexdigest()[:CELL_ID_CHARS]

    def of_params(self, params: dict) -> str:
        """The id of the cell with axis values `params` (every axis)."""
        sha = self.model_hash.copy()
        sha.update((self.template % tuple(_axis_json(a, params[a]) for a in self.axes)).encode())
        return sha.hexdigest()[:CELL_ID_CHARS]


def _axis_json(axis: str, value: Any) -> str:
    return json.dumps(canonical(axis, value), default=str)


def canonical(axis: str, value: Any) -> Any:
    """The form of an axis value that decides cell identity (as `CellSpec.params` writes it):
    temperature 0 and 0.0 are one value.

    >>> canonical("temperature", 0) == canonical("temperature", 0.0), canonical("top_k", None)
    (True, None)
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if axis == "temperature":
        return float(value)
    if axis in NUMERIC_AXES:
        return int(value)
    return value


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


def _product(job: JobSpec, model: ModelSpec, *, largest_first: bool = False) -> Product:
    """The model's grid (axes and zip groups, method fastest) less its `exclude` entries;
    `largest_first` walks the size axes from their largest values (searches for big cells)."""
    zipped = {axis for group in job.grid.zip for axis in group}
    order = list(AXES)
    factors = [
        (order.index(axis), (axis,), [(v,) for v in _axis_values(job, model, axis)])
        for axis in AXES
        if axis not in zipped
    ]
    for group in job.grid.zip:
        axes = tuple(group)
        rows = list(zip(*(group[a] for a in axes)))
        factors.append((min(order.index(a) for a in axes), axes, rows))
    if largest_first:
        factors = [(pos, axes, sorted(rows, key=lambda r, a=axes: -_size(a, r)))
                   for pos, axes, rows in factors]
    factors.sort(key=lambda f: f[0])
    rules = []
    for entry in job.grid.exclude:
        if "model" in entry and not entry["model"].matches(model.tag):
            continue  # an entry for another model
        rules.append({axis: cond.matches for axis, cond in entry.items() if axis != "model"})
    return Product([(axes, rows) for _, axes, rows in factors], rules, key=canonical)


def _included(job: JobSpec, model: ModelSpec, grid: Product) -> list[dict]:
    """The model's `include` cells that are not already kept grid cells, without repeats."""
    out: list[dict] = []
    seen: set = set()
    for entry in job.grid.include:
        if "model" in entry and entry["model"] != model.tag:
            continue
        params = _first_values(job, model)
        params.update({k: v for k, v in entry.items() if k in AXES})
        key = tuple(canonical(a, params[a]) for a in AXES)
        if key not in seen and not grid.contains(params):
            seen.add(key)
            out.append(params)
    return out


def iter_cells(job: JobSpec) -> Iterator[CellSpec]:
    """The job's cells, one at a time, models outermost, then each model's grid in product order
    (method fastest), then its `include` cells; each cell once.

    Nothing is expanded ahead: the grid is walked lazily (see orchestrator/spec/product.py) and
    no set of cell ids is kept, since grid axes hold no repeated values (checked when the spec is
    parsed) and include cells are matched against the grid by membership."""
    return (build() for _, build in iter_cell_ids(job))


def iter_cell_ids(job: JobSpec) -> Iterator[tuple[str, Callable[[], CellSpec]]]:
    """(cell_id, a function that builds the cell) for each cell of `iter_cells`, in its order:
    a cell that is only looked up by its id (resume planning of a finished job) is never built."""
    for model in job.models:
        grid = _product(job, model)
        ids = _CellIds(job, model, grid)
        for cid, index in zip(ids.of_grid(), grid.indices()):
            yield cid, functools.partial(_grid_cell, job, model, grid, index, cid)
        for params in _included(job, model, grid):
            cid = ids.of_params(params)
            yield cid, functools.partial(_cell_with_id, job, model, params, cid)


def _grid_cell(job: JobSpec, model: ModelSpec, grid: Product, index: tuple, cid: str) -> CellSpec:
    return _cell_with_id(job, model, grid.values(index), cid)


def _cell_with_id(job: JobSpec, model: ModelSpec, params: dict, cid: str) -> CellSpec:
    cell = _make_cell(job, model, params)
    cell.__dict__["_cell_id"] = cid  # the same id, computed faster (frozen: through __dict__)
    return cell


def _size(axes: tuple, row: tuple) -> float:
    return sum(v for a, v in zip(axes, row) if a in SIZE_AXES and v is not None)


def largest_cells_first(job: JobSpec) -> Iterator[CellSpec]:
    """Every cell once, for searches: each model's `include` cells, then its grid walked from
    the largest batch size, prompt length and new tokens down (a too-big cell comes early)."""
    for model in job.models:
        grid = _product(job, model, largest_first=True)
        for params in itertools.chain(_included(job, model, grid), grid.cells()):
            yield _make_cell(job, model, params)


def count_cells(job: JobSpec) -> int:
    """How many cells `iter_cells` yields, computed without producing them."""
    total = 0
    for model in job.models:
        grid = _product(job, model)
        total += grid.count() + len(_included(job, model, grid))
    return total


def expand_cells(job: JobSpec) -> list[CellSpec]:
    """All cells of a job as a list (`iter_cells`); for small jobs and tests."""
    return list(iter_cells(job))


def too_long(job: JobSpec) -> tuple[int, CellSpec | None]:
    """Cells whose prompt + new tokens exceed their model's limit: how many, and the first found.

    Counted per model from the prompt_len and max_tokens axes, without expanding the grid."""
    count, first = 0, None
    for model in job.models:
        grid = _product(job, model)
        n, params = grid.sum_over("prompt_len", "max_tokens", model.max_len)
        count += n
        if first is None and params is not None:
            first = _make_cell(job, model, params)
        for params in _included(job, model, grid):
            if params["prompt_len"] + params["max_tokens"] > model.max_len:
                count += 1
                if first is None:
                    first = _make_cell(job, model, params)
    return count, first


def cells_too_long(cells: Iterable[CellSpec]) -> list[CellSpec]:
    """Cells whose prompt + new tokens exceed their model's limit."""
    return [c for c in cells if c.total_len > c.model.max_len]


def cell_limit_error(count: int, max_cells: int) -> str | None:
    """Why a job of `count` cells is refused under the limit `max_cells`, or None.

    >>> cell_limit_error(2_000_000, 1_000_000)
    'the job has 2,000,000 cells, more than the limit of 1,000,000; raise it with --max-cells 2000000'
    """
    if count <= max_cells:
        return None
    return (
        f"the job has {count:,} cells, more than the limit of {max_cells:,}; raise it with "
        f"--max-cells {count}"
    )
