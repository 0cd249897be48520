"""engine.profiler and engine.device: statistics, timers, memory snapshots, traces, file names."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine import UNet, UNetConfig, UNetEngine
from engine.device import PeakMemory, SyncTimer, rss_bytes, same_device
from engine.profiler import (
    LatencyStats,
    MemoryProfiler,
    SimpleTimer,
    TorchProfiler,
    format_temperature,
    profile_dir,
    profile_filename,
)

TAG = "d[2,2]-h[32,64]"
STAGE_REGIONS = {"embedding", "encoder_stage_0", "pool_1", "encoder_stage_1", "decoder_stage_1",
                 "unpool_1", "decoder_stage_0", "lm_head"}
NAME_RE = re.compile(r"profile_(\w+?)_(\d{8}_\d{6})_prompt(\d+)_gen(\d+)(_bs\d+)?_t(\d+p\d+)\.json")
SEED_NAME_RE = re.compile(r"profile_(\d{8}_\d{6})_prompt128_gen64_t0p0\.json")


@pytest.fixture(scope="module")
def engine():
    config = UNetConfig.from_tag(TAG, vocab_size=97, head_dim=16, sequence_len=64)
    return UNetEngine(UNet(config).init_weights("random", seed=0))


# --- LatencyStats ---------------------------------------------------------------------------------
@given(st.lists(st.floats(min_value=1e-3, max_value=1e4), min_size=1, max_size=200))
def test_latency_stats_invariants(values):
    s = LatencyStats.from_values(values)
    eps = 1e-9 * max(values)
    assert s.count == len(values)
    assert s.min - eps <= s.p50 <= s.p90 + eps and s.p90 <= s.p99 + eps and s.p99 <= s.max + eps
    assert s.min - eps <= s.mean <= s.max + eps
    assert s.std >= 0 and s.cv >= 0
    assert s.total == pytest.approx(sum(values))


def test_latency_stats_edge_cases():
    empty = LatencyStats.from_values([])
    assert empty.count == 0 and empty.mean is None and empty.p99 is None
    one = LatencyStats.from_values([2.0])
    assert (one.mean, one.p50, one.std, one.cv) == (2.0, 2.0, 0.0, 0.0)
    s = LatencyStats.from_values([1.0, 2.0, 3.0, 4.0])
    assert s.p50 == 2.5 and s.std == pytest.approx(1.2909944)
    assert s.columns("x_ms") == {f"x_ms_{k}": getattr(s, k)
                                 for k in ("mean", "p50", "p90", "p99", "min", "max", "std", "cv")}


# --- SimpleTimer / MemoryProfiler / device --------------------------------------------------------
def test_simple_timer_summary():
    timer = SimpleTimer("cpu")
    for _ in range(3):
        with timer.measure("forward"):
            time.sleep(0.002)
    with timer.measure("sample"):
        pass
    summary = timer.summary()
    assert set(summary) == {"forward", "sample"}
    fwd = summary["forward"]
    assert fwd["count"] == 3 and fwd["mean_ms"] >= 2 and fwd["p50_ms"] >= 2
    assert fwd["total_ms"] == pytest.approx(sum(timer.times_ms["forward"]))
    assert summary["sample"]["count"] == 1
    assert "forward" in timer.table() and "p50 ms" in timer.table()


def test_memory_profiler_snapshots_and_deltas():
    mem = MemoryProfiler("cpu")
    mem.snapshot("start")
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    mem.snapshot("allocated")
    del block
    rows = mem.summary()
    assert [r["label"] for r in rows] == ["start", "allocated"]
    assert rows[0]["delta_rss_bytes"] is None
    assert rows[1]["delta_rss_bytes"] >= 32 * 2**20
    assert rows[1]["allocated_bytes"] is None and rows[1]["delta_allocated_bytes"] is None
    assert rows[1]["rss_bytes"] > 0
    assert "allocated" in mem.table() and "rss MiB" in mem.table()


def test_peak_memory_on_cpu_sees_a_transient_allocation():
    with PeakMemory("cpu") as peak:
        block = torch.ones(16 * 2**20)
        del block
    result = peak.result
    assert result.peak_allocated_bytes is None and result.peak_reserved_bytes is None
    assert result.peak_rss_growth_bytes >= (32 * 2**20 if peak.exact else 0)
    assert rss_bytes() > 0


def test_sync_timer_and_device_matching():
    with SyncTimer("cpu") as t:
        time.sleep(0.001)
    assert t.ms >= 1
    assert same_device(torch.device("cuda", 0), "cuda") and same_device("cpu", "cpu")
    assert not same_device(torch.device("cuda", 1), "cuda:0") and not same_device("cpu", "cuda")


# --- file names -----------------------------------------------------------------------------------
def test_profile_file_names():
    when = datetime(2025, 3, 4, 5, 6, 7)
    assert (profile_filename("cached", 128, 64, 1, 0.0, when)
            == "profile_cached_20250304_050607_prompt128_gen64_t0p0.json")
    assert (profile_filename("naive", 16, 8, 4, 0.7, when)
            == "profile_naive_20250304_050607_prompt16_gen8_bs4_t0p7.json")
    assert [format_temperature(t) for t in (0, 1, 1.25, 0.05)] == ["0p0", "1p0", "1p25", "0p05"]
    assert NAME_RE.fullmatch(profile_filename("cached", 1, 2, temperature=1.0))
    assert (profile_filename(None, 128, 64, 1, 0.0, when)
            == "profile_20250304_050607_prompt128_gen64_t0p0.json")


def test_profile_dir(tmp_path, monkeypatch):
    tag = "d[6,12]-h[768,1536]"
    assert profile_dir(tag, base_dir=tmp_path) == tmp_path / "base_checkpoints" / tag / "profiles"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "env"))
    assert profile_dir(tag) == tmp_path / "env" / "base_checkpoints" / tag / "profiles"
    assert profile_dir(output_dir=tmp_path / "out") == tmp_path / "out"
    monkeypatch.delenv("NANOCHAT_BASE_DIR")
    assert profile_dir(tag) == Path(".") / "base_checkpoints" / tag / "profiles"  # the seed's
    with pytest.raises(ValueError, match="pass model_tag= .* or output_dir="):
        profile_dir()
    with pytest.raises(ValueError, match="model_tag must name one directory"):
        profile_dir("../x")


# --- TorchProfiler --------------------------------------------------------------------------------
def _names(path) -> set[str]:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    return {e.get("name") for e in trace["traceEvents"]}


def test_profile_context_manager_writes_a_chrome_trace(engine, tmp_path):
    profiler = TorchProfiler("cpu")
    path = tmp_path / "deep" / "trace.json"
    with profiler.profile(output_path=path):
        engine.generate_batch([1, 2, 3, 4, 5], max_tokens=6)
    assert STAGE_REGIONS | {"sampling"} <= _names(path)
    regions = [r.region for r in profiler.regions()]
    assert regions == ["embedding", "encoder_stage_0", "pool_1", "encoder_stage_1",
                       "decoder_stage_1", "unpool_1", "decoder_stage_0", "lm_head", "sampling"]
    assert all(r.calls >= 1 and r.cpu_total_ms >= 0 for r in profiler.regions())
    table = profiler.table()
    assert "encoder_stage_1" in table and "cpu ms/call" in table


def test_profile_function_saves_under_the_model_tag(engine, tmp_path):
    calls = []

    def fn():
        calls.append(1)
        engine.generate_batch([[1, 2, 3, 4, 5, 6, 7, 8]] * 2, max_tokens=4)

    tag = engine.config.tag
    run = TorchProfiler("cpu").profile_function(
        fn, warmup_iters=1, profile_iters=2, model_tag=tag, base_dir=tmp_path,
        method="cached", prompt_len=8, max_tokens=4, batch_size=2, temperature=0.0)
    assert len(calls) == 3 and run.profile_iters == 2
    assert run.path.parent == tmp_path / "base_checkpoints" / tag / "profiles"
    match = NAME_RE.fullmatch(run.path.name)
    assert match and match.group(1, 5, 6) == ("cached", "_bs2", "0p0")
    assert STAGE_REGIONS <= _names(run.path)
    assert {r.region for r in run.regions} >= STAGE_REGIONS
    assert "decoder_stage_0" in run.table()


@pytest.mark.parametrize("base", ["cwd", "env"])
def test_the_seeds_profile_call_works_verbatim(engine, tmp_path, monkeypatch, base):
    """The call from the seed's documentation, as written (issue 15, category 9)."""
    monkeypatch.chdir(tmp_path)
    if base == "env":
        monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "nanochat"))
    else:
        monkeypatch.delenv("NANOCHAT_BASE_DIR", raising=False)
    calls = []

    def fn():
        calls.append(1)
        engine.generate_batch([1, 2, 3, 4], max_tokens=2)

    before = datetime.now().replace(microsecond=0)
    result = TorchProfiler("cpu").profile_function(fn, warmup_iters=3, profile_iters=10, auto_save=True, prompt_length=128, max_tokens=64, batch_size=1, temperature=0.0, model_tag="d[6,12]-h[768,1536]")
    root = tmp_path / "nanochat" if base == "env" else Path(".")  # the seed's relative path
    expected_dir = root / "base_checkpoints" / "d[6,12]-h[768,1536]" / "profiles"
    assert result.path.parent == expected_dir and len(calls) == 13
    match = SEED_NAME_RE.fullmatch(result.path.name)
    assert match, result.path.name
    assert datetime.strptime(match.group(1), "%Y%m%d_%H%M%S") >= before
    assert result.path.is_file() and (tmp_path / expected_dir / result.path.name).is_file()
    assert STAGE_REGIONS <= _names(result.path)


