"""The cached engine is exact: its logits equal the naive full forward's at every position."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cache import DecodeState, kv_cache_bytes
from engine.checkpoint import load_checkpoint
from engine.config import UNetConfig
from engine.engine import UNetEngine, active_depth
from engine.errors import GenerationError
from engine.model import UNet
from engine.naive import naive_generate
from tests.helpers import tiny_model

TOLERANCE = 1e-4


def max_cached_error(engine: UNetEngine, ids: torch.Tensor, prompt_len: int) -> float:
    """Prefill ids[:, :prompt_len], decode the rest; worst |cached - full forward| logit."""
    with torch.inference_mode():
        full = engine.model(ids)
        logits, state = engine.prefill(ids[:, :prompt_len], max_len=ids.size(1))
        worst = (logits - full[:, prompt_len - 1]).abs().max().item()
        for t in range(prompt_len, ids.size(1)):
            logits = engine.decode(state, ids[:, t])
            worst = max(worst, (logits - full[:, t]).abs().max().item())
    return worst


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_stages", [1, 2, 3, 4, 5])
def test_cached_equals_naive_every_prompt_length(n_stages, batch):
    engine = UNetEngine(tiny_model(n_stages, seed=10 + n_stages))
    span = 2**n_stages
    ids = torch.randint(0, 97, (batch, span + 3 + 3 * span), generator=torch.Generator().manual_seed(n_stages))
    for prompt_len in range(1, span + 4):
        n = prompt_len + 3 * span
        assert max_cached_error(engine, ids[:, :n], prompt_len) <= TOLERANCE, prompt_len


@settings(max_examples=25, deadline=None)
@given(
    n_stages=st.integers(1, 4),
    head_dim=st.sampled_from([8, 16]),
    data=st.data(),
)
def test_cached_equals_naive_for_any_config(n_stages, head_dim, data):
    heads = [data.draw(st.sampled_from([1, 2, 4])) for _ in range(n_stages)]
    kv_heads = [data.draw(st.sampled_from([d for d in (1, 2, 4) if h % d == 0])) for h in heads]
    layers = [data.draw(st.sampled_from([2, 4, (1, 2), (2, 1), (0, 1)])) for _ in range(n_stages)]
    config = UNetConfig(sequence_len=32, vocab_size=data.draw(st.integers(2, 130)), n_layer=layers,
                        n_head=heads, n_kv_head=kv_heads, n_embd=[h * head_dim for h in heads])
    model = UNet(config).init_weights("random", seed=data.draw(st.integers(0, 100))).eval()
    prompt_len = data.draw(st.integers(1, 2**n_stages + 3))
    batch = data.draw(st.integers(1, 3))
    ids = torch.randint(0, config.vocab_size, (batch, prompt_len + 2 * 2**n_stages))
    assert max_cached_error(UNetEngine(model), ids, prompt_len) <= TOLERANCE


def test_golden_continuations(golden_dir):
    model, _ = load_checkpoint(golden_dir)
    engine = UNetEngine(model)
    for case in json.loads((golden_dir / "golden.json").read_text())["cases"]:
        results, masks = engine.generate_batch(case["prompt"], max_tokens=case["max_new_tokens"])
        assert results[0][len(case["prompt"]):] == case["naive_greedy"], case["name"]
        assert masks[0] == [0] * len(case["prompt"]) + [1] * case["max_new_tokens"]


@pytest.mark.parametrize("n_stages", [2, 3])
def test_greedy_generate_equals_naive_generate(n_stages):
    model = tiny_model(n_stages, seed=3)
    prompt = torch.randint(0, 97, (2, 5))
    naive = torch.stack(list(naive_generate(model, prompt, max_tokens=20)), dim=1).tolist()
    cached = [column for column, _ in UNetEngine(model).generate(prompt, max_tokens=20)]
    assert [list(row) for row in zip(*cached)] == naive


def test_multi_sample_is_reproducible_and_greedy_samples_agree():
    engine = UNetEngine(tiny_model(3, seed=4))
    prompt = [3, 14, 15, 92, 65]
    sampled = engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=123)[0]
    assert sampled == engine.generate_batch(prompt, num_samples=4, max_tokens=16, temperature=1.0, seed=123)[0]
    assert len({tuple(r) for r in sampled}) > 1  # the samples differ from each other
    greedy = engine.generate_batch(prompt, num_samples=3, max_tokens=16)[0]
    single = engine.generate_batch(prompt, max_tokens=16)[0][0]
    assert greedy == [single] * 3


def test_multi_sample_prefills_once_at_batch_one(monkeypatch):
    engine = UNetEngine(tiny_model(2))
    batches = []
    original = engine.prefill
    monkeypatch.setattr(engine, "prefill", lambda ids, max_len=None: batches.append(ids.shape[0]) or original(ids, max_len))
    engine.generate_batch([1, 2, 3], num_samples=5, max_tokens=4)
    assert batches == [1]


def test_batch_rows_are_independent():
    engine = UNetEngine(tiny_model(3, seed=5))
    ids = torch.randint(0, 97, (3, 11))
    with torch.inference_mode():
        logits, state = engine.prefill(ids, max_len=30)
        batch_steps = [logits]
        for t in range(10):
            batch_steps.append(engine.decode(state, batch_steps[-1].argmax(-1)))
        for row in range(3):
            logits, state = engine.prefill(ids[row : row + 1], max_len=30)
            for t in range(11):
                assert (logits[0] - batch_steps[t][row]).abs().max() <= TOLERANCE
                logits = engine.decode(state, batch_steps[t][row : row + 1].argmax(-1)) if t < 10 else logits


def test_stop_tokens_end_rows_and_masks_say_so():
    engine = UNetEngine(tiny_model(2, seed=6))
    prompt = torch.randint(0, 97, (3, 4))
    free = [column for column, _ in engine.generate(prompt, max_tokens=12)]
    stop = free[2][0]  # row 0's third token
    steps = list(engine.generate(prompt, max_tokens=12, stop_tokens=[stop]))
    row0 = [column[0] for column, _ in steps]
    masks0 = [mask[0] for _, mask in steps]
    first_stop = row0.index(stop)
    assert first_stop <= 2 and masks0[: first_stop + 1] == [1] * (first_stop + 1)
    assert set(masks0[first_stop + 1 :]) <= {0}
    results, _ = engine.generate_batch(prompt, max_tokens=12, stop_tokens=[stop])
    assert results[0][-1] == stop and len(results[0]) == 4 + first_stop + 1


def test_max_tokens_bounded_by_the_model_limit():
    engine = UNetEngine(tiny_model(2, sequence_len=8))
    with pytest.raises(GenerationError, match="exceeds the model's limit of 80 positions"):
        next(engine.generate(list(range(60)), max_tokens=30))
    with torch.inference_mode():
        logits, state = engine.prefill(torch.tensor([[1, 2, 3]]), max_len=4)
        engine.decode(state, logits.argmax(-1))
        with pytest.raises(GenerationError, match="the cache is full: 4 tokens already, max_len=4"):
            engine.decode(state, logits.argmax(-1))


def test_kv_bytes_analytic_equals_live_state():
    model = tiny_model(4)
    for dtype in (torch.float32, torch.bfloat16):
        state = DecodeState.allocate(model.config, 3, 100, dtype=dtype, device="cpu")
        assert state.kv_bytes() == kv_cache_bytes(model.config, 3, 100, dtype)
        assert state.caches[2][0].keys.shape == (3, 100 // 4 + 1, model.config.n_kv_head[2], model.config.head_dim)


def test_decode_writes_in_place_without_growing_tensors():
    engine = UNetEngine(tiny_model(3))
    with torch.inference_mode():
        logits, state = engine.prefill(torch.tensor([[1, 2, 3, 4, 5]]), max_len=40)
        pointers = [c.keys.data_ptr() for stage in state.caches for c in stage]
        for _ in range(20):
            logits = engine.decode(state, logits.argmax(-1))
    assert pointers == [c.keys.data_ptr() for stage in state.caches for c in stage]
    assert state.positions == [25, 12, 6]


def test_active_depth_schedule():
    assert [active_depth(p, 3) for p in range(8)] == [0, 1, 0, 2, 0, 1, 0, 2]
    assert [active_depth(p, 1) for p in range(4)] == [0, 0, 0, 0]
