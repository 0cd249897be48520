"""Tiny models shared by the tests."""

from __future__ import annotations

import torch

from engine.config import UNetConfig
from engine.model import UNet


def tiny_config(n_stages: int = 2, *, gqa: bool = True, head_dim: int = 16, vocab_size: int = 97,
                sequence_len: int = 64) -> UNetConfig:
    """Growing widths per stage; with ``gqa`` the deeper stages use fewer kv heads than heads."""
    widths = [head_dim * (s + 2) for s in range(n_stages)]
    heads = [w // head_dim for w in widths]
    kv_heads = [h // 2 if gqa and h % 2 == 0 else h for h in heads]
    return UNetConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=[2] * n_stages,
                      n_head=heads, n_kv_head=kv_heads, n_embd=widths)


def tiny_model(n_stages: int = 2, seed: int = 0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    return UNet(tiny_config(n_stages, **kwargs)).init_weights("random", seed=seed).eval()
