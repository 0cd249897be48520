"""Train a UNet language model on local text and write nanochat-layout checkpoints.

    python -m engine.train --depth 2 2 --model-dim 64 128 --num-iterations 300

Next-token prediction with AdamW (bf16 autocast on CUDA, float32 on CPU). Progress (loss, tokens/s)
goes to stderr; held-out loss in bits per byte and the checkpoint paths go to stdout. Each save
writes, under ``<base>/base_checkpoints/<tag>/``:

- ``model_<step:06d>.pt``: a plain state dict, as nanochat writes it (``load_checkpoint`` reads it);
- ``meta_<step:06d>.json``: ``model_config``, ``step``, ``val_bpb``, ``user_config`` (the CLI
  arguments) and the loop state;
- ``optim_<step:06d>.pt``: the AdamW state, for ``--resume``.

Batches depend only on (seed, step), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.config import UNetConfig
from engine.data import DEFAULT_DATA_DIR, Corpus, load_corpus, sample_batch, val_windows
from engine.errors import EngineError, TrainError
from engine.model import UNet
from engine.tokenizer import ByteTokenizer, TiktokenTokenizer, Tokenizer
from engine.train_checkpoints import (
    prepare_checkpoint_dir,
    remove_checkpoints,
    resume_from,
    save_training_state,
    saved_shape,
)
from engine.train_progress import Progress

logger = logging.getLogger(__name__)

DEFAULT_SEQ_LEN = 256
CUDA_BATCH_SIZE = 32  # default sequences per step on a GPU
CPU_BATCH_SIZE = 8  # ... and on a CPU, where 32 x 256 tokens take seconds per step
MAX_SEQ_LEN = 2**20
MAX_HEAD_DIM = 128  # nanochat's head_dim
GRAD_CLIP = 1.0
WARMUP_FRAC = 0.05  # linear warmup over the first 5% of the steps
WARMDOWN_FRAC = 0.2  # linear decay to FINAL_LR_FRAC over the last 20%
FINAL_LR_FRAC = 0.1
EXIT_USAGE = 2


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Everything a training run needs (the CLI arguments); validated on construction."""

    depth: tuple[int, ...]
    model_dim: tuple[int, ...]
    num_iterations: int = 1000
    device_batch_size: int | None = None  # None: 32 on CUDA, 8 on CPU
    data: str | None = None  # None: the corpus shipped in engine/data/
    tokenizer: str = "bytes"  # "bytes" or a tokenizer.pkl path (or a directory holding one)
    seq_len: int | None = None  # None: DEFAULT_SEQ_LEN, or the checkpoint's with --resume
    head_dim: int | None = None  # None: the checkpoint's, else the largest even divisor <= 128
    lr: float | None = None  # None: 3e-3 * min(1, sqrt(256 / max(model_dim)))
    weight_decay: float = 0.0
    save_every: int = 0  # 0: only at the end
    eval_every: int = 100  # 0: only at the start and the end
    eval_tokens: int = 2**17
    base_dir: str | None = None  # None: $NANOCHAT_BASE_DIR, else the current directory
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", tuple(self.depth))
        object.__setattr__(self, "model_dim", tuple(self.model_dim))
        if len(self.depth) != len(self.model_dim):
            raise TrainError(
                f"--depth {list(self.depth)} and --model-dim {list(self.model_dim)} differ in length "
                f"({len(self.depth)} vs {len(self.model_dim)}): give one value of each per stage"
            )
        if not self.depth:
            raise TrainError("--depth and --model-dim need at least one value (one per stage)")
        for flag, values in (("--depth", self.depth), ("--model-dim", self.model_dim)):
            if any(v <= 0 for v in values):
                raise TrainError(f"{flag} values must be positive, got {list(values)}")
        if self.seq_len is not None and not 2 <= self.seq_len <= MAX_SEQ_LEN:
            raise TrainError(
                f"--seq-len must lie in [2, {MAX_SEQ_LEN}] (2**20), got {self.seq_len}"
            )
        if self.head_dim is not None and (self.head_dim <= 0 or self.head_dim % 2):
            raise TrainError(
                f"--head-dim must be a positive even number (rotary pairs), got {self.head_dim}"
            )
        for flag, value in (
            ("--num-iterations", self.num_iterations),
            ("--device-batch-size", self.device_batch_size),
            ("--eval-tokens", self.eval_tokens),
        ):
            if value is not None and value < 1:
                raise TrainError(f"{flag} must be at least 1, got {value}")
        for flag, value in (("--save-every", self.save_every), ("--eval-every", self.eval_every)):
            if value < 0:
                raise TrainError(f"{flag} must be >= 0 (0: only at the end), got {value}")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"--lr must be positive, got {self.lr}")
        if self.resume and self.overwrite:
            raise TrainError("--resume and --overwrite exclude each other: continue, or start over")

    @property
    def tag(self) -> str:
        """nanochat's model tag, e.g. ``d[2,2]-h[64,128]``."""
        return f"d[{','.join(map(str, self.depth))}]-h[{','.join(map(str, self.model_dim))}]"

    @property
    def base(self) -> Path:
        return Path(self.base_dir or os.environ.get("NANOCHAT_BASE_DIR") or ".")

    @property
    def learning_rate(self) -> float:
        return (
            self.lr
            if self.lr is not None
            else 3e-3 * min(1.0, math.sqrt(256 / max(self.model_dim)))
        )

    def user_config(self) -> dict:
        """JSON-ready arguments, stored in each checkpoint's ``meta['user_config']``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class TrainRecord:
    """What a run did: steps, held-out bits per byte before and after, time and throughput."""

    tag: str
    checkpoint_dir: str
    start_step: int
    end_step: int
    val_bpb_start: float
    val_bpb_end: float
    train_seconds: float
    train_tokens_per_s: float


# --- model and data -------------------------------------------------------------------------------
def default_head_dim(widths: tuple[int, ...]) -> int:
    """The largest even divisor of every width that is at most 128: 64 for h[64,128]."""
    common = math.gcd(*widths)
    for head_dim in range(min(common, MAX_HEAD_DIM), 1, -1):
        if common % head_dim == 0 and head_dim % 2 == 0:
            return head_dim
    raise TrainError(
        f"--model-dim {list(widths)} has no common even divisor for a head_dim: "
        "use widths that are multiples of 2 (64 or 128 is usual)"
    )


def build_config(
    spec: TrainSpec, vocab_size: int, seq_len: int, head_dim: int | None
) -> UNetConfig:
    """The model config a spec asks for (``UNetConfig.from_tag`` plus the trainer's own checks)."""
    head_dim = head_dim if head_dim is not None else default_head_dim(spec.model_dim)
    bad = [w for w in spec.model_dim if w % head_dim]
    if bad:
        raise TrainError(f"--model-dim {bad[0]} is not a multiple of --head-dim {head_dim}")
    n_stages = len(spec.depth)
    if seq_len < 2 ** (n_stages - 1):
        raise TrainError(
            f"--seq-len {seq_len} is too short for {n_stages} stages: the deepest stage needs "
            f"{2 ** (n_stages - 1)} tokens per sequence"
        )
    try:
        return UNetConfig.from_tag(
            spec.tag, vocab_size=vocab_size, head_dim=head_dim, sequence_len=seq_len
        )
    except EngineError as err:
        raise TrainError(
            f"--depth {list(spec.depth)} --model-dim {list(spec.model_dim)}: {err}"
        ) from None


def resolve_tokenizer(name: str) -> Tokenizer:
    """``bytes`` or a nanochat ``tokenizer.pkl`` (a file, or a directory holding one)."""
    if name == "bytes":
        return ByteTokenizer()
    path = Path(name)
    for candidate in (path, path / "tokenizer.pkl", path / "tokenizer" / "tokenizer.pkl"):
        if candidate.is_file():
            return TiktokenTokenizer.from_pickle(candidate)
    raise TrainError(f"tokenizer not found: {name} (give 'bytes' or the path of a tokenizer.pkl)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TrainError(f"--device must be auto, cpu or cuda[:N], got {name!r}") from None


def autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 (no autocast) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- optimisation ---------------------------------------------------------------------------------
def lr_at(step: int, num_iterations: int, base_lr: float) -> float:
    """Linear warmup, constant, then linear decay to ``FINAL_LR_FRAC`` of ``base_lr``."""
    warmup = max(1, round(num_iterations * WARMUP_FRAC))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    warmdown = max(1, round(num_iterations * WARMDOWN_FRAC))
    left = num_iterations - step
    if left < warmdown:
        return base_lr * (FINAL_LR_FRAC + (1 - FINAL_LR_FRAC) * left / warmdown)
    return base_lr


def make_optimizer(model: UNet, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay
    )


def train_step(
    model: UNet,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float | None = None,
) -> float:
    """One AdamW update on the batch (x, y) [B, T]; returns the loss (nats per token) before it.

    >>> loss = train_step(model, make_optimizer(model, 3e-3), x, y)  # doctest: +SKIP
    """
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    with autocast(x.device):
        logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(
    model: UNet, windows: torch.Tensor, token_bytes: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Held-out (nats per token, bits per byte) over windows [N, T + 1].

    Bits per byte = summed nats / ln 2 / summed bytes; targets that are special tokens (0 bytes,
    e.g. ``<|bos|>``) count in neither sum, so the number does not depend on the tokenizer.
    """
    device = model.lm_head.weight.device
    token_bytes = token_bytes.to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.long, device=device)
    n_tokens = torch.zeros((), dtype=torch.long, device=device)
    for chunk in windows.split(batch_size):
        chunk = chunk.to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        counted = token_bytes[y.flatten()]
        nats += (loss * (counted > 0)).sum(dtype=torch.float64)
        n_bytes += counted.sum()
        n_tokens += (counted > 0).sum()
    if int(n_bytes) == 0:
        raise TrainError("the held-out text has no bytes to score (only special tokens)")
    return float(nats / n_tokens), float(nats / (math.log(2) * n_bytes))


# --- the loop -------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Trainer:
    """One model, its optimizer and its data; ``run`` trains from ``start`` to the last step."""

    spec: TrainSpec
    model: UNet
    optimizer: torch.optim.Optimizer
    corpus: Corpus
    windows: torch.Tensor  # held-out windows [N, seq_len + 1]
    batch_size: int
    directory: Path

    def evaluate(self) -> tuple[float, float]:
        """Held-out (nats per token, bits per byte); printed to stdout."""
        return evaluate(self.model, self.windows, self.corpus.token_bytes, self.batch_size)

    def save(self, step: int, val_loss: float, val_bpb: float, loop_state: dict) -> Path:
        meta = {
            "val_bpb": val_bpb,
            "val_loss": val_loss,
            "user_config": self.spec.user_config(),
            "device_batch_size": self.batch_size,
            "max_seq_len": self.model.config.sequence_len,
            "learning_rate": self.spec.learning_rate,
            "loop_state": loop_state,
            "data": self.corpus.describe(),
            "trainer": "engine.train",
        }
        return save_training_state(self.model, self.optimizer, self.directory, step, meta)

    def run(self, start: int, loop_state: dict, progress_stream=None) -> TrainRecord:
        spec, model = self.spec, self.model
        device, seq_len = model.lm_head.weight.device, model.config.sequence_len
        val_loss, val_bpb = self.evaluate()
        val_bpb_start = val_bpb
        print(f"step {start:06d} | val_loss {val_loss:.4f} | val_bpb {val_bpb:.4f}", flush=True)
        best = min(val_bpb, loop_state.get("min_val_bpb") or math.inf)
        smooth = loop_state.get("smooth_train_loss")
        seconds, prior_seconds = 0.0, float(loop_state.get("total_training_time") or 0.0)
        progress = Progress(spec.num_iterations, start, progress_stream)
        step = start
        while step < spec.num_iterations:
            lr = lr_at(step, spec.num_iterations, spec.learning_rate)
            x, y = sample_batch(self.corpus.train, self.batch_size, seq_len, spec.seed, step)
            t0 = time.perf_counter()
            loss = train_step(model, self.optimizer, x.to(device), y.to(device), lr)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            seconds += dt
            step += 1
            if not math.isfinite(loss):
                raise TrainError(
                    f"training diverged at step {step}: loss is {loss}; lower --lr "
                    f"(was {spec.learning_rate:g})"
                )
            smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
            progress.update(step, smooth, x.numel(), dt, lr)
            save = step == spec.num_iterations or (spec.save_every and step % spec.save_every == 0)
            if save or (spec.eval_every and step % spec.eval_every == 0):
                val_loss, val_bpb = self.evaluate()
                best = min(best, val_bpb)
                progress.clear()
                print(
                    f"step {step:06d} | val_loss {val_loss:.4f} | val_bpb {val_bpb:.4f}", flush=True
                )
            if save:
                state = {
                    "min_val_bpb": best,
                    "smooth_train_loss": smooth,
                    "total_training_time": prior_seconds + seconds,
                }
                path = self.save(step, val_loss, val_bpb, state)
                progress.clear()
                print(f"saved {path}", flush=True)
        progress.close()
        if start >= spec.num_iterations:
            print(
                f"already at step {start} >= --num-iterations {spec.num_iterations}: "
                "nothing to train",
                flush=True,
            )
        tokens = (step - start) * self.batch_size * seq_len
        return TrainRecord(
            tag=model.config.tag,
            checkpoint_dir=str(self.directory),
            start_step=start,
            end_step=step,
            val_bpb_start=val_bpb_start,
            val_bpb_end=val_bpb,
            train_seconds=seconds,
            train_tokens_per_s=tokens / seconds if seconds else 0.0,
        )


def train(spec: TrainSpec, progress_stream=None) -> TrainRecord:
    """Run the training a spec describes; returns what it did.

    >>> train(TrainSpec(depth=(2, 2), model_dim=(64, 128), num_iterations=300))  # doctest: +SKIP
    """
    device = resolve_device(spec.device)
    tokenizer = resolve_tokenizer(spec.tokenizer)
    saved_seq_len, saved_head_dim = saved_shape(spec)
    seq_len = spec.seq_len or saved_seq_len or DEFAULT_SEQ_LEN
    config = build_config(spec, tokenizer.vocab_size, seq_len, spec.head_dim or saved_head_dim)
    directory = prepare_checkpoint_dir(spec)
    corpus = load_corpus(
        spec.data if spec.data is not None else DEFAULT_DATA_DIR, tokenizer, seq_len
    )
    if spec.overwrite:
        remove_checkpoints(directory)
    if spec.resume:
        model, optimizer, meta, start = resume_from(
            directory,
            config,
            device,
            lambda m: make_optimizer(m, spec.learning_rate, spec.weight_decay),
        )
        loop_state = meta.get("loop_state") or {}
    else:
        model = UNet(config).init_weights("reference", seed=spec.seed).to(device).train()
        optimizer = make_optimizer(model, spec.learning_rate, spec.weight_decay)
        start, loop_state = 0, {}
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s: %d parameters; %d files, %d train / %d held-out tokens; device %s",
        config.tag,
        n_params,
        len(corpus.files),
        corpus.train.numel(),
        corpus.val.numel(),
        device,
    )
    batch_size = spec.device_batch_size or (
        CUDA_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE
    )
    trainer = Trainer(
        spec=spec,
        model=model,
        optimizer=optimizer,
        corpus=corpus,
        windows=val_windows(corpus.val, seq_len, spec.eval_tokens),
        batch_size=batch_size,
        directory=directory,
    )
    return trainer.run(start, loop_state, progress_stream)


# --- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m engine.train",
        description="Train a UNet language model on local text; write nanochat-layout checkpoints.",
    )
    p.add_argument(
        "--depth",
        type=int,
        nargs="+",
        required=True,
        help="blocks per stage, even (half encoder, half decoder), e.g. 6 12",
    )
    p.add_argument(
        "--model-dim", type=int, nargs="+", required=True, help="width per stage, e.g. 768 1536"
    )
    p.add_argument(
        "--num-iterations", type=int, default=1000, help="optimizer steps in all (default 1000)"
    )
    p.add_argument(
        "--device-batch-size",
        type=int,
        help=f"sequences per step (default {CUDA_BATCH_SIZE} on CUDA, {CPU_BATCH_SIZE} on CPU)",
    )
    p.add_argument(
        "--data", help="a .txt file or a directory of them (default: engine/data/, shipped)"
    )
    p.add_argument(
        "--tokenizer", default="bytes", help="'bytes' (default) or a nanochat tokenizer.pkl"
    )
    p.add_argument(
        "--seq-len",
        type=int,
        help=f"tokens per sequence = model sequence_len "
        f"(default {DEFAULT_SEQ_LEN}, or the checkpoint's with --resume)",
    )
    p.add_argument(
        "--head-dim", type=int, help="default: largest even divisor of all widths, at most 128"
    )
    p.add_argument(
        "--lr",
        type=float,
        help="AdamW peak learning rate (default 3e-3 * min(1, sqrt(256/max width)))",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--save-every", type=int, default=0, help="checkpoint every N steps (default 0: at the end)"
    )
    p.add_argument(
        "--eval-every", type=int, default=100, help="held-out loss every N steps (0: start/end)"
    )
    p.add_argument(
        "--eval-tokens", type=int, default=2**17, help="held-out tokens per evaluation, at most"
    )
    p.add_argument("--base-dir", help="nanochat base dir (default: $NANOCHAT_BASE_DIR, else .)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint of this tag"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete this tag's checkpoints and start over"
    )
    p.add_argument("--seed", type=int, default=0, help="weights and batch order (default 0)")
    p.add_argument(
        "--device", default="auto", help="auto (default: cuda if available), cpu, cuda[:N]"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with a one-line ``error: ...`` on stderr for a bad request."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = TrainSpec(**{k: v for k, v in vars(args).items()})
        record = train(spec)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"done: {record.tag} steps {record.start_step}->{record.end_step}, val_bpb "
        f"{record.val_bpb_start:.4f} -> {record.val_bpb_end:.4f}, {record.train_seconds:.1f} s training, "
        f"{record.train_tokens_per_s:,.0f} tok/s, checkpoints in {record.checkpoint_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
