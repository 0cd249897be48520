"""The hierarchical ("UNet", hourglass) transformer language model, nanochat layout.

Read top to bottom: helpers (norm, rotary), the transformer block, pooling and unpooling between
stages, then the model. Stage s runs on tokens that each cover 2^s input tokens; stage s exists
for a sequence of T tokens iff T >= 2^s. Output t depends on tokens 0..t only, which is what makes
the exact KV cache in ``engine.engine`` possible.

State-dict names match the reference (``encoder.transformer_0.0.attn.c_q.weight``,
``encoder.pool_0->1.c_proj.weight``, ``decoder.unpool_1->0.c_proj.weight``, ...) so nanochat UNet
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from engine.cache import KVCache, StaticSlot
from engine.config import UNetConfig
from engine.gemv import (
    SplitWeight,
    decode_layout,
    fuse_columns,
    fused_columns,
    linear,
    split_weight,
)

ROPE_BASE = 10000.0
SOFTCAP = 15.0
FLOAT32_EPS = torch.finfo(torch.float32).eps


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm without weights over the last dimension (the reference's default eps).

    On CPU in float32, F.rms_norm's own arithmetic (bit for bit) in half its ops: a decode step
    makes dozens of these calls on one row each, where the op count is the cost.
    """
    if x.is_cpu and x.dtype is torch.float32:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + FLOAT32_EPS)
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables of shape (length, head_dim), rounded to bfloat16 like the reference.

    Pair (j, j + D/2) rotates by angle j: the tables hold (cos, cos) and (sin, -sin) so that
    ``apply_rotary`` is two products and a sum. The bf16 rounding is part of the model: float32
    tables move logits by ~8e-3.
    """
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos().bfloat16().float(), angles.sin().bfloat16().float()
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, -sin), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (j, j + D/2) of x (B, T, H, D) by tables (T, 1, D) from ``rotary_tables``.

    Bit for bit the reference's (x1 cos + x2 sin, x2 cos - x1 sin): negating sin is exact.
    """
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def region(name: str) -> AbstractContextManager:
    """``record_function(name)`` while a profiler records, else nothing: the marks name the
    regions of ``engine.profiler``'s table, and cost two ops each in a decode step otherwise."""
    return record_function(name) if torch.autograd.profiler._is_profiler_enabled else nullcontext()


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


