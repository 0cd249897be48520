"""The seed's API (InferenceBenchmark, BenchmarkResult, ComparisonResult) and the docs example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import (
    BenchmarkResult,
    ByteTokenizer,
    ComparisonResult,
    InferenceBenchmark,
    UNet,
    UNetConfig,
    UNetEngine,
)
from engine.benchmark import results_to_json

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [5, 17, 3, 44, 8, 91, 2, 60, 33, 12, 70]


@pytest.fixture(scope="module")
def model():
    config = UNetConfig.from_tag("d[2,2]-h[32,64]", vocab_size=97, head_dim=16, sequence_len=64)
    return UNet(config).init_weights("random", seed=0)


@pytest.fixture
def bench(model):
    return InferenceBenchmark(model, tokenizer=None, device="cpu", repeats=2)


class BrokenEngine(UNetEngine):
    """Test double: decode call ``bad_step`` of every run (0-based, counted from the prefill)
    returns logits whose argmax is pushed down for ``row``, so that row's greedy token changes."""

    def __init__(self, model, bad_step: int, row: int = 0):
        super().__init__(model)
        self.bad_step, self.row, self.calls = bad_step, row, 0

    def prefill(self, ids, max_len=None):
        self.calls = 0
        return super().prefill(ids, max_len)

    def decode(self, state, ids):
        logits = super().decode(state, ids)
        if self.calls == self.bad_step:
            logits = logits.clone()
            logits[self.row, logits[self.row].argmax()] = -100.0
        self.calls += 1
        return logits


def test_public_names():
    import engine

    for name in ("InferenceBenchmark", "BenchmarkResult", "ComparisonResult", "BenchSpec",
                 "measure_cell", "TorchProfiler", "SimpleTimer", "MemoryProfiler"):
        assert name in engine.__all__ and hasattr(engine, name)


def test_compare_methods_reports_a_match(bench, model, capsys):
    comparison = bench.compare_methods(PROMPT, max_tokens=12, engine=UNetEngine(model))
    assert isinstance(comparison, ComparisonResult)
    assert comparison.tokens_match and comparison.first_mismatch is None
    assert comparison.naive.tokens == comparison.cached.tokens
    assert comparison.naive.metrics.tokens_sha256 == comparison.cached.metrics.tokens_sha256
    assert comparison.speedup > 0 and comparison.decode_speedup > 0
    assert comparison.speedup == pytest.approx(comparison.naive.e2e_ms / comparison.cached.e2e_ms)
    assert (comparison.naive.method, comparison.cached.method) == ("naive", "cached")
    assert comparison.cached.spec.prompt_len == len(PROMPT)
    assert comparison.cached.spec.batch_size == 1
    comparison.print()
    out = capsys.readouterr().out
    assert "tokens match" in out and "decode tok/s" in out and "TTFT (ms)" in out
    data = json.loads(comparison.to_json())
    assert data["tokens_match"] is True and data["first_mismatch"] is None
    assert data["cached"]["method"] == "cached" and data["cached"]["kv_cache_bytes"] > 0
    assert len(data["naive"]["decode_step_ms"]) == 2 * 11


def test_compare_methods_with_sampling_and_default_engine(bench):
    comparison = bench.compare_methods(torch.tensor([PROMPT, PROMPT[::-1]]), max_tokens=8,
                                       temperature=0.9, top_k=10)
    assert comparison.cached.spec.batch_size == 2 and comparison.cached.spec.temperature == 0.9
    assert comparison.tokens_match


@pytest.mark.parametrize("bad_step,row", [(0, 0), (3, 0), (5, 1)])
def test_broken_engine_is_a_mismatch_at_the_right_index(bench, model, bad_step, row, capsys):
    prompt = torch.tensor([PROMPT, PROMPT[1:] + PROMPT[:1]])
    broken = BrokenEngine(model, bad_step, row)
    comparison = bench.compare_methods(prompt, max_tokens=10, engine=broken)
    # decode call k produces generated token k + 1 (token 0 comes from the prefill)
    assert not comparison.tokens_match
    assert comparison.first_mismatch == bad_step + 1
    naive, cached = comparison.naive.tokens, comparison.cached.tokens
    assert naive[row][:bad_step + 1] == cached[row][:bad_step + 1]
    assert naive[row][bad_step + 1] != cached[row][bad_step + 1]
    assert json.loads(comparison.to_json())["first_mismatch"] == bad_step + 1
    comparison.print()
    assert f"TOKENS DIFFER from generated token {bad_step + 1}" in capsys.readouterr().out


def test_sweep_sequence_lengths(bench, model):
    results = bench.sweep_sequence_lengths(UNetEngine(model), PROMPT, lengths=[4, 16, 24],
                                           max_tokens=5)
    assert [(r.spec.prompt_len, r.method) for r in results] == [
        (4, "naive"), (4, "cached"), (16, "naive"), (16, "cached"), (24, "naive"), (24, "cached")]
    assert all(isinstance(r, BenchmarkResult) and r.ttft_ms > 0 for r in results)
    for naive, cached in zip(results[::2], results[1::2]):
        assert naive.tokens == cached.tokens
    data = json.loads(results_to_json(results))
    assert [d["prompt_len"] for d in data] == [4, 4, 16, 16, 24, 24]
    assert data[1]["trace_json_bytes"] is None


def test_sweep_batch_sizes(bench, model):
    results = bench.sweep_batch_sizes(UNetEngine(model), batch_sizes=[1, 3], prompt_len=6,
                                      max_tokens=4, methods=("cached",))
    assert [r.spec.batch_size for r in results] == [1, 3]
    assert len(results[1].tokens) == 3 and results[1].decode_tok_s > 0
    text = InferenceBenchmark(model, tokenizer=None, device="cpu", repeats=1).sweep_batch_sizes(
        None, batch_sizes=[2], prompt_len=5, max_tokens=3, base_prompt=PROMPT, methods=("naive",))
    assert len(text) == 1 and text[0].spec.batch_size == 2
    assert json.loads(text[0].to_json())["method"] == "naive"


def test_text_prompt_and_autocast_context(tmp_path):
    config = UNetConfig.from_tag("d[2]-h[32]", vocab_size=260, head_dim=16, sequence_len=32)
    small = UNet(config).init_weights("random", seed=2)
    entered = []

    class Recording:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    bench = InferenceBenchmark(small, ByteTokenizer(), "cpu", autocast_ctx=Recording, repeats=1)
    comparison = bench.compare_methods("hello world", max_tokens=6)
    assert comparison.tokens_match and len(entered) == 2
    assert comparison.cached.spec.prompt_len == len(b"hello world")
    with pytest.raises(ValueError, match="a text prompt needs the benchmark's tokenizer"):
        InferenceBenchmark(small, None, "cpu").compare_methods("hi", max_tokens=2)


def test_docs_python_api_example_runs_as_written():
    text = (ROOT / "docs" / "metrics.md").read_text()
    code = re.search(r"## Python API example\n+```python\n(.*?)```", text, re.DOTALL).group(1)
    assert 10 <= len(code.strip().splitlines()) <= 20
    exec(compile(code, "docs/metrics.md", "exec"), {"__name__": "docs_example"})  # noqa: S102


def test_importing_the_engine_does_not_load_ray():
    code = ("import sys, engine, engine.bench, engine.benchmark, engine.profiler; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
