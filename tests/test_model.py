"""The UNet forward against the reference's golden logits, any length, causality."""

import json

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.errors import GenerationError
from engine.model import UNet
from engine.naive import naive_generate
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def golden(golden_dir):
    model, _ = load_checkpoint(golden_dir)
    cases = json.loads((golden_dir / "golden.json").read_text())
    return model, cases


def test_state_dict_names_and_order_match_the_reference(golden):
    model, cases = golden
    assert list(model.state_dict()) == list(cases["state_dict_shapes"])
    assert sum(p.numel() for p in model.parameters()) == cases["n_params"]


def test_random_init_reproduces_the_fixture_weights(golden):
    """The fixtures' init scheme, drawn in named_parameters order, is our `random` init."""
    model, cases = golden
    fresh = UNet(model.config).init_weights("random", seed=cases["seed"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_golden_logits(golden, golden_dir):
    model, cases = golden
    for case in cases["cases"]:
        ids = torch.tensor([case["prompt"] + case["naive_greedy"]])
        expected = torch.load(golden_dir / case["logits_file"], weights_only=True)
        with torch.inference_mode():
            got = model(ids)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4, case["name"]


def test_golden_greedy_tokens(golden):
    model, cases = golden
    for case in cases["cases"]:
        tokens = [int(col[0]) for col in naive_generate(model, case["prompt"], case["max_new_tokens"])]
        assert tokens == case["naive_greedy"], case["name"]


@pytest.mark.parametrize("n_stages", [1, 2, 3, 4])
def test_any_length_runs(n_stages):
    """The reference crashes below 2^(S-1) tokens; every length from 1 works here."""
    model = tiny_model(n_stages)
    with torch.inference_mode():
        for length in range(1, 41):
            logits = model(torch.randint(0, 97, (2, length)))
            assert logits.shape == (2, length, 97)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("n_stages", [1, 2, 3, 4])
def test_causal(n_stages):
    model = tiny_model(n_stages, seed=n_stages)
    ids = torch.randint(0, 97, (1, 37))
    with torch.inference_mode():
        base = model(ids)
        for j in (0, 5, 16, 36):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 97
            out = model(changed)
            assert torch.equal(out[:, :j], base[:, :j]) or (out[:, :j] - base[:, :j]).abs().max() < 1e-5
            assert (out[:, j:] - base[:, j:]).abs().max() > 1e-3  # position j itself does change


def test_reference_init_gives_near_uniform_logits():
    model = UNet(tiny_model(2).config).init_weights("reference", seed=0)
    with torch.inference_mode():
        logits = model(torch.randint(0, 97, (1, 8)))
    assert logits.abs().max() < 0.05


def test_naive_refuses_requests_past_the_position_limit():
    model = tiny_model(2, sequence_len=8)  # limit = 10 x 8 = 80 positions
    with pytest.raises(GenerationError, match="exceeds the model's limit of 80 positions"):
        next(naive_generate(model, list(range(70)), max_tokens=11))
    with pytest.raises(GenerationError, match=r"token ids must lie in \[0, 97\)"):
        next(naive_generate(model, [5, 200], max_tokens=1))


def test_naive_sampling_is_seeded():
    model = tiny_model(2)
    run = lambda seed: [int(c[0]) for c in naive_generate(model, [1, 2, 3], 12, temperature=1.0, top_k=20, seed=seed)]
    assert run(7) == run(7)
    assert run(7) != run(8)
