"""How much memory a cell needs, estimated from its sizes alone (pure Python: no torch here).

The estimate follows what the engine allocates (docs/failures.md, "Cells too big for memory"):

- weights: every parameter (`wte`, `lm_head`, per block q/k/v/proj and the 4x MLP, the pool and
  unpool projections) at the cell's dtype, the same number `UNet.weight_bytes()` reports;
- building the model, on the host whatever the device: float32 parameters, the cast copy when
  the dtype is narrower, and the rotary tables (sequence_len x 10 positions x head_dim, built in
  float32 with temporaries: 16 bytes per entry);
- KV cache (cached methods): per stage s, 2 x batch x (len // 2^s + 1) x kv heads x head_dim
  for each of its blocks, as `engine.cache.kv_cache_bytes`;
- activations of the longest forward (naive: the whole sequence every step; cached: the prompt):
  the blocks' working set (batch x tokens x widest stage x itemsize x 16, the engine's allowance
  for `measure.memory_budget_bytes`) plus the logits, which naive computes for every position:
  four float32 batch x tokens x vocab tensors alive at once (the previous step's, kept by the
  [:, -1] view the sampler holds, the new ones, their division and tanh in the soft-cap), plus
  the rotary tables;
- prompts and ids (on the host whatever the device): one seeded torch.Generator per synthetic
  prompt row (about 3 KB each), the prompt and generated ids as int64 tensors, and the generated
  ids as Python ints in the record.

A worker's host needs the larger of building the model and the prompts; its device the weights,
KV cache and activations (with the rotary tables); a CPU worker all of it at once.

It is an estimate, not a measurement: attention is assumed to run in a fused kernel (no
tokens x tokens score matrix), allocator slack and the framework's own memory are left out, and
GQA checkpoints are counted with as many KV heads as query heads (the spec does not carry
`n_kv_head`). Use it to refuse what cannot fit, not to promise that the rest will.

>>> est = estimate_cell(depths=[2, 2], widths=[64, 128], vocab_size=256, head_dim=32,
...                     sequence_len=64, dtype="float32", method="cached", batch_size=1,
...                     prompt_len=8, max_tokens=4, synthetic_prompt=True)
>>> est.weight_bytes
2228224
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
VOCAB_PAD_MULTIPLE = 64  # mirrors engine.config.VOCAB_PAD_MULTIPLE
ROTARY_LEN_FACTOR = 10  # mirrors engine.config.ROTARY_LEN_FACTOR
ACTIVATION_FACTOR = 16  # mirrors engine.bench.ACTIVATION_FACTOR
LOGIT_COPIES = 4  # previous step's logits (its [:, -1] view keeps them), new ones, / 15, tanh
GENERATOR_BYTES = 4096  # one CPU torch.Generator (mt19937 state) per synthetic prompt row: ~2.7 KB
PY_INT_BYTES = 36  # a generated id in the record: an int object and its list slot
KV_METHODS = ("cached", "cached_graph")
ROTARY_BUILD = 16  # bytes per (position x head_dim) while the rotary tables are built in float32


@dataclass(frozen=True)
class CellMemory:
    """Estimated bytes of one cell (see the module docstring).

    `load_bytes`: building the model on the host (float32, then the cast copy, rotary tables);
    `prompt_bytes`: the prompt rows and generated ids on the host; `device_bytes`: what the
    worker's device holds at the peak of the cell.
    """

    weight_bytes: int
    load_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    prompt_bytes: int
    budget_bytes: int  # engine.bench.estimate_cell_bytes, which measure.memory_budget_bytes uses

    @property
    def device_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes

    @property
    def host_bytes(self) -> int:
        """What the host of any worker needs (the model is built on the CPU, then moved)."""
        return max(self.load_bytes, self.prompt_bytes)

    @property
    def cpu_bytes(self) -> int:
        """All of it, for a worker whose device is the CPU."""
        return max(self.load_bytes, self.device_bytes + self.prompt_bytes)

    def breakdown(self) -> str:
        """'weights 1.2 MB + KV cache 0 B + activations 4.9 TB + prompts and ids 200.0 GB'."""
        return (f"weights {human_bytes(self.weight_bytes)} + KV cache "
                f"{human_bytes(self.kv_cache_bytes)} + activations "
                f"{human_bytes(self.activation_bytes)} + prompts and ids "
                f"{human_bytes(self.prompt_bytes)}")

    def host_breakdown(self) -> str:
        return (f"building the model {human_bytes(self.load_bytes)}, prompts and ids "
                f"{human_bytes(self.prompt_bytes)}")


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as free -h and nvidia-smi print GB)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def parameter_count(depths: list[int], widths: list[int], vocab_size: int, head_dim: int,
                    n_kv_head: list[int] | None = None) -> int:
    """Parameters of a UNet (as engine.model.UNet builds it)."""
    total = 2 * padded_vocab(vocab_size) * widths[0]  # wte and lm_head
    for s, (depth, width) in enumerate(zip(depths, widths)):
        kv = (n_kv_head[s] if n_kv_head else width // head_dim) * head_dim
        per_block = 2 * width * width + 2 * width * kv + 8 * width * width  # q, proj, k, v, MLP
        total += depth * per_block
        if s > 0:
            total += 2 * (2 * widths[s - 1] * width)  # pool s-1 -> s and unpool s -> s-1
    return total


def kv_cache_bytes(depths: list[int], widths: list[int], head_dim: int, batch_size: int,
                   max_len: int, itemsize: int) -> int:
    """K/V caches of a decode state, as engine.cache.kv_cache_bytes (no GQA: kv heads = heads)."""
    total = 0
    for s, (depth, width) in enumerate(zip(depths, widths)):
        capacity = max_len // 2**s + 1
        total += depth * 2 * batch_size * capacity * (width // head_dim) * head_dim * itemsize
    return total


def estimate_cell(*, depths: list[int], widths: list[int], vocab_size: int, head_dim: int,
                  sequence_len: int, dtype: str, method: str, batch_size: int, prompt_len: int,
                  max_tokens: int, synthetic_prompt: bool) -> CellMemory:
    """The estimate for one cell (see the module docstring for what each term counts)."""
    itemsize = ITEMSIZE[dtype]
    B, P, N = batch_size, prompt_len, max_tokens
    params = parameter_count(depths, widths, vocab_size, head_dim)
    rotary_len = sequence_len * ROTARY_LEN_FACTOR
    weights = params * itemsize
    load = params * 4 + (weights if itemsize != 4 else 0) + rotary_len * head_dim * ROTARY_BUILD
    cached = method in KV_METHODS
    kv = kv_cache_bytes(depths, widths, head_dim, B, P + N, itemsize) if cached else 0
    tokens = P if cached else P + N  # the longest forward: the prefill, or naive's last step
    body = B * tokens * max(widths) * itemsize * ACTIVATION_FACTOR
    logits = B * (1 if cached else tokens) * vocab_size * 4 * LOGIT_COPIES
    rotary = 2 * rotary_len * head_dim * itemsize  # the cos and sin tables kept on the device
    prompts = B * ((GENERATOR_BYTES if synthetic_prompt else 0) + 2 * 8 * P + (16 + PY_INT_BYTES) * N)
    return CellMemory(weight_bytes=weights, load_bytes=load, kv_cache_bytes=kv,
                      activation_bytes=body + logits + rotary, prompt_bytes=prompts,
                      budget_bytes=weights + kv + body)


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or the container's cgroup limit when that is lower;
    None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total if total and total > 0 else None


def local_gpus_visible() -> bool:
    """Whether a local worker could get an NVIDIA GPU (read from /proc, without torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    try:
        return any(Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return False