def test_profile_function_names_the_method_when_given(engine, tmp_path):
    run = TorchProfiler("cpu").profile_function(
        lambda: engine.generate_batch([1, 2], max_tokens=2), warmup_iters=0, profile_iters=1,
        output_dir=tmp_path, method="naive", prompt_length=2, max_tokens=2, temperature=0.7)
    match = NAME_RE.fullmatch(run.path.name)
    assert match and match.group(1, 3, 4, 6) == ("naive", "2", "2", "0p7")
    with pytest.raises(ValueError, match="prompt_length=3 and prompt_len=2 disagree"):
        TorchProfiler("cpu").profile_function(lambda: None, output_dir=tmp_path, prompt_len=2,
                                              prompt_length=3, max_tokens=1)


def test_profile_function_without_saving_and_errors(engine, tmp_path):
    profiler = TorchProfiler("cpu")
    run = profiler.profile_function(lambda: engine.generate_batch([1, 2], max_tokens=2),
                                    warmup_iters=0, profile_iters=1, auto_save=False)
    assert run.path is None and run.regions
    with pytest.raises(ValueError, match=r"pass \['prompt_len', 'max_tokens'\]"):
        profiler.profile_function(lambda: None, output_dir=tmp_path, method="naive")
    with pytest.raises(ValueError, match=r"unknown params \['gen'\]"):
        profiler.profile_function(lambda: None, output_dir=tmp_path, method="naive",
                                  prompt_len=1, max_tokens=1, gen=3)
    with pytest.raises(ValueError, match="nothing profiled yet"):
        TorchProfiler("cpu").table()


def test_profiler_device_type_is_checked():
    with pytest.raises(ValueError, match="device_type must be 'cpu' or 'cuda'"):
        TorchProfiler("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available: use device_type='cpu'"):
            TorchProfiler("cuda")