class Linear(nn.Linear):
    """``nn.Linear`` whose few-row CPU products take ``engine.gemv.linear`` (the UNet's have no bias)."""

    split: SplitWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return F.linear(x, self.weight, self.bias)
        split = split_weight(self.weight, self.split)
        if split is not self.split:
            self.split = split  # nn.Module.__setattr__ is slow enough to matter per decode step
        return linear(x, self.weight, split)


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int, n_kv_head: int):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = width // n_head
        self.c_q = Linear(width, n_head * self.head_dim, bias=False)
        self.c_k = Linear(width, n_kv_head * self.head_dim, bias=False)
        self.c_v = Linear(width, n_kv_head * self.head_dim, bias=False)
        self.c_proj = Linear(width, width, bias=False)

    # q, k and v as one weight when UNet packed them side by side (else None), found again only
    # when a weight has moved; and its split for the one-row product (engine.gemv).
    qkv_key: tuple = ()
    qkv_fused: torch.Tensor | None = None
    qkv_split: SplitWeight | None = None

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side, (B, T, n_head + 2 * n_kv_head, head_dim)."""
        weights = (self.c_q.weight, self.c_k.weight, self.c_v.weight)
        key = (weights[0].data_ptr(), weights[1].data_ptr(), weights[2].data_ptr())
        if key != self.qkv_key:
            self.qkv_key, self.qkv_fused = key, fused_columns(weights)
        if self.qkv_fused is None or torch.is_grad_enabled():
            y = torch.cat([linear(x, w) for w in weights], dim=-1)
        else:
            split = split_weight(self.qkv_fused, self.qkv_split, key=key)
            if split is not self.qkv_split:
                self.qkv_split = split  # nn.Module.__setattr__ is slow enough to matter per step
            y = linear(x, self.qkv_fused, split)  # one GEMV for all three
        return y.view(*x.shape[:2], self.n_head + 2 * self.n_kv_head, self.head_dim)

    def forward(self, x, rotary, kv: KVCache | None = None, pos: int | StaticSlot = 0) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x)
        # RoPE first, then QK-norm (q and k together: both act per head), as the reference does;
        # with bf16 tables the two orders differ by ~3e-3.
        qk, v = qkv.split_with_sizes((self.n_head + self.n_kv_head, self.n_kv_head), dim=2)
        q, k = norm(apply_rotary(qk, *rotary)).split_with_sizes((self.n_head, self.n_kv_head), dim=2)
        mask = None
        if kv is not None:
            # A multi-token call (prefill) always starts at 0; a decode call adds one token.
            assert T == 1 or pos == 0, "the cache takes a prefill from 0 or one token at a time"
            k, v, mask = kv.write(pos, k, v)  # (B, H, length, D)
        else:
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        # bool(): while engine.static traces a step, shapes are tensors.
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, v, attn_mask=mask, is_causal=bool(T > 1), enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = Linear(width, 4 * width, bias=False)
        self.c_proj = Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, width: int, n_head: int, n_kv_head: int):
        super().__init__()
        self.attn = Attention(width, n_head, n_kv_head)
        self.mlp = MLP(width)

    def forward(self, x, rotary, kv: KVCache | None = None, pos: int | StaticSlot = 0) -> torch.Tensor:
        x = x + self.attn(norm(x), rotary, kv, pos)
        return x + self.mlp(norm(x))


class Pool(nn.Module):
    """Stage s-1 -> s: concatenate token pairs (2i, 2i+1) and project 2*C[s-1] -> C[s]."""

    def __init__(self, in_width: int, out_width: int):
        super().__init__()
        self.c_proj = Linear(2 * in_width, out_width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        pairs = x[:, : T // 2 * 2].reshape(B, T // 2, 2 * C)  # a trailing odd token waits
        return norm(self.c_proj(pairs))


class Unpool(nn.Module):
    """Stage s -> s-1: project C[s] -> 2*C[s-1], read as two stage-(s-1) tokens."""

    def __init__(self, in_width: int, out_width: int):
        super().__init__()
        self.out_width = out_width
        self.c_proj = Linear(in_width, 2 * out_width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(norm(x)).view(x.size(0), 2 * x.size(1), self.out_width)


def shifted_skip(enc: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """enc + up shifted right by one: position 0 gets nothing, overflow is dropped."""
    n = min(up.size(1), enc.size(1) - 1)
    return torch.cat((enc[:, :1], enc[:, 1 : 1 + n] + up[:, :n], enc[:, 1 + n :]), dim=1)


class UNet(nn.Module):
    """UNet language model: ``forward(idx[B, T]) -> float32 logits [B, T, vocab_size]``."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.padded_vocab_size, C[0])
        # Insertion order matches the reference's state dict.
        self.encoder = nn.ModuleDict()
        self.decoder = nn.ModuleDict()
        for s in range(config.n_stages):
            if s > 0:
                self.encoder[f"pool_{s - 1}->{s}"] = Pool(C[s - 1], C[s])
            self.encoder[f"transformer_{s}"] = self._blocks(s, config.encoder_layers(s))
        for s in range(config.n_stages):
            self.decoder[f"transformer_{s}"] = self._blocks(s, config.decoder_layers(s))
            if s > 0:
                self.decoder[f"unpool_{s}->{s - 1}"] = Unpool(C[s], C[s - 1])
        self.lm_head = Linear(C[0], config.padded_vocab_size, bias=False)
        cos, sin = rotary_tables(config.rotary_len, config.head_dim)
        self.register_buffer("cos", cos[:, None], persistent=False)  # (length, 1, D): one per head
        self.register_buffer("sin", sin[:, None], persistent=False)
        self._pack_weights()

    @torch.no_grad()
    def _pack_weights(self) -> None:
        """Lay each Linear weight out as ``engine.gemv`` streams it fastest in a decode step, and
        put every block's q, k and v side by side in one buffer. Values, shapes, parameter
        identities and the state dict are unchanged; loads copy into the layout, saves write
        contiguous tensors (nanochat's files), and ``.to()`` re-packs (``_apply``)."""
        fused = set()
        for module in self.modules():
            if isinstance(module, Attention):
                fuse_columns([module.c_q.weight, module.c_k.weight, module.c_v.weight])
                fused.update((module.c_q, module.c_k, module.c_v))
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in fused:
                module.weight.data = decode_layout(module.weight.data)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # converts each parameter on its own: fused views come apart
        self._pack_weights()
        return self

    def _blocks(self, s: int, count: int) -> nn.ModuleList:
        cfg = self.config
        return nn.ModuleList(Block(cfg.n_embd[s], cfg.n_head[s], cfg.n_kv_head[s]) for _ in range(count))

    # --- accessors shared with the cached engine ----------------------------------------------
    def encoder_blocks(self, s: int) -> nn.ModuleList:
        return self.encoder[f"transformer_{s}"]

    def decoder_blocks(self, s: int) -> nn.ModuleList:
        return self.decoder[f"transformer_{s}"]

    def pool(self, s: int) -> Pool:
        """The pooling into stage s (s >= 1)."""
        return self.encoder[f"pool_{s - 1}->{s}"]

    def unpool(self, s: int) -> Unpool:
        """The unpooling out of stage s (s >= 1)."""
        return self.decoder[f"unpool_{s}->{s - 1}"]

    def stage_rotary(self, s: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables (length, 1, D) for stage-s tokens 0..length-1: token i sits at position (i+1)*2^s - 1."""
        stride = 2**s
        return tuple(_as_dtype(t[stride - 1 :: stride][:length], dtype) for t in (self.cos, self.sin))

    def position_rotary(self, position: int | torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables (1, 1, D) for one token at input position ``position`` (an int, or a (1,)
        device tensor for the static-shape step)."""
        if isinstance(position, torch.Tensor):
            return tuple(_as_dtype(t.index_select(0, position), dtype) for t in (self.cos, self.sin))
        return tuple(_as_dtype(t[position : position + 1], dtype) for t in (self.cos, self.sin))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return norm(self.wte(idx))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, lm_head, slice off vocab padding, float32, soft-cap."""
        logits = self.lm_head(norm(x))[..., : self.config.vocab_size].float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    # --- full forward --------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, caches: list[list[KVCache]] | None = None):
        """Logits for every position. With ``caches`` (per stage: encoder then decoder blocks),
        every block also writes its K/V from position 0, and the call returns
        ``(logits of the last position [B, 1, V], enc_outputs, dec_outputs)`` per stage."""
        T = idx.size(1)
        if T > self.config.rotary_len:
            raise ValueError(f"sequence of {T} tokens exceeds the rotary table ({self.config.rotary_len})")
        with region("embedding"):
            x = self.embed(idx)
        enc_outputs: list[torch.Tensor] = []
        for s in range(self.config.n_stages):
            if s > 0:
                if x.size(1) < 2:
                    break  # stage s needs T >= 2^s
                with region(f"pool_{s}"):
                    x = self.pool(s)(x)
            rotary = self.stage_rotary(s, x.size(1), x.dtype)
            with region(f"encoder_stage_{s}"):
                for i, block in enumerate(self.encoder_blocks(s)):
                    x = block(x, rotary, caches[s][i] if caches else None)
            enc_outputs.append(x)
        dec_outputs: list[torch.Tensor] = [None] * len(enc_outputs)
        for s in reversed(range(len(enc_outputs))):
            if s < len(enc_outputs) - 1:
                with region(f"unpool_{s + 1}"):
                    x = shifted_skip(enc_outputs[s], self.unpool(s + 1)(x))
            rotary = self.stage_rotary(s, x.size(1), x.dtype)
            n_enc = self.config.encoder_layers(s)
            with region(f"decoder_stage_{s}"):
                for i, block in enumerate(self.decoder_blocks(s)):
                    x = block(x, rotary, caches[s][n_enc + i] if caches else None)
            dec_outputs[s] = x
        if caches is None:
            with region("lm_head"):
                return self.head(x)
        with region("lm_head"):
            logits = self.head(x[:, -1:])  # a prefill only needs the last position
        return logits, enc_outputs, dec_outputs

    # --- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, kind: Literal["reference", "random"] = "reference", seed: int = 0) -> UNet:
        """Initialise in place; returns self.

        ``reference``: nanochat's scheme (zero output projections, lm_head std 1e-3) — a fresh
        model predicts nearly uniform logits. ``random``: every weight non-zero (wte std 1,
        lm_head std 0.3, others 1/sqrt(fan_in)), drawn in ``named_parameters`` order from one
        seeded generator — the scheme of the golden fixtures — so greedy tokens are well separated.
        """
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            fan_in = p.shape[1]
            if name == "wte.weight":
                std = 1.0
            elif name == "lm_head.weight":
                std = 0.3 if kind == "random" else 1e-3
            elif kind == "reference" and name.endswith("c_proj.weight") and ".transformer_" in name:
                p.zero_()
                continue
            else:
                std = 1.0 / math.sqrt(fan_in)
            p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=gen))
        return self

    def weight_bytes(self) -> int:
        """Bytes of all parameters (what a decode step reads at least once)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())
