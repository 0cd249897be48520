"""Exact KV-cached generation for the UNet model (``UNetEngine``).

Stage s receives a new token only when (p+1) % 2^s == 0 for input position p, so one decode step
runs one token through each *active* stage (0..L) and recomputes nothing:

- encoder, shallow to deep: stage s > 0 pools its new token from the previous stage-(s-1) encoder
  output (kept in ``enc_last``) and the one just computed;
- decoder, deep to shallow: the deepest active stage L adds ``pending[L]`` (the second half of the
  last unpool from stage L+1); each shallower stage adds the first half of the unpool of the stage
  below it, whose second half becomes that stage's ``pending``.

Every token rotates at position p in every active stage: stage-s token i sits at (i+1)*2^s - 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from engine.cache import DecodeState
from engine.errors import GenerationError
from engine.model import UNet, region
from engine.sampling import as_prompt_batch, check_request, make_generator, sample_next


def active_depth(position: int, n_stages: int) -> int:
    """Deepest stage that receives a token at input position ``position``."""
    depth = 0
    while depth + 1 < n_stages and (position + 1) % 2 ** (depth + 1) == 0:
        depth += 1
    return depth


class UNetEngine:
    """Prefill once, then decode one token per step with the hierarchical cache.

    >>> engine = UNetEngine(model)                                       # doctest: +SKIP
    >>> results, masks = engine.generate_batch([1, 2, 3], max_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, model: UNet, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        # GraphDecoders (engine.static) by (batch, max_len), kept so captured graphs are replayed.
        self.static_decoders: dict[tuple[int, int], object] = {}

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    # --- the two primitives --------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(
        self, ids: torch.Tensor, max_len: int | None = None, state: DecodeState | None = None
    ) -> tuple[torch.Tensor, DecodeState]:
        """Run the prompt ids [B, T]; return the last position's logits [B, V] and the state.

        ``max_len`` bounds prompt + generated tokens (default: the larger of T and sequence_len).
        An existing ``state`` of the same batch size is reset and refilled in place (its tensors
        keep their addresses, which captured CUDA graphs rely on).
        """
        ids = as_prompt_batch(ids, self.device)
        B, T = ids.shape
        cfg = self.config
        if state is None:
            max_len = max_len if max_len is not None else min(max(T, cfg.sequence_len), cfg.max_len)
            if not T <= max_len <= cfg.max_len:
                raise GenerationError(f"max_len={max_len} must lie in [prompt length {T}, model limit {cfg.max_len}]")
            state = DecodeState.allocate(cfg, B, max_len, dtype=self.model.lm_head.weight.dtype, device=self.device)
        elif state.batch_size != B or T > state.max_len:
            raise GenerationError(f"prompt [{B}, {T}] does not fit a state of batch {state.batch_size}, "
                                  f"max_len {state.max_len}")
        else:
            state.reset()
        logits, enc_outputs, dec_outputs = self.model(ids, caches=state.caches)
        for s, enc in enumerate(enc_outputs):
            state.positions[s] = enc.size(1)
            state.enc_last[s].copy_(enc[:, -1])
            if s > 0:
                state.pending[s - 1].copy_(self.model.unpool(s)(dec_outputs[s][:, -1:])[:, 1])
        state.sync_device_positions()
        return logits[:, -1], state

    @torch.inference_mode()
    def decode(self, state: DecodeState, ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (LongTensor [B]); return the next logits [B, V]."""
        position = state.positions[0]
        if position >= state.max_len:
            raise GenerationError(f"the cache is full: {position} tokens already, max_len={state.max_len}")
        depth = active_depth(position, self.config.n_stages)
        logits = self.decode_step(state, ids, depth)
        state.advance(depth)
        return logits

    def decode_step(
        self, state: DecodeState, ids: torch.Tensor, depth: int, read_lengths: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The tensor work of one decode step through stages 0..depth, without the host-side
        position bookkeeping (``state.advance``), so a static-shape state's step can be recorded
        (CUDA graph, CPU trace) and replayed. A static state's attention reads, per stage, the
        first ``read_lengths[s]`` cache slots (default: all of them)."""
        model, static = self.model, state.device_positions is not None
        if static:
            positions = [state.static_slot(s, read_lengths[s] if read_lengths else None) for s in range(depth + 1)]
        else:
            positions = state.positions
        with region("embedding"):
            x = model.embed(ids.view(-1, 1))
        rotary = model.position_rotary(state.device_positions[0] if static else positions[0], x.dtype)
        enc_new = []
        partner = None  # previous stage-(s-1) encoder output: the first of the pooled pair
        for s in range(depth + 1):
            if s > 0:
                with region(f"pool_{s}"):
                    x = model.pool(s)(torch.stack((partner, x[:, 0]), dim=1))
            with region(f"encoder_stage_{s}"):
                for i, block in enumerate(model.encoder_blocks(s)):
                    x = block(x, rotary, state.caches[s][i], positions[s])
            if s < depth:
                partner = state.enc_last[s].clone()
            state.enc_last[s].copy_(x[:, 0])
            enc_new.append(x)
        h = enc_new[depth] + state.pending[depth][:, None]
        for s in reversed(range(depth + 1)):
            if s < depth:
                with region(f"unpool_{s + 1}"):
                    up = model.unpool(s + 1)(h)  # (B, 2, C[s]): this token's half, then the next's
                h = enc_new[s] + up[:, :1]
                state.pending[s].copy_(up[:, 1])
            n_enc = self.config.encoder_layers(s)
            with region(f"decoder_stage_{s}"):
                for i, block in enumerate(model.decoder_blocks(s)):
                    h = block(h, rotary, state.caches[s][n_enc + i], positions[s])
        if static:
            for s in range(depth + 1):
                state.device_positions[s].add_(1)
        with region("lm_head"):
            return model.head(h)[:, 0]

    # --- generation loops ----------------------------------------------------------------------
    def _start(self, tokens, num_samples: int, max_tokens: int) -> tuple[torch.Tensor, DecodeState]:
        ids = as_prompt_batch(tokens, self.device)
        B, T = ids.shape
        if num_samples < 1:
            raise GenerationError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples > 1 and B > 1:
            raise GenerationError("num_samples > 1 needs a single prompt (batch of 1)")
        check_request(self.config, T, max_tokens, ids)
        logits, state = self.prefill(ids, max_len=T + max_tokens)
        if num_samples > 1:
            # Prefill once at batch 1; the samples share the prompt's caches.
            logits, state = logits.repeat(num_samples, 1), state.repeat_rows(num_samples)
        return logits, state

    @torch.inference_mode()
    def generate(
        self,
        tokens: Sequence[int] | torch.Tensor,
        num_samples: int = 1,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 42,
        stop_tokens: Iterable[int] | None = None,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Stream ``(token_column, masks)`` per step: one new id per row, and mask 1 where the row
        is still generating (0 once it has emitted a stop token; its id then repeats the stop)."""
        logits, state = self._start(tokens, num_samples, max_tokens)
        generator = make_generator(seed, self.device) if temperature > 0 else None
        stops = torch.tensor(sorted(set(stop_tokens or ())), dtype=torch.long, device=self.device)
        done = torch.zeros(state.batch_size, dtype=torch.bool, device=self.device)
        last = None
        for step in range(max_tokens):
            if step > 0:
                logits = self.decode(state, last)
            with region("sampling"):
                next_ids = sample_next(logits, temperature, top_k, generator)
            next_ids = torch.where(done, last, next_ids) if last is not None else next_ids
            masks = (~done).long()
            yield next_ids.tolist(), masks.tolist()
            done = done | torch.isin(next_ids, stops)
            if bool(done.all()):
                return
            last = next_ids

    def generate_batch(
        self, tokens: Sequence[int] | torch.Tensor, num_samples: int = 1, max_tokens: int = 64, **kwargs
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Run ``generate`` to the end: per row, prompt + generated ids (up to and including a stop
        token), and masks (0 for prompt positions, 1 for generated ones)."""
        prompt = as_prompt_batch(tokens, "cpu")
        rows = prompt.size(0) * num_samples
        prompts = prompt.repeat(num_samples, 1) if num_samples > 1 else prompt
        results = [list(map(int, prompts[r])) for r in range(rows)]
        masks = [[0] * prompt.size(1) for _ in range(rows)]
        for column, active in self.generate(tokens, num_samples, max_tokens, **kwargs):
            for r in range(rows):
                if active[r]:
                    results[r].append(column[r])
                    masks[r].append(1)
        return results, masks
