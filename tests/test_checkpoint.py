"""nanochat checkpoint layout: round trips and every load error, each naming the path."""

import json
import shutil

import pytest
import torch

from engine.checkpoint import checkpoint_dir_for, list_steps, load_checkpoint, save_checkpoint
from engine.errors import CheckpointError
from tests.helpers import tiny_model


def test_round_trip_in_a_bracketed_tag_directory(tmp_path):
    model = tiny_model(3)
    directory = checkpoint_dir_for(model.config.tag, tmp_path)
    assert "[" in directory.name
    save_checkpoint(model, directory, step=5, meta={"val_bpb": 1.5})
    save_checkpoint(model, directory, step=12)
    assert list_steps(directory) == [5, 12]
    loaded, meta = load_checkpoint(directory)  # latest step
    assert meta["step"] == 12 and loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    _, meta5 = load_checkpoint(directory, step=5)
    assert meta5["val_bpb"] == 1.5
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_nanochat_base_dir_env(nanochat_base, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(nanochat_base))
    model, meta = load_checkpoint(checkpoint_dir_for("d[2,2]-h[64,128]"), step=10)
    assert meta["step"] == 10 and model.config.tag == "d[2,2]-h[64,128]"


def test_load_as_bfloat16(golden_dir):
    model, _ = load_checkpoint(golden_dir, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2, 3]])).dtype == torch.float32


@pytest.fixture()
def ckpt(tmp_path, golden_dir):
    directory = tmp_path / "base_checkpoints" / "d[2,2]-h[64,128]"
    shutil.copytree(golden_dir, directory)
    return directory


def _error(directory, step=None) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(directory, step=step)
    return str(err.value)


def test_missing_directory(tmp_path):
    assert "checkpoint directory not found" in _error(tmp_path / "nope")


def test_no_steps(tmp_path):
    assert f"no model_<step>.pt files in {tmp_path}" in _error(tmp_path)


def test_missing_step(ckpt):
    assert "step 7 not found" in _error(ckpt, 7) and "[10]" in _error(ckpt, 7)


def test_meta_without_model_config(ckpt):
    (ckpt / "meta_000010.json").write_text(json.dumps({"step": 10}))
    assert "has no 'model_config'" in _error(ckpt)


def test_flat_gpt_checkpoint_is_named(ckpt):
    meta = json.loads((ckpt / "meta_000010.json").read_text())
    meta["model_config"]["n_layer"] = 12
    (ckpt / "meta_000010.json").write_text(json.dumps(meta))
    assert "flat nanochat GPT" in _error(ckpt)


def test_state_dict_mismatch_lists_keys(ckpt):
    state = torch.load(ckpt / "model_000010.pt", weights_only=True)
    del state["lm_head.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, ckpt / "model_000010.pt")
    message = _error(ckpt)
    assert "missing keys: lm_head.weight" in message and "unexpected keys: extra.weight" in message


def test_truncated_file(ckpt):
    data = (ckpt / "model_000010.pt").read_bytes()
    (ckpt / "model_000010.pt").write_bytes(data[: len(data) // 3])
    message = _error(ckpt)
    assert "unreadable checkpoint" in message and "model_000010.pt" in message


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match="cannot create checkpoint directory"):
        save_checkpoint(tiny_model(1), blocker / "sub", step=1)


def test_weights_stay_column_major_and_files_stay_nanochat_contiguous(tmp_path, golden_dir):
    """The model keeps Linear weights as transposed (in, out) buffers for fast CPU decode; the
    files it writes are plain contiguous state dicts, as nanochat writes them."""
    model, _ = load_checkpoint(golden_dir, dtype=torch.bfloat16)
    weight = model.encoder_blocks(0)[0].mlp.c_fc.weight
    assert weight.t().is_contiguous() and weight.dtype == torch.bfloat16
    save_checkpoint(model, tmp_path / "ckpt", step=1)
    saved = torch.load(tmp_path / "ckpt" / "model_000001.pt", weights_only=True)
    assert all(tensor.is_contiguous() for tensor in saved.values())
