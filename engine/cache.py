"""The hierarchical KV cache: preallocated K/V per block, plus O(1) state per stage.

Stage s receives one token per 2^s input tokens, so its caches hold ``max_len // 2^s + 1``
positions. Nothing grows by concatenation while decoding: each step writes one slot in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import UNetConfig


@dataclass(frozen=True)
class StaticSlot:
    """Where a static-shape decode step writes, and what its attention reads, in one stage.

    ``position`` is a (1,) device tensor; attention reads the first ``length`` cache slots under
    ``mask`` (1, length): 0 up to the position, -inf after (one mask per stage, for its blocks).
    """

    position: torch.Tensor
    length: int
    mask: torch.Tensor


class KVCache:
    """Keys and values of one block: two tensors of shape (B, capacity, n_kv_head, head_dim),
    each stored head-major (a transposed (B, n_kv_head, capacity, head_dim) buffer) so that
    attention streams every head's keys contiguously (faster single-query attention on CPU).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys
        self.values = values
        # (B, n_kv_head, capacity, head_dim) views, as attention reads them: one op per read.
        self.keys_by_head, self.values_by_head = keys.transpose(1, 2), values.transpose(1, 2)

    @classmethod
    def empty(cls, batch: int, capacity: int, n_kv_head: int, head_dim: int, *, dtype, device) -> KVCache:
        shape = (batch, n_kv_head, capacity, head_dim)
        buffers = [torch.zeros(shape, dtype=dtype, device=device).transpose(1, 2) for _ in range(2)]
        return cls(*buffers)

    @property
    def capacity(self) -> int:
        return self.keys.size(1)

    def write(self, pos: int | StaticSlot, k: torch.Tensor, v: torch.Tensor):
        """Store k/v (B, T, H, D) at positions pos..pos+T-1; return ``(keys, values, mask)`` with
        keys and values as (B, H, length, D) views for attention.

        With an int ``pos`` the result is the valid prefix and no mask. With a ``StaticSlot``
        (one token) the shapes depend on its ``length`` only, as recorded graphs need.
        """
        if isinstance(pos, StaticSlot):
            self.keys.index_copy_(1, pos.position, k)
            self.values.index_copy_(1, pos.position, v)
            return self.keys_by_head.narrow(2, 0, pos.length), self.values_by_head.narrow(2, 0, pos.length), pos.mask
        end = pos + k.size(1)
        self.keys.narrow(1, pos, k.size(1)).copy_(k)
        self.values.narrow(1, pos, v.size(1)).copy_(v)
        return self.keys_by_head.narrow(2, 0, end), self.values_by_head.narrow(2, 0, end), None

    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def repeat_rows(self, n: int) -> KVCache:
        B, capacity, n_kv_head, head_dim = self.keys.shape
        copy = KVCache.empty(B * n, capacity, n_kv_head, head_dim, dtype=self.keys.dtype, device=self.keys.device)
        copy.keys.copy_(self.keys.repeat(n, 1, 1, 1))
        copy.values.copy_(self.values.repeat(n, 1, 1, 1))
        return copy


def stage_capacity(max_len: int, stage: int) -> int:
    return max_len // 2**stage + 1


