"""Weight layout and few-row products for a fast decode step on CPU.

A decode step multiplies one row per sequence by every weight matrix (a GEMV), so its speed is how
fast the weights stream from memory. What we found timing MKL's float32 products on matrices cold
in cache, on a 2-core EPYC VM (their effect on decode: ``benchmarks/cached_vs_naive.py``):

- MKL runs a lone GEMV on one thread, well below the bandwidth two threads reach, so a
  few-row product becomes one batched GEMM of ``parts`` blocks, which MKL spreads over threads;
- a wide matrix (in <= out) streams fastest stored as (in, out) rows and split along the input
  (the partial sums are added); a tall one (in > out) as (out, in) rows split along the output
  (no sum): ``decode_layout`` picks, per matrix, and ``linear`` follows whichever it finds;
- q, k and v read the same input: stored side by side in one buffer they are one GEMV, not three
  (``fuse_columns``), while remaining three parameters with their own state-dict names.

Larger products (prefill, the naive method, training, anything with autograd) go to F.linear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

SPLIT_MAX_ROWS = 16
SPLIT_MAX_PARTS = 4


class SplitWeight(NamedTuple):
    """A weight cut into ``parts`` blocks for one batched GEMM (made by ``split_weight``)."""

    key: tuple  # what the blocks were cut from; a weight that moved is cut again
    weight: torch.Tensor  # (out, in)
    blocks: torch.Tensor | None  # None: this weight's layout has no split; F.linear it is
    by_output: bool = False  # blocks (parts, in, out/parts) if True, else (parts, in/parts, out)


def split_weight(weight: torch.Tensor, cached: SplitWeight | None = None, key: tuple | None = None) -> SplitWeight:
    """``cached`` if it was cut from this weight (by ``key``, default its address) for the current
    thread count, else the weight cut anew. Views only: no weight bytes are copied."""
    parts = min(torch.get_num_threads(), SPLIT_MAX_PARTS)
    key = (weight.data_ptr(), weight.stride(), parts) if key is None else (*key, parts)
    if cached is not None and cached.key == key:
        return cached
    out_features, in_features = weight.shape
    if parts > 1 and weight.is_contiguous() and out_features % parts == 0:
        # (out, in) rows: each part computes a block of outputs from the whole input.
        blocks = weight.view(parts, out_features // parts, in_features).transpose(1, 2)
        return SplitWeight(key, weight, blocks, by_output=True)
    if parts > 1 and weight.t().is_contiguous() and in_features % parts == 0:
        # (in, out) rows: each part multiplies a slice of the input; the partial sums are added.
        blocks = weight.t().view(parts, in_features // parts, out_features)
        return SplitWeight(key, weight, blocks)
    return SplitWeight(key, weight, None)


def linear(x: torch.Tensor, weight: torch.Tensor, split: SplitWeight | None = None) -> torch.Tensor:
    """``F.linear(x, weight)`` without bias; few-row float32 CPU products without autograd take
    the ``split`` of this weight (see ``split_weight``)."""
    rows = x.numel() // x.size(-1)
    if (split is None or split.blocks is None or rows > SPLIT_MAX_ROWS or not x.is_cpu
            or x.dtype is not torch.float32 or torch.is_grad_enabled()):
        return F.linear(x, weight)
    blocks = split.blocks
    parts = blocks.size(0)
    if rows == 1 and x.dim() == 3:  # one decode token (1, 1, in): the fewest ops
        if split.by_output:
            return torch.bmm(x.expand(parts, 1, -1), blocks).view(1, 1, -1)
        return torch.bmm(x.view(parts, 1, -1), blocks).sum(0, keepdim=True)
    if split.by_output:
        y = torch.bmm(x.reshape(1, rows, -1).expand(parts, rows, -1), blocks).transpose(0, 1)
    else:
        y = torch.bmm(x.reshape(rows, parts, -1).transpose(0, 1), blocks).sum(0)
    return y.reshape(*x.shape[:-1], split.weight.size(0))


def decode_layout(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) with the same values in the layout ``linear`` streams fastest:
    (out, in) rows when tall (in > out), else (in, out) rows, i.e. the transpose of a
    contiguous buffer. Returns ``weight`` itself when it is already laid out so."""
    out_features, in_features = weight.shape
    if in_features > out_features:
        return weight if weight.is_contiguous() else weight.contiguous()
    return weight if weight.t().is_contiguous() else weight.t().contiguous().t()


@torch.no_grad()
def fuse_columns(weights: Sequence[torch.nn.Parameter]) -> None:
    """Move weights (out_i, in) into adjacent column blocks of one (in, sum out_i) buffer, each
    parameter a view of it (same values, shapes and identities); see ``fused_columns``."""
    if fused_columns(weights) is not None:
        return
    buffer = torch.cat([w.t() for w in weights], dim=1).contiguous()
    start = 0
    for w in weights:
        w.data = buffer[:, start : start + w.size(0)].t()
        start += w.size(0)


def fused_columns(weights: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The (sum out_i, in) weight the ``weights`` form together if ``fuse_columns`` laid them out
    and nothing has moved them since (``.to`` or an assignment can); else None."""
    first = weights[0]
    total = sum(w.size(0) for w in weights)
    offset = first.storage_offset()
    for w in weights:
        if (w.stride() != (1, total) or w.storage_offset() != offset or w.dtype != first.dtype
                or w.size(1) != first.size(1)
                or w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()):
            return None
        offset += w.size(0)
    return first.detach().as_strided((total, first.size(1)), (1, total))
