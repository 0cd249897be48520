"""The static-shape decode path (CUDA graphs on a GPU) gives the eager cached engine's logits."""

import pytest
import torch

from engine.bench import BenchSpec, measure_cell
from engine.engine import UNetEngine
from engine.errors import GenerationError
from engine.static import GraphDecoder
from tests.helpers import tiny_model


def _compare(engine: UNetEngine, decoder: GraphDecoder, ids: torch.Tensor, prompt_len: int) -> float:
    with torch.inference_mode():
        eager_logits, state = engine.prefill(ids[:, :prompt_len], max_len=decoder.state.max_len)
        static_logits = decoder.prefill(ids[:, :prompt_len])
        worst = (eager_logits - static_logits).abs().max().item()
        for t in range(prompt_len, ids.size(1)):
            eager_logits = engine.decode(state, ids[:, t])
            static_logits = decoder.decode(ids[:, t])
            worst = max(worst, (eager_logits - static_logits).abs().max().item())
    return worst


@pytest.mark.parametrize("n_stages", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_static_step_equals_eager_cached(n_stages, batch):
    engine = UNetEngine(tiny_model(n_stages, seed=20 + n_stages))
    span = 2**n_stages
    total = span + 3 + 3 * span
    ids = torch.randint(0, 97, (batch, total), generator=torch.Generator().manual_seed(batch))
    decoder = GraphDecoder(engine, batch, total, use_graphs=False)
    # One decoder serves every prompt length: prefill resets it in place.
    for prompt_len in (1, span - 1 or 1, span, span + 3):
        assert _compare(engine, decoder, ids, prompt_len) <= 1e-5, prompt_len


def test_prefill_reuses_the_same_tensors():
    engine = UNetEngine(tiny_model(3))
    decoder = GraphDecoder(engine, 1, 40, use_graphs=False)
    addresses = lambda: [c.keys.data_ptr() for stage in decoder.state.caches for c in stage] + [
        t.data_ptr() for t in (*decoder.state.enc_last, *decoder.state.pending, *decoder.state.device_positions)]
    with torch.inference_mode():
        decoder.prefill(torch.tensor([[1, 2, 3, 4, 5]]))
        before = addresses()
        for token in range(10):
            decoder.decode(torch.tensor([token]))
        decoder.prefill(torch.tensor([[7, 8]]))
    assert addresses() == before
    assert decoder.state.positions == [2, 1, 0]
    assert [int(p) for p in decoder.state.device_positions] == [2, 1, 0]


def test_static_decoder_refuses_to_overrun():
    engine = UNetEngine(tiny_model(2))
    decoder = GraphDecoder(engine, 1, 4, use_graphs=False)
    with torch.inference_mode():
        decoder.prefill(torch.tensor([[1, 2, 3]]))
        decoder.decode(torch.tensor([4]))
        with pytest.raises(GenerationError, match="the cache is full"):
            decoder.decode(torch.tensor([5]))


def test_cached_graph_cell_matches_cached_tokens():
    model = tiny_model(3, seed=2)
    results = {
        method: measure_cell(model, BenchSpec(method=method, batch_size=2, prompt_len=9, max_tokens=12,
                                              warmup=1, repeats=2))
        for method in ("naive", "cached", "cached_graph")
    }
    assert len({r.tokens_sha256 for r in results.values()}) == 1
    assert results["cached_graph"].kv_cache_bytes == results["cached"].kv_cache_bytes > 0


def test_decoders_are_kept_per_shape_on_the_engine():
    engine = UNetEngine(tiny_model(2))
    assert GraphDecoder.for_engine(engine, 2, 30) is GraphDecoder.for_engine(engine, 2, 30)
    assert GraphDecoder.for_engine(engine, 2, 31) is not GraphDecoder.for_engine(engine, 2, 30)


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_in_bfloat16():
    model = tiny_model(3, seed=7).to("cuda", torch.bfloat16)
    engine = UNetEngine(model)
    decoder = GraphDecoder(engine, 2, 64)
    assert decoder.use_graphs
    ids = torch.randint(0, 97, (2, 60), device="cuda")
    assert _compare(engine, decoder, ids, 5) <= 0.1  # bf16: a few ulps of logits of size ~10
    assert decoder.n_captured == 3


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_stages", [1, 3, 4])
def test_cpu_traces_replay_the_eager_step(n_stages, threads):
    """On CPU each phase is traced (TorchScript) on its first step and replayed after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine = UNetEngine(tiny_model(n_stages, seed=30 + n_stages))
        span = 2**n_stages
        total = span + 3 + 3 * span
        ids = torch.randint(0, 97, (2, total), generator=torch.Generator().manual_seed(n_stages))
        decoder = GraphDecoder(engine, 2, total)
        assert decoder.use_graphs
        for prompt_len in (span + 3, 1, span):  # later prompts only replay
            assert _compare(engine, decoder, ids, prompt_len) <= 1e-5, prompt_len
        assert {depth for depth, _ in decoder.graphs} == set(range(n_stages))
        assert decoder.n_captured == len(decoder.graphs)
    finally:
        torch.set_num_threads(before)


def test_cpu_replays_see_in_place_weight_updates_and_leave_requires_grad():
    model = tiny_model(2, seed=3)
    engine = UNetEngine(model)
    decoder = GraphDecoder(engine, 1, 30)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(1))
    assert _compare(engine, decoder, ids, 4) <= 1e-5
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.5)
        model.decoder_blocks(1)[0].mlp.c_fc.weight.add_(0.1)
    assert _compare(engine, decoder, ids, 4) <= 1e-5


@pytest.mark.parametrize("fails", ["after the step", "mid-step"])
def test_a_failed_trace_leaves_the_phase_eager(monkeypatch, fails):
    decoder = None

    def broken_trace(fn, inputs, **kwargs):
        if fails == "after the step":
            fn(*inputs)
        else:  # a half-run step: state moved, no logits
            decoder.state.enc_last[0].add_(1.0)
            decoder.state.device_positions[0].add_(1)
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    engine = UNetEngine(tiny_model(3, seed=5))
    decoder = GraphDecoder(engine, 1, 40)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    assert _compare(engine, decoder, ids, 3) <= 1e-5
    assert decoder.n_captured == 0 and len(decoder.graphs) == 3


def test_attention_reads_whole_buckets_not_the_whole_buffer():
    engine = UNetEngine(tiny_model(2, seed=8))
    decoder = GraphDecoder(engine, 1, 200, use_graphs=False)
    ids = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        decoder.prefill(ids[:, :60])
        assert decoder._read_lengths(1) == (64, 64)  # 61 and 31 slots needed
        decoder.prefill(ids[:, :64])
        assert decoder._read_lengths(0) == (128,)
        decoder.prefill(ids[:, :199])
        assert decoder._read_lengths(0) == (200 + 1,)  # capped at the capacity
    assert _compare(engine, decoder, ids, 40) <= 1e-5  # crosses two bucket edges
