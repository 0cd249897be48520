"""Measure one benchmark cell: ``measure_cell(model, BenchSpec(...)) -> BenchResult``.

A cell is one (method, batch size, prompt length, generation length, sampling, device, dtype)
configuration on an already-loaded model. ``measure_cell`` builds the prompt, warms up with the
exact shapes it will measure, then times ``repeats`` full generations: the prefill (TTFT) and every
decode step individually, synchronising the device before each clock read. The metric definitions
are written out in docs/metrics.md.

Methods are dispatched in one place, ``RUNNERS``; a new one is one entry there (plus its name in
``Method`` for type checkers).

>>> spec = BenchSpec(method="cached", batch_size=2, prompt_len=32, max_tokens=16)  # doctest: +SKIP
>>> measure_cell(model, spec).to_dict()["decode_tok_s"]                            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch.profiler import record_function

from engine.cache import kv_cache_bytes
from engine.device import MemoryPeak, PeakMemory, as_device, is_cuda, same_device, synchronize
from engine.engine import UNetEngine
from engine.errors import BenchSpecError
from engine.model import UNet
from engine.naive import naive_generate
from engine.profiler import LatencyStats, TorchProfiler, median
from engine.sampling import check_request, make_generator, sample_next
from engine.static import GraphDecoder
from engine.tokenizer import load_tokenizer

Method = Literal["naive", "cached", "cached_graph"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Activation estimate for memory_budget_bytes: bytes per (token x widest stage width x itemsize).
# A block holds the residual, its norm, q/k/v, the attention output and the 4x-wide MLP hidden
# state and its square (about 14 widths) at its peak; 16 rounds that up.
ACTIVATION_FACTOR = 16
# The raw samples a record keeps: every decode step, and each measured repeat's TTFT and decode
# rate (the record's ttft_ms and decode_tok_s are their medians).
RAW_LISTS = ("decode_step_ms", "ttft_ms_repeats", "decode_tok_s_repeats")


# --- the spec -----------------------------------------------------------------------------------
def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchSpecError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class BenchSpec:
    """One cell. ``warmup`` full generations run unmeasured first (at least 1: the first call of a
    shape is never timed); ``repeats`` are measured; ``profile`` adds one extra traced repeat."""

    method: Method
    batch_size: int
    prompt_len: int
    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    seed: int = 42
    warmup: int = 1
    repeats: int = 3
    prompt_text: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    profile: bool = False

    def __post_init__(self) -> None:
        if self.method not in RUNNERS:
            raise BenchSpecError(
                f"unknown method {self.method!r}: choose one of {', '.join(RUNNERS)}"
            )
        for name in ("batch_size", "prompt_len", "max_tokens", "repeats"):
            _positive_int(name, getattr(self, name))
        _positive_int("warmup", self.warmup)
        temp = self.temperature
        number = isinstance(temp, (int, float)) and not isinstance(temp, bool)
        if not (number and math.isfinite(temp) and temp >= 0):
            raise BenchSpecError(
                f"temperature must be a finite number >= 0 (0 = greedy), got {temp!r}"
            )
        if self.top_k is not None:
            _positive_int("top_k", self.top_k)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BenchSpecError(f"seed must be a non-negative integer, got {self.seed!r}")
        text = self.prompt_text
        if text is not None and (not isinstance(text, str) or not text):
            raise BenchSpecError(f"prompt_text must be a non-empty string or None, got {text!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise BenchSpecError(f"device must be a torch device string like 'cpu', 'cuda' or "
                                 f"'cuda:1', got {self.device!r}") from None
        if self.dtype not in DTYPES:
            raise BenchSpecError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.profile, bool):
            raise BenchSpecError(f"profile must be true or false, got {self.profile!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# --- the result ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """Metrics of one cell (units in the names; None where a metric does not apply)."""

    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float | None
    decode_step_ms_mean: float | None
    decode_step_ms_p50: float | None
    decode_step_ms_p90: float | None
    decode_step_ms_p99: float | None
    decode_step_ms_min: float | None
    decode_step_ms_max: float | None
    decode_step_ms_std: float | None
    decode_step_ms_cv: float | None
    e2e_ms: float
    ttft_ms_cv: float | None
    decode_tok_s_cv: float | None
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    peak_rss_growth_bytes: int | None
    weight_bytes: int
    kv_cache_bytes: int
    tokens_sha256: str
    n_generated: int
    repeats: int
    warmup: int
    device: str
    dtype: str
    torch_version: str
    decode_step_ms: list[float]
    ttft_ms_repeats: list[float]
    decode_tok_s_repeats: list[float]
    trace_json: bytes | None = field(default=None, repr=False)
    # Not part of to_dict(): the generated ids [B][N] of the last repeat, for first-mismatch checks.
    generated_ids: list[list[int]] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Flat record: scalars, the raw lists ``decode_step_ms``, ``ttft_ms_repeats`` and
        ``decode_tok_s_repeats``, and ``trace_json`` (bytes/None)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "generated_ids"}
        for name in RAW_LISTS:
            out[name] = list(getattr(self, name))
        return out


# --- prompts ------------------------------------------------------------------------------------
def _row_seed(seed: int, row: int) -> int:
    return (seed * 1_000_003 + row) % 2**63


def make_prompt(spec: BenchSpec, vocab_size: int, tokenizer=None) -> torch.Tensor:
    """The cell's prompt ids [batch, prompt_len] (CPU, int64); rows differ.

    Synthetic (no ``prompt_text``): row r is uniform ids drawn from a generator seeded by
    (seed, r), so a row does not depend on the batch size or the method. Text: the text encoded
    by ``tokenizer`` (default ``load_tokenizer()``: nanochat's under $NANOCHAT_BASE_DIR, else
    bytes), repeated to length, row r starting r tokens further into the repetition.
    """
    B, T = spec.batch_size, spec.prompt_len
    if spec.prompt_text is None:
        gens = [torch.Generator().manual_seed(_row_seed(spec.seed, r)) for r in range(B)]
        rows = [torch.randint(0, vocab_size, (T,), generator=gen) for gen in gens]
        return torch.stack(rows)
    if tokenizer is None:
        tokenizer = load_tokenizer()  # nanochat's under $NANOCHAT_BASE_DIR, else bytes
    ids = list(tokenizer.encode(spec.prompt_text))
    if not ids:
        raise BenchSpecError(f"prompt_text {spec.prompt_text[:40]!r} encodes to no tokens")
    if max(ids) >= vocab_size:
        raise BenchSpecError(f"prompt_text encodes to ids up to {max(ids)} but the model's vocab "
                             f"has {vocab_size}: use the model's own tokenizer")
    return tile_prompt(ids, B, T)


def tile_prompt(ids: Sequence[int], batch_size: int, length: int) -> torch.Tensor:
    """Repeat/cut ``ids`` to ``length``; row r starts r tokens further into the repetition.

    >>> tile_prompt([1, 2, 3], 2, 4).tolist()
    [[1, 2, 3, 1], [2, 3, 1, 2]]
    """
    ids = [int(i) for i in ids]
    if not ids:
        raise BenchSpecError("cannot build a prompt from an empty list of ids")
    stream = ids * (-(-(length + batch_size) // len(ids)))
    rows = [stream[r % len(ids):][:length] for r in range(batch_size)]
    return torch.tensor(rows, dtype=torch.long)


def tokens_sha256(tokens: torch.Tensor) -> str:
    """SHA-256 of generated ids [B, N] as little-endian int64 bytes, row-major."""
    data = tokens.detach().to("cpu", torch.int64).contiguous().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()


TokenRows = Sequence[Sequence[int]] | torch.Tensor


def first_mismatch(a: TokenRows, b: TokenRows) -> int | None:
    """First generated-token index (column) where any row of ``a`` and ``b`` differ; None if equal.

    >>> first_mismatch([[1, 2, 3]], [[1, 2, 4]])
    2
    """
    a = a.tolist() if isinstance(a, torch.Tensor) else [list(r) for r in a]
    b = b.tolist() if isinstance(b, torch.Tensor) else [list(r) for r in b]
    if len(a) != len(b):
        return 0
    n = max((max(len(x), len(y)) for x, y in zip(a, b)), default=0)
    for i in range(n):
        if any(i >= len(x) or i >= len(y) or x[i] != y[i] for x, y in zip(a, b)):
            return i
    return None


# --- memory estimate (test double for OOM) ------------------------------------------------------
def estimate_cell_bytes(model: UNet, spec: BenchSpec) -> dict[str, int]:
    """Rough device bytes a cell needs: weights + KV cache (cached methods) + activations.

    Activations: ``batch x tokens x max(n_embd) x itemsize x ACTIVATION_FACTOR``, where tokens is
    the longest sequence one forward sees: the prompt for cached methods (the prefill), the prompt
    plus generation for naive (its last full forward).
    """
    cfg, itemsize = model.config, torch.empty((), dtype=spec.torch_dtype).element_size()
    cached = RUNNERS[spec.method].kv_cache
    total_len = spec.prompt_len + spec.max_tokens
    kv = kv_cache_bytes(cfg, spec.batch_size, total_len, spec.torch_dtype) if cached else 0
    tokens = spec.prompt_len if cached else total_len
    act = spec.batch_size * tokens * max(cfg.n_embd) * itemsize * ACTIVATION_FACTOR
    weights = model.weight_bytes()
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": act,
            "total_bytes": weights + kv + act}


def check_memory_budget(model: UNet, spec: BenchSpec, budget_bytes: int) -> None:
    """Raise ``torch.cuda.OutOfMemoryError`` when the estimate exceeds ``budget_bytes``."""
    est = estimate_cell_bytes(model, spec)
    if est["total_bytes"] > budget_bytes:
        mib = {k: v / 2**20 for k, v in est.items()}
        raise torch.cuda.OutOfMemoryError(
            f"out of memory (simulated): cell {spec.method} batch {spec.batch_size} prompt "
            f"{spec.prompt_len} gen {spec.max_tokens} needs an estimated "
            f"{est['total_bytes']} bytes "
            f"({mib['total_bytes']:.1f} MiB = weights {mib['weight_bytes']:.1f} + KV cache "
            f"{mib['kv_cache_bytes']:.1f} + activations {mib['activation_bytes']:.1f}) but the "
            f"memory budget is {budget_bytes} bytes ({budget_bytes / 2**20:.1f} MiB)"
        )


# --- one timed generation -----------------------------------------------------------------------
@dataclass(frozen=True)
class Generation:
    """One timed run: TTFT, each decode step, end to end (ms), and the ids [B, N] on the CPU."""

    ttft_ms: float
    step_ms: list[float]
    e2e_ms: float
    tokens: torch.Tensor


@torch.inference_mode()
def timed_generation(
    device: torch.device, first: Callable[[], torch.Tensor],
    step: Callable[[torch.Tensor], torch.Tensor], n_tokens: int,
) -> Generation:
    """Time ``first()`` (prefill + sampling -> ids [B]; TTFT ends with the ids on the host), then
    ``n_tokens - 1`` calls of ``step(previous ids) -> ids``, each ending with a synchronize."""
    synchronize(device)
    start = time.perf_counter()
    ids = first()
    columns = [ids.cpu()]
    ttft = time.perf_counter() - start
    step_ms = []
    for _ in range(n_tokens - 1):
        t0 = time.perf_counter()
        ids = step(ids)
        synchronize(device)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        columns.append(ids)
    e2e = time.perf_counter() - start
    tokens = torch.stack([c.cpu() for c in columns], dim=1)
    return Generation(ttft * 1e3, step_ms, e2e * 1e3, tokens)


def _run_naive(model: UNet, spec: BenchSpec, ids: torch.Tensor, engine: Any) -> Generation:
    steps = naive_generate(model, ids, spec.max_tokens, spec.temperature, spec.top_k, spec.seed)
    return timed_generation(ids.device, lambda: next(steps), lambda _prev: next(steps),
                            spec.max_tokens)


def _run_cached(model: UNet, spec: BenchSpec, ids: torch.Tensor, engine: Any) -> Generation:
    engine = engine if engine is not None else UNetEngine(model)
    generator = make_generator(spec.seed, ids.device) if spec.temperature > 0 else None
    state = None

    def sample(logits: torch.Tensor) -> torch.Tensor:
        with record_function("sampling"):
            return sample_next(logits, spec.temperature, spec.top_k, generator)

    def first() -> torch.Tensor:
        nonlocal state
        check_request(engine.config, ids.size(1), spec.max_tokens, ids)  # as naive_generate does
        logits, state = engine.prefill(ids, max_len=ids.size(1) + spec.max_tokens)
        return sample(logits)

    return timed_generation(ids.device, first, lambda prev: sample(engine.decode(state, prev)),
                            spec.max_tokens)


def _run_cached_graph(model: UNet, spec: BenchSpec, ids: torch.Tensor, engine: Any) -> Generation:
    """The static-shape path: CUDA graphs per decode phase on a GPU, the same code eagerly on CPU.
    The decoder (and its graphs) persists on the engine across warmup and repeats."""
    engine = engine if engine is not None else UNetEngine(model)
    decoder = GraphDecoder.for_engine(engine, ids.size(0), ids.size(1) + spec.max_tokens)
    generator = make_generator(spec.seed, ids.device) if spec.temperature > 0 else None

    def sample(logits: torch.Tensor) -> torch.Tensor:
        with record_function("sampling"):
            return sample_next(logits, spec.temperature, spec.top_k, generator)

    def first() -> torch.Tensor:
        check_request(engine.config, ids.size(1), spec.max_tokens, ids)
        return sample(decoder.prefill(ids))

    return timed_generation(ids.device, first, lambda prev: sample(decoder.decode(prev)),
                            spec.max_tokens)


@dataclass(frozen=True)
class MethodRunner:
    """How to run one method: ``run(model, spec, prompt ids on device, engine or None)``;
    ``kv_cache`` says whether the method holds a KV cache (its analytic bytes are reported)."""

    run: Callable[[UNet, BenchSpec, torch.Tensor, Any], Generation]
    kv_cache: bool


RUNNERS: dict[str, MethodRunner] = {
    "naive": MethodRunner(_run_naive, kv_cache=False),
    "cached": MethodRunner(_run_cached, kv_cache=True),
    "cached_graph": MethodRunner(_run_cached_graph, kv_cache=True),
}


# --- the cell -----------------------------------------------------------------------------------
def _check_model(model: UNet, spec: BenchSpec) -> torch.device:
    params = list(model.parameters())
    device, dtypes = params[0].device, {p.dtype for p in params}
    if not same_device(device, spec.device):
        raise BenchSpecError(f"the model is on {device} but spec.device={spec.device!r}: load or "
                             f"move it there first (model.to({spec.device!r})) or fix the spec")
    if dtypes != {spec.torch_dtype}:
        have = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise BenchSpecError(f"the model's weights are {have} but spec.dtype={spec.dtype!r}: "
                             f"convert it first (model.to(torch.{spec.dtype})) or fix the spec")
    return device


def _trace_one_repeat(runner: MethodRunner, model, spec, ids, engine) -> bytes:
    profiler = TorchProfiler("cuda" if is_cuda(ids.device) else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        with profiler.profile(output_path=path):
            runner.run(model, spec, ids, engine)
        return path.read_bytes()


def measure_cell(
    model: UNet, spec: BenchSpec, tokenizer=None, *, engine: Any = None,
    prompt_ids: torch.Tensor | None = None, memory_budget_bytes: int | None = None,
) -> BenchResult:
    """Measure one cell on ``model`` (already on ``spec.device`` in ``spec.dtype``).

    - ``tokenizer``: encodes ``spec.prompt_text`` (default ``load_tokenizer()``);
    - ``engine``: the object cached methods call ``prefill``/``decode`` on (default
      ``UNetEngine(model)``; tests pass doubles); naive ignores it;
    - ``prompt_ids``: explicit prompt [batch_size, prompt_len] instead of the spec's;
    - ``memory_budget_bytes``: raise ``torch.cuda.OutOfMemoryError`` before running anything when
      ``estimate_cell_bytes`` exceeds it (simulates an OOM on machines without a GPU).
    """
    runner = RUNNERS[spec.method]
    if runner.kv_cache and engine is None:
        engine = UNetEngine(model)  # one engine for warmup and repeats (graphs, decode copies)
    device = _check_model(model, spec)
    cfg = model.config
    if prompt_ids is None:
        prompt_ids = make_prompt(spec, cfg.vocab_size, tokenizer)
    elif tuple(prompt_ids.shape) != (spec.batch_size, spec.prompt_len):
        raise BenchSpecError(f"prompt_ids has shape {tuple(prompt_ids.shape)} but the spec says "
                             f"[batch_size={spec.batch_size}, prompt_len={spec.prompt_len}]")
    check_request(cfg, spec.prompt_len, spec.max_tokens, prompt_ids)
    if memory_budget_bytes is not None:
        check_memory_budget(model, spec, memory_budget_bytes)
    ids = prompt_ids.to(device)
    with PeakMemory(device) as memory:
        for _ in range(spec.warmup):
            runner.run(model, spec, ids, engine)
        runs = [runner.run(model, spec, ids, engine) for _ in range(spec.repeats)]
    trace = _trace_one_repeat(runner, model, spec, ids, engine) if spec.profile else None
    return _summarise(model, spec, runner, runs, memory.result, trace)


def _summarise(model: UNet, spec: BenchSpec, runner: MethodRunner, runs: list[Generation],
               memory: MemoryPeak, trace: bytes | None) -> BenchResult:
    B, T, N = spec.batch_size, spec.prompt_len, spec.max_tokens
    ttfts = [r.ttft_ms for r in runs]
    steps = [ms for r in runs for ms in r.step_ms]
    rates = [B * (N - 1) / (sum(r.step_ms) / 1e3) for r in runs if r.step_ms and sum(r.step_ms) > 0]
    ttft = median(ttfts)
    last = runs[-1].tokens
    kv = kv_cache_bytes(model.config, B, T + N, spec.torch_dtype) if runner.kv_cache else 0
    return BenchResult(
        ttft_ms=ttft,
        prefill_tok_s=B * T / (ttft / 1e3),
        decode_tok_s=median(rates),
        **LatencyStats.from_values(steps).columns("decode_step_ms"),
        e2e_ms=median([r.e2e_ms for r in runs]),
        ttft_ms_cv=LatencyStats.from_values(ttfts).cv,
        decode_tok_s_cv=LatencyStats.from_values(rates).cv,
        peak_allocated_bytes=memory.peak_allocated_bytes,
        peak_reserved_bytes=memory.peak_reserved_bytes,
        peak_rss_growth_bytes=memory.peak_rss_growth_bytes,
        weight_bytes=model.weight_bytes(),
        kv_cache_bytes=kv,
        tokens_sha256=tokens_sha256(last),
        n_generated=N,
        repeats=spec.repeats,
        warmup=spec.warmup,
        device=str(as_device(spec.device)),
        dtype=spec.dtype,
        torch_version=torch.__version__,
        decode_step_ms=steps,
        ttft_ms_repeats=ttfts,
        decode_tok_s_repeats=rates,
        trace_json=trace,
        generated_ids=last.tolist(),
    )
