"""The fast decode layout (engine/gemv.py): same values, same results, exact cached decoding.

The rest of the suite runs with one intra-op thread (tests/conftest.py), where the split GEMV is
off; these tests turn it on with two threads.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.cache import KVCache
from engine.engine import UNetEngine
from engine.gemv import decode_layout, fuse_columns, fused_columns, linear, split_weight
from engine.model import Linear, UNet, apply_rotary, norm, rotary_tables
from tests.helpers import tiny_model
from tests.test_engine import TOLERANCE, max_cached_error


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def qkv_weights(model: UNet, stage: int = 0, block: int = 0):
    attn = model.encoder_blocks(stage)[block].attn
    return [attn.c_q.weight, attn.c_k.weight, attn.c_v.weight]


@pytest.mark.parametrize("out_features, in_features", [(48, 64), (64, 48), (32, 32)])
def test_split_linear_equals_f_linear_in_both_layouts(two_threads, out_features, in_features):
    weight = torch.randn(out_features, in_features)
    for laid_out in (weight.contiguous(), weight.t().contiguous().t(), decode_layout(weight)):
        split = split_weight(laid_out)
        assert split.blocks is not None and split.blocks.size(0) == 2
        with torch.inference_mode():
            for shape in [(1, 1, in_features), (1, in_features), (3, 1, in_features), (16, in_features),
                          (17, in_features), (2, 5, in_features)]:
                x = torch.randn(shape)
                expected = F.linear(x, weight)
                got = linear(x, laid_out, split)
                assert got.shape == expected.shape
                assert (got - expected).abs().max() < 1e-5, shape


def test_split_linear_leaves_autograd_to_f_linear(two_threads, monkeypatch):
    def no_bmm(*args, **kwargs):
        raise AssertionError("the split GEMV ran")

    weight = torch.randn(8, 6, requires_grad=True)
    split, x = split_weight(weight.detach()), torch.randn(1, 1, 6)
    monkeypatch.setattr(torch, "bmm", no_bmm)
    linear(x, weight, split).sum().backward()  # autograd on: F.linear, no split
    assert torch.allclose(weight.grad, x.view(1, 6).expand(8, 6))
    with torch.inference_mode(), pytest.raises(AssertionError, match="split GEMV ran"):
        linear(x, weight.detach(), split)


def test_a_linear_with_bias_keeps_it():
    layer = Linear(6, 4, bias=True)
    x = torch.randn(1, 1, 6)
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))


def test_decode_layout_keeps_values_and_picks_rows_by_shape():
    tall, wide = torch.randn(16, 64), torch.randn(64, 16)  # (out, in)
    assert torch.equal(decode_layout(tall), tall) and decode_layout(tall).is_contiguous()
    assert torch.equal(decode_layout(wide), wide) and decode_layout(wide).t().is_contiguous()
    laid = decode_layout(wide)
    assert decode_layout(laid) is laid


def test_fused_columns_sees_a_moved_weight():
    weights = [torch.nn.Parameter(torch.randn(n, 8)) for n in (4, 2, 2)]
    assert fused_columns(weights) is None
    fuse_columns(weights)
    fused = fused_columns(weights)
    assert torch.equal(fused, torch.cat([w.detach() for w in weights]))
    with torch.no_grad():
        weights[1].mul_(2)  # in place: the fused view sees it
    assert torch.equal(fused_columns(weights)[4:6], weights[1].detach())
    weights[2].data = weights[2].data.clone()
    assert fused_columns(weights) is None


def test_model_packing_keeps_the_state_dict_and_identities():
    model = tiny_model(3, seed=4)
    plain = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    assert fused_columns(qkv_weights(model, 2)) is not None
    assert model.encoder_blocks(0)[0].mlp.c_proj.weight.is_contiguous()  # tall: (out, in) rows
    assert model.encoder_blocks(0)[0].mlp.c_fc.weight.t().is_contiguous()  # wide: (in, out) rows
    reloaded = UNet(model.config)
    reloaded.load_state_dict(plain)
    assert fused_columns(qkv_weights(reloaded, 1)) is not None
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in plain.items())
    param = qkv_weights(model)[1]
    model.to(torch.float64)
    assert qkv_weights(model)[1] is param and param.dtype == torch.float64
    assert fused_columns(qkv_weights(model)) is not None
    assert all(torch.equal(model.state_dict()[k], v.double()) for k, v in plain.items())


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n_stages", [1, 2, 3, 4, 5])
def test_cached_equals_naive_with_the_split_gemv(two_threads, n_stages, batch):
    engine = UNetEngine(tiny_model(n_stages, seed=20 + n_stages))
    span = 2**n_stages
    ids = torch.randint(0, 97, (batch, 2 * span + 3 + 3 * span), generator=torch.Generator().manual_seed(n_stages))
    for prompt_len in (1, span - 1 or 1, span + 3):
        assert max_cached_error(engine, ids[:, : prompt_len + 3 * span], prompt_len) <= TOLERANCE


def test_an_unfused_copy_still_decodes_exactly(two_threads):
    """deepcopy gives each parameter its own storage: q, k and v fall back to three GEMVs."""
    model = copy.deepcopy(tiny_model(2, seed=6))
    assert fused_columns(qkv_weights(model)) is None
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    assert max_cached_error(UNetEngine(model), ids, 5) <= TOLERANCE


def test_norm_is_f_rms_norm_bit_for_bit():
    for shape in [(1, 1, 256), (3, 1, 512), (2, 9, 4, 16), (1, 600, 64)]:
        for scale in (1e-3, 1.0, 100.0):
            x = torch.randn(shape) * scale
            assert torch.equal(norm(x), F.rms_norm(x, (x.size(-1),)))
            assert torch.equal(norm(x[..., ::2]), F.rms_norm(x[..., ::2], (x.size(-1) // 2,)))
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    assert torch.equal(norm(x), F.rms_norm(x, (32,)))


def test_rotary_is_the_reference_pair_rotation_bit_for_bit():
    cos, sin = rotary_tables(50, 32)
    half_cos, half_sin = cos[:, None, :16], sin[:, None, :16]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 50, 3, 32).to(dtype)
        x1, x2 = x[..., :16], x[..., 16:]
        c, s = half_cos.to(dtype), half_sin.to(dtype)
        reference = torch.cat((x1 * c + x2 * s, x2 * c - x1 * s), dim=-1)
        assert torch.equal(apply_rotary(x, cos[:, None].to(dtype), sin[:, None].to(dtype)), reference)


def test_kv_cache_is_head_major_behind_its_shape():
    cache = KVCache.empty(2, 9, 3, 4, dtype=torch.float32, device="cpu")
    assert cache.keys.shape == (2, 9, 3, 4) and cache.keys_by_head.is_contiguous()
    k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    keys, values, mask = cache.write(5, k, v)
    assert mask is None and keys.shape == (2, 3, 6, 4)
    assert torch.equal(cache.keys[:, 5], k[:, 0]) and torch.equal(values[:, :, 5], v[:, 0])
    copy_ = KVCache.empty(1, 9, 3, 4, dtype=torch.float32, device="cpu")
    copy_.keys.copy_(cache.keys[:1])
    assert torch.equal(copy_.repeat_rows(2).keys, copy_.keys.repeat(2, 1, 1, 1))
