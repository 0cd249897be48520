"""The static-shape decode path: one recorded graph per decode phase, replayed every step.

A small model's eager decode step is bound by per-op overhead, not by arithmetic: kernel launches
on a GPU, Python and dispatch on a CPU (dozens of ops per block, each a few microseconds once the
weight stream has flushed the caches). Here every tensor a step touches keeps its shape and address: the
K/V caches are preallocated for ``max_len`` and attention reads them under a mask of valid
slots; positions live on the device; ``enc_last``/``pending`` are updated in place. Which
stages run depends on the position (stage s runs when (p+1) % 2^s == 0), so a model with S stages
has S *phases*. Attention reads each stage's cache up to the next multiple of ``ATTENTION_BUCKET``
slots past the position, not the whole buffer, so a phase has one shape per bucket: each (phase,
buckets) is recorded once per (batch size, max_len) and replayed:

- on CUDA as a CUDA graph. Capture records kernels without running them, so the first step of a
  phase runs eagerly (for real) and the phase is captured right after it;
- on CPU as a TorchScript trace, which replays the recorded ops from C++ without the Python
  interpreter (~15% faster decode than the eager cached engine on a 2-core VM). Tracing runs the
  step for real, so the first step of a phase is its trace. The state's tensors are the graph's
  inputs, so in-place updates reach them; the weights are constants held by reference, so
  in-place weight updates are seen (replacing a weight needs a new decoder). ``torch.jit.trace``
  is deprecated in favour of ``torch.compile``, whose CPU code for these one-row products is
  slower than MKL's here; if tracing fails, the phase runs eagerly. A replayed phase shows up
  in a profile as its ops, without the stage regions of ``engine.profiler``'s table.

With ``use_graphs=False`` every step runs the same static-shape code eagerly (how its logic is
tested against the eager engine, and the fallback).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from engine.cache import DecodeState, stage_capacity
from engine.engine import UNetEngine, active_depth
from engine.errors import GenerationError

# Slots per attention-length step: a step reads at most this many masked slots beyond its own.
ATTENTION_BUCKET = 64


class GraphDecoder:
    """Prefill into, and decode from, one persistent static-shape state.

    >>> decoder = GraphDecoder.for_engine(engine, batch_size=1, max_len=640)  # doctest: +SKIP
    >>> logits = decoder.prefill(prompt_ids); logits = decoder.decode(next_ids)  # doctest: +SKIP
    """

    def __init__(self, engine: UNetEngine, batch_size: int, max_len: int, use_graphs: bool | None = None):
        self.engine = engine
        model = engine.model
        self.state = DecodeState.allocate(
            engine.config, batch_size, max_len, dtype=model.lm_head.weight.dtype, device=engine.device
        ).use_device_positions()
        self.use_graphs = True if use_graphs is None else use_graphs
        self.on_cuda = engine.device.type == "cuda"
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=engine.device)
        # Per (depth, read lengths): replay() -> logits; None where recording failed (runs eagerly).
        self.graphs: dict[tuple[int, tuple[int, ...]], Callable[[], torch.Tensor] | None] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs and self.on_cuda else None

    @classmethod
    def for_engine(cls, engine: UNetEngine, batch_size: int, max_len: int) -> GraphDecoder:
        """The engine's decoder for this shape, created once so its graphs are reused."""
        key = (batch_size, max_len)
        if key not in engine.static_decoders:
            engine.static_decoders[key] = cls(engine, batch_size, max_len)
        return engine.static_decoders[key]

    @property
    def n_captured(self) -> int:
        """Phases recorded so far (CUDA graphs or CPU traces)."""
        return sum(graph is not None for graph in self.graphs.values())

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Reset the state and run the prompt [B, T] eagerly; return the last logits [B, V]."""
        logits, _ = self.engine.prefill(ids, state=self.state)
        return logits

    @torch.inference_mode()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """One step for ids [B] (on the device). The returned logits may be a graph's output
        buffer: read them before the next call."""
        position = self.state.positions[0]
        if position >= self.state.max_len:
            raise GenerationError(f"the cache is full: {position} tokens already, max_len={self.state.max_len}")
        depth = active_depth(position, self.engine.config.n_stages)
        key = (depth, self._read_lengths(depth))
        self.tokens.copy_(ids)
        replay = self.graphs.get(key)
        if replay is not None:
            logits = replay()
        elif not self.use_graphs or key in self.graphs:
            logits = self.engine.decode_step(self.state, self.tokens, *key)
        elif self.on_cuda:
            # Capture right after the shape's eager (warm-up) step: capturing records kernels
            # without running them, so the state is untouched, and a measured generation after
            # one warm-up generation of the same shape only ever replays.
            logits = self.engine.decode_step(self.state, self.tokens, *key)
            self.graphs[key] = self._capture_cuda(key)
        else:
            logits, self.graphs[key] = self._trace_cpu(key)
        self.state.advance(depth)
        return logits

    def _read_lengths(self, depth: int) -> tuple[int, ...]:
        """Per active stage, the cache slots this step's attention reads."""
        lengths = []
        for s in range(depth + 1):
            needed = self.state.positions[s] + 1
            bucketed = -(-needed // ATTENTION_BUCKET) * ATTENTION_BUCKET
            lengths.append(min(bucketed, stage_capacity(self.state.max_len, s)))
        return tuple(lengths)

    def _capture_cuda(self, key: tuple[int, tuple[int, ...]]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.engine.decode_step(self.state, self.tokens, *key)

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return replay

    def _trace_cpu(self, key: tuple[int, tuple[int, ...]]) -> tuple[torch.Tensor, Callable[[], torch.Tensor] | None]:
        """Run this step as a TorchScript trace; return its logits and the replay (None if
        tracing failed: the step then ran eagerly and so will the phase)."""
        inputs = (self.tokens, *self.state.tensors())
        small = [*self.state.enc_last, *self.state.pending, *self.state.device_positions]
        before = [t.clone() for t in small]  # to undo a half-run step (its K/V writes repeat as is)
        ran: list[torch.Tensor] = []

        def step(tokens: torch.Tensor, *state_tensors: torch.Tensor) -> torch.Tensor:
            ran.append(self.engine.decode_step(self.state, tokens, *key))
            return ran[-1]

        try:
            with _constant_weights(self.engine.model), warnings.catch_warnings():
                # Deprecated (see the module docstring); shapes are static here by construction.
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(step, inputs, check_trace=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: stay eager
            logging.getLogger(__name__).warning("decode shape %s runs eagerly: tracing failed (%s)", key, exc)
            if ran:
                return ran[-1], None
            for tensor, saved in zip(small, before):
                tensor.copy_(saved)
            return self.engine.decode_step(self.state, self.tokens, *key), None
        return ran[-1], lambda: traced(*inputs)


@contextmanager
def _constant_weights(model: torch.nn.Module) -> Iterator[None]:
    """Parameters as plain tensors while tracing: a trace keeps them as constants, which must
    not require grad. Restored afterwards; replays run without autograd."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
