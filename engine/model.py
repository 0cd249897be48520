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
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from engine.cache import KVCache
from engine.config import UNetConfig

ROPE_BASE = 10000.0
SOFTCAP = 15.0


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm without weights over the last dimension (the reference's default eps)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (length, head_dim // 2), rounded to bfloat16 like the reference.

    The bf16 rounding is part of the model: float32 tables move logits by ~8e-3.
    """
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos().bfloat16().float(), angles.sin().bfloat16().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (j, j + D/2) of x (B, T, H, D) by per-position cos/sin (T, D/2)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


# A decode step multiplies one row per sequence by every weight matrix: a GEMV, bound by how fast
# the weights stream from memory. MKL runs it on one core at about half the bandwidth two cores
# reach, so on CPU a few-row float32 product is split along the input dimension into one batched
# GEMM (which MKL spreads over the threads) and the partial sums are added: ~30% faster decode
# on a 2-core VM. Wider products (prefill, naive, training) go to F.linear as usual.
SPLIT_MAX_ROWS = 16
SPLIT_MAX_PARTS = 4


class Linear(nn.Linear):
    """``nn.Linear`` with the split GEMV above on CPU (same parameters and state-dict names)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = min(torch.get_num_threads(), SPLIT_MAX_PARTS)
        rows = x.numel() // self.in_features
        weight_t = self.weight.t()  # (in, out); contiguous when stored column-major (UNet does)
        if (parts < 2 or rows > SPLIT_MAX_ROWS or x.device.type != "cpu" or x.dtype != torch.float32
                or self.in_features % parts or not weight_t.is_contiguous() or self.bias is not None
                or torch.is_grad_enabled()):
            return F.linear(x, self.weight)
        chunk = self.in_features // parts
        pieces = x.reshape(rows, parts, chunk).transpose(0, 1)  # (parts, rows, chunk)
        partial = torch.bmm(pieces, weight_t.view(parts, chunk, self.out_features))
        return partial.sum(0).view(*x.shape[:-1], self.out_features)


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int, n_kv_head: int):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = width // n_head
        self.c_q = Linear(width, n_head * self.head_dim, bias=False)
        self.c_k = Linear(width, n_kv_head * self.head_dim, bias=False)
        self.c_v = Linear(width, n_kv_head * self.head_dim, bias=False)
        self.c_proj = Linear(width, width, bias=False)

    def forward(self, x, cos, sin, kv: KVCache | None = None, pos: int | torch.Tensor = 0) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        # RoPE first, then QK-norm: with bf16 tables the two orders differ by ~3e-3.
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        mask = None
        if kv is not None:
            # A multi-token call (prefill) always starts at 0; a decode call adds one token.
            assert T == 1 or pos == 0, "the cache takes a prefill from 0 or one token at a time"
            k, v, mask = kv.write(pos, k, v)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=T > 1, enable_gqa=self.n_kv_head != self.n_head,
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

    def forward(self, x, cos, sin, kv: KVCache | None = None, pos: int | torch.Tensor = 0) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin, kv, pos)
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
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._store_weights_column_major()

    def _store_weights_column_major(self) -> None:
        """Keep each Linear weight (out, in) as the transpose of a contiguous (in, out) buffer.

        Same values and state dict; F.linear then multiplies by a row-major (in, out) matrix,
        which MKL's batch-1 GEMV on CPU reads 2-3x faster than (out, in) — the whole difference
        between a weight-bandwidth-bound decode step and a slow one. Copies, loads and
        ``.to(device, dtype)`` keep the layout; large-batch GEMMs do not care.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight = nn.Parameter(module.weight.detach().t().contiguous().t())

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

    def stage_rotary(self, s: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for stage-s tokens 0..length-1: token i sits at position (i+1)*2^s - 1."""
        stride = 2**s
        return self.cos[stride - 1 :: stride][:length], self.sin[stride - 1 :: stride][:length]

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
        with record_function("embedding"):
            x = self.embed(idx)
        enc_outputs: list[torch.Tensor] = []
        for s in range(self.config.n_stages):
            if s > 0:
                if x.size(1) < 2:
                    break  # stage s needs T >= 2^s
                with record_function(f"pool_{s}"):
                    x = self.pool(s)(x)
            cos, sin = self.stage_rotary(s, x.size(1))
            with record_function(f"encoder_stage_{s}"):
                for i, block in enumerate(self.encoder_blocks(s)):
                    x = block(x, cos, sin, caches[s][i] if caches else None)
            enc_outputs.append(x)
        dec_outputs: list[torch.Tensor] = [None] * len(enc_outputs)
        for s in reversed(range(len(enc_outputs))):
            if s < len(enc_outputs) - 1:
                with record_function(f"unpool_{s + 1}"):
                    x = shifted_skip(enc_outputs[s], self.unpool(s + 1)(x))
            cos, sin = self.stage_rotary(s, x.size(1))
            n_enc = self.config.encoder_layers(s)
            with record_function(f"decoder_stage_{s}"):
                for i, block in enumerate(self.decoder_blocks(s)):
                    x = block(x, cos, sin, caches[s][n_enc + i] if caches else None)
            dec_outputs[s] = x
        if caches is None:
            with record_function("lm_head"):
                return self.head(x)
        with record_function("lm_head"):
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
