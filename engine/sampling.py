"""Next-token selection shared by the naive and cached engines, and prompt-shape checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.config import UNetConfig
from engine.errors import GenerationError


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A seeded generator on the logits' device, so sampling needs no host round trip."""
    return torch.Generator(device=device).manual_seed(seed)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V): argmax at temperature 0, else sample."""
    if temperature < 0:
        raise GenerationError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        if top_k <= 0:
            raise GenerationError(f"top_k must be a positive integer, got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def as_prompt_batch(tokens: Sequence[int] | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Token ids as a LongTensor [B, T]: a flat list or 1-D tensor is one prompt."""
    ids = tokens if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.size(1) == 0:
        raise GenerationError(f"prompt must be a non-empty [T] or [B, T] of token ids, got shape {tuple(ids.shape)}")
    if ids.dtype != torch.long:
        raise GenerationError(f"prompt token ids must be integers (torch.long), got {ids.dtype}")
    return ids.to(device)


def check_request(config: UNetConfig, prompt_len: int, max_tokens: int, ids: torch.Tensor | None = None) -> None:
    """Refuse a generation that would run past the model's position limit or outside its vocab."""
    if max_tokens < 1:
        raise GenerationError(f"max_tokens must be >= 1, got {max_tokens}")
    if prompt_len + max_tokens > config.max_len:
        raise GenerationError(
            f"prompt of {prompt_len} tokens + {max_tokens} new tokens = {prompt_len + max_tokens} "
            f"exceeds the model's limit of {config.max_len} positions "
            f"(rotary table = {config.rotary_len // config.sequence_len} x sequence_len {config.sequence_len})"
        )
    if ids is not None and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        raise GenerationError(
            f"prompt token ids must lie in [0, {config.vocab_size}), got range "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