def kv_cache_bytes(config: UNetConfig, batch_size: int, max_len: int, dtype: torch.dtype) -> int:
    """Analytic size of the K/V caches of a decode state (what ``DecodeState.kv_bytes`` reports)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for s in range(config.n_stages):
        blocks = config.encoder_layers(s) + config.decoder_layers(s)
        per_block = 2 * batch_size * stage_capacity(max_len, s) * config.n_kv_head[s] * config.head_dim
        total += blocks * per_block * itemsize
    return total


@dataclass
class DecodeState:
    """Everything the cached engine carries between steps, per stage s:

    - ``caches[s]``: KVCache per block, encoder blocks first, then decoder blocks;
    - ``positions[s]``: stage-s tokens seen so far (the next one is written at this slot);
    - ``enc_last[s]`` (B, C[s]): last encoder output, the pooling partner of the next token;
    - ``pending[s]`` (B, C[s]): second half of the last unpool from stage s+1, waiting for
      stage s's next token (zeros until stage s+1 has produced output).

    ``enc_last`` and ``pending`` are updated in place. With ``device_positions`` set (see
    ``use_device_positions``) the positions also live on the device, (1,) long per stage, and
    the decode step has static shapes.
    """

    caches: list[list[KVCache]]
    positions: list[int]
    enc_last: list[torch.Tensor]
    pending: list[torch.Tensor]
    max_len: int
    device_positions: list[torch.Tensor] | None = None
    slot_indices: list[torch.Tensor] | None = None  # arange(capacity) per stage, with device_positions

    @classmethod
    def allocate(cls, config: UNetConfig, batch: int, max_len: int, *, dtype, device) -> DecodeState:
        caches, enc_last, pending = [], [], []
        for s in range(config.n_stages):
            blocks = config.encoder_layers(s) + config.decoder_layers(s)
            capacity = stage_capacity(max_len, s)
            caches.append([
                KVCache.empty(batch, capacity, config.n_kv_head[s], config.head_dim, dtype=dtype, device=device)
                for _ in range(blocks)
            ])
            enc_last.append(torch.zeros(batch, config.n_embd[s], dtype=dtype, device=device))
            pending.append(torch.zeros(batch, config.n_embd[s], dtype=dtype, device=device))
        return cls(caches, [0] * config.n_stages, enc_last, pending, max_len)

    @property
    def batch_size(self) -> int:
        return self.enc_last[0].size(0)

    @property
    def length(self) -> int:
        """Input tokens consumed so far (prompt + decoded)."""
        return self.positions[0]

    def advance(self, depth: int) -> None:
        """Count one more token in stages 0..depth (host side; device positions move in the step)."""
        for s in range(depth + 1):
            self.positions[s] += 1

    def reset(self) -> None:
        """Empty the state for a new prompt, keeping every tensor (and its address)."""
        self.positions = [0] * len(self.positions)
        for tensor in (*self.enc_last, *self.pending):
            tensor.zero_()

    def use_device_positions(self) -> DecodeState:
        """Keep positions on the device too, for the static-shape (graph) decode step."""
        device = self.enc_last[0].device
        self.device_positions = [torch.tensor([p], device=device) for p in self.positions]
        self.slot_indices = [torch.arange(stage_capacity(self.max_len, s), device=device)
                             for s in range(len(self.positions))]
        return self

    def static_slot(self, stage: int, length: int | None = None) -> StaticSlot:
        """This step's write position in ``stage`` and what attention reads: the first ``length``
        slots (default: all), those past the position masked out."""
        length = self.slot_indices[stage].numel() if length is None else length
        mask = torch.zeros(1, length, dtype=self.enc_last[stage].dtype, device=self.enc_last[stage].device)
        past = self.slot_indices[stage][:length] > self.device_positions[stage]
        return StaticSlot(self.device_positions[stage], length, mask.masked_fill_(past, float("-inf")))

    def sync_device_positions(self) -> None:
        if self.device_positions is not None:
            for tensor, position in zip(self.device_positions, self.positions):
                tensor.fill_(position)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a decode step reads or writes (the inputs of a traced step, engine.static)."""
        found = [*self.enc_last, *self.pending, *(self.device_positions or [])]
        for cache in (cache for stage in self.caches for cache in stage):
            found += [cache.keys, cache.values, cache.keys_by_head, cache.values_by_head]
        return found

    def kv_bytes(self) -> int:
        """Actual bytes held by the K/V tensors."""
        return sum(cache.nbytes() for stage in self.caches for cache in stage)

    def repeat_rows(self, n: int) -> DecodeState:
        """Copy a batch-1 state into n identical rows (prefill once, sample n times)."""
        if self.batch_size != 1:
            raise ValueError(f"repeat_rows needs a batch-1 state, got batch {self.batch_size}")
        if self.device_positions is not None:
            raise ValueError("repeat_rows copies eager states only; repeat before use_device_positions()")
        return DecodeState(
            caches=[[c.repeat_rows(n) for c in stage] for stage in self.caches],
            positions=list(self.positions),
            enc_last=[t.repeat(n, 1) for t in self.enc_last],
            pending=[t.repeat(n, 1) for t in self.pending],
            max_len=self.max_len,
        )
