"""Naive generation: a full forward over the whole sequence at every step, no cache.

This is the reference's method and the oracle the cached engine is checked against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.profiler import record_function

from engine.model import UNet
from engine.sampling import as_prompt_batch, check_request, make_generator, sample_next


@torch.inference_mode()
def naive_generate(
    model: UNet,
    tokens: Sequence[int] | torch.Tensor,
    max_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 42,
) -> Iterator[torch.Tensor]:
    """Yield one column of new token ids (LongTensor [B]) per step.

    >>> [int(col[0]) for col in naive_generate(model, [1, 2, 3], max_tokens=4)]  # doctest: +SKIP
    """
    device = model.lm_head.weight.device
    ids = as_prompt_batch(tokens, device)
    check_request(model.config, ids.size(1), max_tokens, ids)
    generator = make_generator(seed, device) if temperature > 0 else None
    for _ in range(max_tokens):
        logits = model(ids)[:, -1]
        with record_function("sampling"):
            next_ids = sample_next(logits, temperature, top_k, generator)
        ids = torch.cat((ids, next_ids[:, None]), dim=1)
        yield next_ids
