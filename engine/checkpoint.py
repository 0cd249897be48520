"""nanochat checkpoint layout: ``<base>/base_checkpoints/<tag>/model_<step:06d>.pt`` + ``meta_<step:06d>.json``.

Tag directories contain literal brackets (``d[6,12]-h[768,1536]``), which are glob character
classes: steps are found by listing the directory, never by globbing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.config import UNetConfig
from engine.errors import CheckpointError, ConfigError
from engine.model import UNet

_MODEL_FILE = re.compile(r"^model_(\d+)\.pt$")
MAX_KEYS_SHOWN = 4


def base_dir(base: str | os.PathLike | None = None) -> Path:
    """The nanochat base directory: the argument, else ``$NANOCHAT_BASE_DIR``."""
    if base is None:
        base = os.environ.get("NANOCHAT_BASE_DIR")
        if not base:
            raise CheckpointError("no base directory given and $NANOCHAT_BASE_DIR is not set")
    return Path(base)


def checkpoint_dir_for(tag: str, base: str | os.PathLike | None = None) -> Path:
    """``<base>/base_checkpoints/<tag>``."""
    return base_dir(base) / "base_checkpoints" / tag


def list_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    """Steps with a model file in the directory, ascending."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    return sorted(int(m.group(1)) for name in os.listdir(path) if (m := _MODEL_FILE.match(name)))


def resolve_step(checkpoint_dir: str | os.PathLike, step: int | None = None) -> int:
    """The requested step if present, else the latest one."""
    steps = list_steps(checkpoint_dir)
    if not steps:
        raise CheckpointError(f"no model_<step>.pt files in {checkpoint_dir}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"step {step} not found in {checkpoint_dir} (available: {steps})")
    return step


def read_meta(checkpoint_dir: str | os.PathLike, step: int) -> dict[str, Any]:
    path = Path(checkpoint_dir) / f"meta_{step:06d}.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"metadata file missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"unreadable metadata file {path}: {err}") from None
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise CheckpointError(f"{path} has no 'model_config'")
    return meta


def config_from_meta(meta: dict[str, Any], path: Path) -> UNetConfig:
    model_config = meta["model_config"]
    if isinstance(model_config.get("n_layer"), int):
        raise CheckpointError(
            f"{path} describes a flat nanochat GPT (integer n_layer={model_config['n_layer']}), "
            "not a UNet: a UNet lists one n_layer entry per stage"
        )
    try:
        return UNetConfig.from_dict(model_config)
    except ConfigError as err:
        raise CheckpointError(f"{path}: invalid model_config: {err}") from None


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else ""
            parts.append(f"{label} keys: {', '.join(keys[:MAX_KEYS_SHOWN])}{more}")
    return "; ".join(parts)


def load_checkpoint(
    checkpoint_dir: str | os.PathLike,
    step: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[UNet, dict[str, Any]]:
    """Load ``model_<step>.pt`` (latest when ``step`` is None) into a UNet in eval mode.

    >>> model, meta = load_checkpoint("base/base_checkpoints/d[2,2]-h[64,128]")  # doctest: +SKIP
    """
    checkpoint_dir = Path(checkpoint_dir)
    step = resolve_step(checkpoint_dir, step)
    meta = read_meta(checkpoint_dir, step)
    config = config_from_meta(meta, checkpoint_dir / f"meta_{step:06d}.json")
    model_path = checkpoint_dir / f"model_{step:06d}.pt"
    try:
        state_dict = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises many types for truncated/corrupt files)
        raise CheckpointError(f"unreadable checkpoint {model_path}: {type(err).__name__}: {err}") from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{model_path} does not hold a state dict")
    model = UNet(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        detail = _describe_mismatch(missing, unexpected, shapes)
        raise CheckpointError(f"{model_path} does not match its config {config.tag}: {detail}")
    model.load_state_dict(state_dict, strict=True)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
    return model.eval(), meta


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    The file gets the mode the umask gives new files (not mkstemp's 0600); on any error the
    temporary file is removed and ``path`` is left as it was.

    >>> atomic_write(Path("meta.json"), lambda tmp: Path(tmp).write_text("{}"))  # doctest: +SKIP
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; follow the umask like nanochat's
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: UNet, checkpoint_dir: str | os.PathLike, step: int, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model_<step>.pt`` and ``meta_<step>.json`` atomically; return the model path."""
    checkpoint_dir = Path(checkpoint_dir)
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create checkpoint directory {checkpoint_dir}: {err.strerror}") from None
    if not os.access(checkpoint_dir, os.W_OK):
        raise CheckpointError(f"checkpoint directory is not writable: {checkpoint_dir}")
    meta = {**(meta or {}), "step": step, "model_config": model.config.to_dict()}
    model_path = checkpoint_dir / f"model_{step:06d}.pt"
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # nanochat's layout
    atomic_write(model_path, lambda tmp: torch.save(state_dict, tmp))
    meta_text = json.dumps(meta, indent=2)
    atomic_write(checkpoint_dir / f"meta_{step:06d}.json", lambda tmp: Path(tmp).write_text(meta_text))
    return model_path
