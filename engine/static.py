"""The static-shape decode path: one CUDA graph per decode phase, replayed every step.

On a GPU a small model's eager decode step is bound by kernel launches, not by arithmetic. Here
every tensor a step touches keeps its shape and address: the K/V caches are preallocated for
``max_len`` and attention reads the whole buffer under a mask of valid slots; positions live on
the device; ``enc_last``/``pending`` are updated in place. Which stages run depends on the
position (stage s runs when (p+1) % 2^s == 0), so a model with S stages has S *phases*; each is
captured once per (batch size, max_len) and replayed.

Capture needs a warm-up: the first step of each phase runs eagerly (for real) and the phase is
captured right after it; every later step of that phase replays the graph. On CPU, or with ``use_graphs=False``, every step runs the same
static-shape code eagerly, which is how its logic is tested without a GPU.
"""

from __future__ import annotations

import torch

from engine.cache import DecodeState
from engine.engine import UNetEngine, active_depth
from engine.errors import GenerationError


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
        self.use_graphs = engine.device.type == "cuda" if use_graphs is None else use_graphs
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=engine.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_logits: dict[int, torch.Tensor] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    @classmethod
    def for_engine(cls, engine: UNetEngine, batch_size: int, max_len: int) -> GraphDecoder:
        """The engine's decoder for this shape, created once so its graphs are reused."""
        key = (batch_size, max_len)
        if key not in engine.static_decoders:
            engine.static_decoders[key] = cls(engine, batch_size, max_len)
        return engine.static_decoders[key]

    @property
    def n_captured(self) -> int:
        return len(self.graphs)

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
        self.tokens.copy_(ids)
        if self.use_graphs and depth in self.graphs:
            self.graphs[depth].replay()
            logits = self.graph_logits[depth]
        else:
            logits = self.engine.decode_step(self.state, self.tokens, depth)
            if self.use_graphs:
                # Capture right after the phase's eager (warm-up) step: capturing records kernels
                # without running them, so the state is untouched, and a measured generation
                # after one warm-up generation of the same shape only ever replays.
                self._capture(depth)
        self.state.advance(depth)
        return logits

    def _capture(self, depth: int) -> None:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, pool=self.pool):
            self.graph_logits[depth] = self.engine.decode_step(self.state, self.tokens, depth)
        self.graphs[depth] = graph
