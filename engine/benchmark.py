"""The seed's benchmarking API, built on ``engine.bench.measure_cell``.

``InferenceBenchmark`` runs naive vs cached generation on one prompt (``compare_methods``), or
sweeps prompt lengths and batch sizes; every number comes from ``measure_cell``, so it means what
docs/metrics.md says. Results serialise to JSON (``to_json``).

>>> bench = InferenceBenchmark(model, tokenizer, device="cpu")                    # doctest: +SKIP
>>> comparison = bench.compare_methods([1, 2, 3, 4], max_tokens=16)              # doctest: +SKIP
>>> comparison.print()                                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tabulate import tabulate

from engine.bench import (
    BenchResult,
    BenchSpec,
    first_mismatch,
    make_prompt,
    measure_cell,
    tile_prompt,
)
from engine.engine import UNetEngine
from engine.model import UNet
from engine.sampling import as_prompt_batch


@dataclass(frozen=True)
class BenchmarkResult:
    """One measured run: the cell's spec and its metrics."""

    spec: BenchSpec
    metrics: BenchResult

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def tokens(self) -> list[list[int]]:
        """Generated ids [batch][max_tokens] of the last repeat."""
        return self.metrics.generated_ids

    @property
    def ttft_ms(self) -> float:
        return self.metrics.ttft_ms

    @property
    def decode_tok_s(self) -> float | None:
        return self.metrics.decode_tok_s

    @property
    def e2e_ms(self) -> float:
        return self.metrics.e2e_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: spec fields, then metrics (the trace's bytes replaced by its size)."""
        out = asdict(self.spec)
        metrics = self.metrics.to_dict()
        trace = metrics.pop("trace_json")
        out.update(metrics)
        out["trace_json_bytes"] = None if trace is None else len(trace)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


@dataclass(frozen=True)
class ComparisonResult:
    """Naive vs cached on one prompt: both results and whether they generated the same ids.

    ``first_mismatch`` is the index (0 = the token sampled after the prefill) of the first
    generated token where any row differs; None when all match.
    """

    naive: BenchmarkResult
    cached: BenchmarkResult
    tokens_match: bool
    first_mismatch: int | None

    @classmethod
    def from_results(cls, naive: BenchmarkResult, cached: BenchmarkResult) -> ComparisonResult:
        index = first_mismatch(naive.tokens, cached.tokens)
        return cls(naive, cached, index is None, index)

    @property
    def speedup(self) -> float:
        """End-to-end generation time, naive over cached."""
        return self.naive.metrics.e2e_ms / self.cached.metrics.e2e_ms

    @property
    def decode_speedup(self) -> float | None:
        """Decode tokens/s, cached over naive (None with a single generated token)."""
        n, c = self.naive.metrics.decode_tok_s, self.cached.metrics.decode_tok_s
        return c / n if n and c else None

    def table(self) -> str:
        n, c = self.naive.metrics, self.cached.metrics

        def ratio(a, b):
            return a / b if a is not None and b else None

        rows = [
            ["TTFT (ms)", n.ttft_ms, c.ttft_ms, ratio(n.ttft_ms, c.ttft_ms)],
            ["prefill tok/s", n.prefill_tok_s, c.prefill_tok_s,
             ratio(c.prefill_tok_s, n.prefill_tok_s)],
            ["decode tok/s", n.decode_tok_s, c.decode_tok_s, self.decode_speedup],
            ["decode step p50 (ms)", n.decode_step_ms_p50, c.decode_step_ms_p50,
             ratio(n.decode_step_ms_p50, c.decode_step_ms_p50)],
            ["decode step p99 (ms)", n.decode_step_ms_p99, c.decode_step_ms_p99,
             ratio(n.decode_step_ms_p99, c.decode_step_ms_p99)],
            ["end to end (ms)", n.e2e_ms, c.e2e_ms, self.speedup],
            ["KV cache (MiB)", n.kv_cache_bytes / 2**20, c.kv_cache_bytes / 2**20, None],
            ["tokens sha256", n.tokens_sha256[:12], c.tokens_sha256[:12], None],
        ]
        rows = [[_cell(v) for v in row] for row in rows]
        body = tabulate(rows, headers=["", "naive", "cached", "gain"], disable_numparse=True,
                        colalign=("left", "right", "right", "right"))
        verdict = ("tokens match" if self.tokens_match
                   else f"TOKENS DIFFER from generated token {self.first_mismatch}")
        spec = self.cached.spec
        head = (f"batch {spec.batch_size}, prompt {spec.prompt_len}, generate {spec.max_tokens}, "
                f"temperature {spec.temperature}, {spec.device} {spec.dtype}")
        return f"{head}\n{body}\nspeedup {self.speedup:.2f}x end to end; {verdict}"

    def print(self) -> None:
        print(self.table())

    def to_dict(self) -> dict[str, Any]:
        return {"naive": self.naive.to_dict(), "cached": self.cached.to_dict(),
                "speedup": self.speedup, "decode_speedup": self.decode_speedup,
                "tokens_match": self.tokens_match, "first_mismatch": self.first_mismatch}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def results_to_json(results: Sequence[BenchmarkResult | ComparisonResult],
                    indent: int | None = 2) -> str:
    """A JSON list of results (e.g. a sweep's)."""
    return json.dumps([r.to_dict() for r in results], indent=indent)


class InferenceBenchmark:
    """Benchmarks of one loaded model (already on ``device``, in the dtype it should run).

    ``autocast_ctx`` (a context manager such as ``torch.autocast("cuda", torch.bfloat16)``, or a
    zero-argument callable returning one) wraps every measurement.
    """

    def __init__(self, model: UNet, tokenizer, device: torch.device | str, autocast_ctx=None, *,
                 warmup: int = 1, repeats: int = 3, seed: int = 42):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.autocast_ctx = autocast_ctx
        self.warmup, self.repeats, self.seed = warmup, repeats, seed

    def _autocast(self):
        ctx = self.autocast_ctx
        if ctx is None:
            return contextlib.nullcontext()
        # An instance (torch.autocast(...)) is entered as is; a class or factory is called first.
        return ctx if hasattr(type(ctx), "__enter__") else ctx()

    def _prompt(self, prompt: Sequence[int] | str | torch.Tensor) -> torch.Tensor:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs the benchmark's tokenizer (tokenizer=None)")
            prompt = self.tokenizer.encode(prompt)
        return as_prompt_batch(prompt, "cpu")

    def run(self, method: str, prompt_ids: torch.Tensor, max_tokens: int, *, engine=None,
            temperature: float = 0.0, top_k: int | None = None,
            profile: bool = False) -> BenchmarkResult:
        """Measure ``method`` on explicit prompt ids [B, T]."""
        ids = self._prompt(prompt_ids)
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        spec = BenchSpec(method=method, batch_size=ids.size(0), prompt_len=ids.size(1),
                         max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                         seed=self.seed, warmup=self.warmup, repeats=self.repeats,
                         device=str(self.device), dtype=dtype, profile=profile)
        with self._autocast():
            metrics = measure_cell(self.model, spec, self.tokenizer, engine=engine, prompt_ids=ids)
        return BenchmarkResult(spec, metrics)

    def compare_methods(self, prompt_tokens: Sequence[int] | torch.Tensor | str, max_tokens: int,
                        engine: UNetEngine | None = None, *, temperature: float = 0.0,
                        top_k: int | None = None) -> ComparisonResult:
        """Naive (the oracle) vs cached (``engine``) on the same prompt; compares the ids."""
        ids = self._prompt(prompt_tokens)
        kwargs = {"temperature": temperature, "top_k": top_k}
        naive = self.run("naive", ids, max_tokens, **kwargs)
        cached = self.run("cached", ids, max_tokens, engine=engine, **kwargs)
        return ComparisonResult.from_results(naive, cached)

    def sweep_sequence_lengths(
        self, engine: UNetEngine | None, base_prompt: Sequence[int] | str,
        lengths: Sequence[int] = (64, 128, 256, 512), max_tokens: int = 32, *,
        batch_size: int = 1, methods: Sequence[str] = ("naive", "cached"), temperature: float = 0.0,
    ) -> list[BenchmarkResult]:
        """One result per (prompt length, method); ``base_prompt`` is repeated/cut to each
        length."""
        base = self._prompt(base_prompt)[0].tolist()
        return [self.run(method, tile_prompt(base, batch_size, length), max_tokens,
                         engine=engine, temperature=temperature)
                for length in lengths for method in methods]

    def sweep_batch_sizes(
        self, engine: UNetEngine | None, batch_sizes: Sequence[int] = (1, 2, 4, 8),
        prompt_len: int = 64, max_tokens: int = 32, *,
        base_prompt: Sequence[int] | str | None = None,
        methods: Sequence[str] = ("naive", "cached"), temperature: float = 0.0,
    ) -> list[BenchmarkResult]:
        """One result per (batch size, method); synthetic prompts unless ``base_prompt`` is given
        (rows differ: each is the base prompt shifted by its row index)."""
        results = []
        for batch in batch_sizes:
            if base_prompt is None:
                spec = BenchSpec(method="naive", batch_size=batch, prompt_len=prompt_len,
                                 max_tokens=max_tokens, seed=self.seed)
                ids = make_prompt(spec, self.model.config.vocab_size)
            else:
                ids = tile_prompt(self._prompt(base_prompt)[0].tolist(), batch, prompt_len)
            results += [self.run(method, ids, max_tokens, engine=engine, temperature=temperature)
                        for method in methods]
        return results
