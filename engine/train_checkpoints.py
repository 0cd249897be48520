"""The trainer's checkpoint directory: create and check it, save the optimizer state, resume.

Each save writes ``optim_<step:06d>.pt`` (the optimizer state, for ``--resume``) before the
nanochat-layout ``model_<step:06d>.pt`` and ``meta_<step:06d>.json`` (``engine.checkpoint``), each
file atomically, so a model file always has its optimizer state beside it.

>>> directory = prepare_checkpoint_dir(spec)  # doctest: +SKIP
>>> save_training_state(model, optimizer, directory, 300, {"val_bpb": 2.1})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.checkpoint import (
    atomic_write,
    checkpoint_dir_for,
    config_from_meta,
    list_steps,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from engine.config import UNetConfig
from engine.errors import TrainError
from engine.model import UNet

if TYPE_CHECKING:
    from engine.train import TrainSpec

_CHECKPOINT_FILES = ("model_", "meta_", "optim_")
_CLI_NAMES = {
    "sequence_len": "--seq-len",
    "vocab_size": "--tokenizer",
    "n_head": "--head-dim",
    "n_kv_head": "--head-dim",
}


def prepare_checkpoint_dir(spec: TrainSpec) -> Path:
    """Create ``<base>/base_checkpoints/<tag>`` and prove it writable; refuse to mix two runs'
    checkpoints unless ``--resume`` or ``--overwrite`` says how."""
    directory = checkpoint_dir_for(spec.tag, spec.base)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise TrainError(
            f"base dir {spec.base} is not writable: cannot write in {directory}: {err.strerror}"
        ) from None
    steps = list_steps(directory)
    if spec.resume and not steps:
        raise TrainError(f"--resume: no checkpoint to resume in {directory}")
    if steps and not spec.resume and not spec.overwrite:
        raise TrainError(
            f"{directory} already holds checkpoints (latest step {steps[-1]}): "
            "pass --resume to continue or --overwrite to start over"
        )
    return directory


def remove_checkpoints(directory: Path) -> None:
    """Delete the model, meta and optimizer files of ``directory`` (``--overwrite``)."""
    for name in os.listdir(directory):
        if name.startswith(_CHECKPOINT_FILES):
            (directory / name).unlink()


def save_training_state(
    model: UNet, optimizer: torch.optim.Optimizer, directory: Path, step: int, meta: dict
) -> Path:
    """``optim_<step>.pt`` first, then the model and meta (each atomic, mode from the umask): a
    model file that exists always has its optimizer state beside it."""
    state = {"step": step, "optimizer": optimizer.state_dict()}
    atomic_write(directory / f"optim_{step:06d}.pt", lambda tmp: torch.save(state, tmp))
    return save_checkpoint(model, directory, step, meta)


def _config_mismatch(saved: UNetConfig, config: UNetConfig) -> str:
    saved_d, new_d = saved.to_dict(), config.to_dict()
    diffs = [
        f"{k}={saved_d[k]} (this run: {new_d[k]}, {_CLI_NAMES.get(k, '--depth/--model-dim')})"
        for k in saved_d
        if saved_d[k] != new_d[k]
    ]
    return "; ".join(diffs)


def resume_from(
    directory: Path,
    config: UNetConfig,
    device: torch.device,
    new_optimizer: Callable[[UNet], torch.optim.Optimizer],
) -> tuple[UNet, torch.optim.Optimizer, dict, int]:
    """The latest checkpoint's model (in train mode), optimizer, meta and step, after checking it
    has ``config``; ``new_optimizer(model)`` builds the optimizer its saved state is loaded into."""
    step = list_steps(directory)[-1]
    meta = read_meta(directory, step)
    saved = config_from_meta(meta, directory / f"meta_{step:06d}.json")
    if saved != config:
        raise TrainError(
            f"--resume: the checkpoint at step {step} in {directory} has a different "
            f"config: {_config_mismatch(saved, config)}"
        )
    optim_path = directory / f"optim_{step:06d}.pt"
    if not optim_path.is_file():
        raise TrainError(
            f"--resume: {optim_path} is missing (no optimizer state for step {step}); "
            "pass --overwrite to start over"
        )
    model, meta = load_checkpoint(directory, step, device=device)
    optimizer = new_optimizer(model)
    try:
        state = torch.load(optim_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    except Exception as err:  # noqa: BLE001 (torch raises many types for truncated or foreign files)
        raise TrainError(
            f"--resume: unreadable optimizer state {optim_path}: {type(err).__name__}: {err}"
        ) from None
    return model.train(), optimizer, meta, step


def saved_shape(spec: TrainSpec) -> tuple[int | None, int | None]:
    """(sequence_len, head_dim) of the latest checkpoint, for --resume without --seq-len or
    --head-dim; (None, None) without --resume or a checkpoint."""
    directory = checkpoint_dir_for(spec.tag, spec.base)
    steps = list_steps(directory) if directory.is_dir() else []
    if not spec.resume or not steps:
        return None, None
    meta = read_meta(directory, steps[-1])
    saved = config_from_meta(meta, directory / f"meta_{steps[-1]:06d}.json")
    return saved.sequence_len, saved.head_dim
