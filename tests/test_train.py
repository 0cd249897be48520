"""The trainer (``engine.train``) and its data pipeline (``engine.data``), on tiny CPU models.

Runs go through ``main(argv)`` (what ``python -m engine.train`` calls), so the tests see the exit
codes and one-line errors a user sees.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import checkpoint_dir_for, list_steps, load_checkpoint
from engine.config import UNetConfig
from engine.data import (
    DEFAULT_DATA_DIR,
    load_corpus,
    sample_batch,
    split_documents,
    token_byte_lengths,
    val_windows,
)
from engine.engine import UNetEngine
from engine.model import UNet
from engine.naive import naive_generate
from engine.tokenizer import ByteTokenizer
from engine.train import (
    MAX_SEQ_LEN,
    TrainSpec,
    default_head_dim,
    evaluate,
    lr_at,
    main,
    make_optimizer,
    resolve_tokenizer,
    train_step,
)
from engine.train_progress import Progress

TAG = "d[2,2]-h[32,64]"
FIXTURE_TOKENIZER = (
    Path(__file__).parent / "fixtures" / "nanochat_unet" / "tokenizer" / "tokenizer.pkl"
)


def tiny_args(base: Path, *extra: str, iterations: int = 4) -> list[str]:
    """A d[2,2]-h[32,64] run on the shipped corpus: a second or so on two CPU cores."""
    return [
        "--depth", "2", "2", "--model-dim", "32", "64", "--num-iterations", str(iterations),
        "--seq-len", "32", "--device-batch-size", "4", "--eval-tokens", "256",
        "--base-dir", str(base), "--device", "cpu", *extra,
    ]  # fmt: skip


def run_error(capsys, argv: list[str]) -> str:
    """Run main(argv), expect exit code 2 and a one-line error; return the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# --- optimisation ---------------------------------------------------------------------------------
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    config = UNetConfig.from_tag(TAG, vocab_size=257, head_dim=32, sequence_len=32)
    model = UNet(config).init_weights("reference", seed=0)
    optimizer = make_optimizer(model, lr=3e-3)
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)
    losses = [train_step(model, optimizer, x, y) for _ in range(15)]
    assert losses[0] == pytest.approx(math.log(257), abs=0.01)  # reference init: ~uniform
    assert losses[-1] < losses[0] - 0.5


def test_lr_schedule_warms_up_holds_and_decays():
    lrs = [lr_at(step, 100, 1.0) for step in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
    assert lrs[50] == 1.0
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 1 / 20)
    assert all(b <= a for a, b in itertools.pairwise(lrs[50:]))


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab():
    config = UNetConfig.from_tag(TAG, vocab_size=257, head_dim=32, sequence_len=32)
    model = UNet(config).init_weights("reference", seed=0)  # lm_head std 1e-3: ~uniform logits
    corpus = load_corpus(DEFAULT_DATA_DIR, ByteTokenizer(), seq_len=32)
    nats, bpb = evaluate(model, val_windows(corpus.val, 32, 1024), corpus.token_bytes, batch_size=8)
    assert nats == pytest.approx(math.log(257), abs=0.01)
    assert bpb == pytest.approx(math.log2(257), abs=0.02)  # one byte per token


def test_default_head_dim_divides_every_width():
    assert default_head_dim((64, 128)) == 64
    assert default_head_dim((768, 1536)) == 128
    assert default_head_dim((192, 384)) == 96


# --- data -----------------------------------------------------------------------------------------
def test_shipped_corpus_is_large_enough_and_splits_every_file():
    corpus = load_corpus(DEFAULT_DATA_DIR, ByteTokenizer(), seq_len=256)
    assert corpus.text_bytes >= 50_000
    assert len(corpus.files) >= 4
    assert corpus.val.numel() >= 0.09 * corpus.text_bytes
    assert (corpus.train == ByteTokenizer.bos_token_id).sum() == len(corpus.files)


def test_batches_depend_only_on_seed_and_step():
    tokens = torch.arange(1000)
    x1, y1 = sample_batch(tokens, 4, 16, seed=3, step=7)
    x2, y2 = sample_batch(tokens, 4, 16, seed=3, step=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(y1, x1 + 1)  # targets are the next tokens
    assert not torch.equal(x1, sample_batch(tokens, 4, 16, seed=3, step=8)[0])


def test_split_falls_back_to_the_stream_tail_for_short_documents():
    train, val = split_documents([[1] * 10, [2] * 10], bos=0, seq_len=4)
    assert len(val) >= 5 and len(train) >= 5
    assert len(train) + len(val) == 22


def test_tiktoken_token_bytes_count_the_text_bytes():
    pytest.importorskip("tiktoken")
    tokenizer = resolve_tokenizer(str(FIXTURE_TOKENIZER.parent.parent))  # a base dir works too
    text = "hello world, the bees are humming"
    lengths = token_byte_lengths(tokenizer)
    assert int(lengths[tokenizer.encode(text)].sum()) == len(text.encode())
    assert lengths[tokenizer.bos_token_id] == 0


# --- runs and checkpoints -------------------------------------------------------------------------
def test_checkpoint_round_trips_through_load_checkpoint(tmp_path, capsys):
    assert main(tiny_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "val_bpb" in out and "saved" in out
    directory = checkpoint_dir_for(TAG, tmp_path)
    assert sorted(os.listdir(directory)) == [
        "meta_000004.json",
        "model_000004.pt",
        "optim_000004.pt",
    ]
    model, meta = load_checkpoint(directory)
    assert meta["step"] == 4 and meta["model_config"]["sequence_len"] == 32
    assert meta["model_config"]["n_layer"] == [2, 2] and meta["model_config"]["vocab_size"] == 257
    assert meta["user_config"]["depth"] == [2, 2] and meta["user_config"]["num_iterations"] == 4
    assert 0 < meta["val_bpb"] < 8.1 and meta["device_batch_size"] == 4
    state = torch.load(directory / "model_000004.pt", weights_only=True)  # a plain state dict
    assert list(state) == list(model.state_dict())
    json.loads((directory / "meta_000004.json").read_text())  # strict JSON


def test_resume_continues_from_the_saved_step_exactly(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(tiny_args(straight, iterations=6)) == 0
    assert main(tiny_args(resumed, "--save-every", "3", iterations=6)) == 0
    directory = checkpoint_dir_for(TAG, resumed)
    for name in ("model_000006.pt", "meta_000006.json", "optim_000006.pt"):
        (directory / name).unlink()  # as if the run had stopped after step 3
    capsys.readouterr()
    assert main(tiny_args(resumed, "--resume", iterations=6)) == 0
    assert "steps 3->6" in capsys.readouterr().out
    assert list_steps(directory) == [3, 6]
    a, _ = load_checkpoint(checkpoint_dir_for(TAG, straight))
    b, meta = load_checkpoint(directory)
    assert meta["step"] == 6
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_resume_takes_seq_len_from_the_checkpoint_and_refuses_another(tmp_path, capsys):
    assert main(tiny_args(tmp_path)) == 0
    argv = [a for a in tiny_args(tmp_path, "--resume", iterations=5)]
    i = argv.index("--seq-len")
    assert main(argv[:i] + argv[i + 2 :]) == 0  # no --seq-len: the checkpoint's 32
    line = run_error(capsys, tiny_args(tmp_path, "--resume", "--seq-len", "64", iterations=8))
    assert "has a different config: sequence_len=32 (this run: 64, --seq-len)" in line


def test_trained_checkpoint_generates_the_same_tokens_naive_and_cached(tmp_path, monkeypatch):
    argv = tiny_args(tmp_path, "--seq-len", "64", "--device-batch-size", "8", iterations=40)
    assert main(argv) == 0
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    model, meta = load_checkpoint(checkpoint_dir_for(TAG))  # the base dir from the environment
    assert meta["val_bpb"] < 6.0  # it learned something
    tokenizer = ByteTokenizer()
    engine = UNetEngine(model)
    for text in ("T", "The bees", "In winter the bees gather into a ball"):
        prompt = [tokenizer.bos_token_id, *tokenizer.encode(text)]
        naive = [int(col[0]) for col in naive_generate(model, prompt, max_tokens=24)]
        rows, _ = engine.generate_batch(prompt, max_tokens=24)
        assert rows[0][len(prompt) :] == naive, text


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    progress = Progress(40, stream=log)
    for step in range(1, 41):
        progress.update(step, 1.0, 100, 0.01, 1e-3)
    lines = log.getvalue().splitlines()
    assert len(lines) == 20 and lines[-1].startswith("step 40/40 | loss 1.0000")
    assert "10,000 tok/s" in lines[-1]
    term = Terminal()
    progress = Progress(40, stream=term)
    progress.MIN_REDRAW_S = 0.0
    progress.update(1, 2.0, 100, 0.01, 1e-3)
    progress.clear()
    assert term.getvalue().startswith("\rstep  1/40 | loss 2.0000") and "\n" not in term.getvalue()


# --- errors ---------------------------------------------------------------------------------------
def test_error_data_path_missing(tmp_path, capsys):
    line = run_error(capsys, tiny_args(tmp_path, "--data", str(tmp_path / "nope.txt")))
    assert line == f"error: data path not found: {tmp_path / 'nope.txt'}"


def test_error_data_empty(tmp_path, capsys):
    empty_dir = tmp_path / "corpus"
    empty_dir.mkdir()
    line = run_error(capsys, tiny_args(tmp_path, "--data", str(empty_dir)))
    assert line == f"error: data directory {empty_dir} holds no .txt files"
    (empty_dir / "a.txt").write_text("  \n")
    line = run_error(capsys, tiny_args(tmp_path, "--data", str(empty_dir)))
    assert line == f"error: data is empty: no text in {empty_dir / 'a.txt'}"


def test_error_data_smaller_than_two_sequences(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("x" * 60)
    line = run_error(capsys, tiny_args(tmp_path, "--data", str(small)))
    assert "data too small: 61 tokens cannot fill 2 sequences of --seq-len 32" in line


@pytest.mark.parametrize("seq_len", ["1", str(MAX_SEQ_LEN + 1)])
def test_error_seq_len_outside_the_model_limit(tmp_path, capsys, seq_len):
    line = run_error(capsys, tiny_args(tmp_path, "--seq-len", seq_len))
    assert line == f"error: --seq-len must lie in [2, 1048576] (2**20), got {seq_len}"


def test_error_seq_len_too_short_for_the_stages(tmp_path, capsys):
    argv = tiny_args(tmp_path, "--seq-len", "2")
    argv[argv.index("2", 1) : argv.index("--model-dim")] = ["2", "2", "2"]  # three stages
    argv[argv.index("32", 4) : argv.index("--num-iterations")] = ["32", "32", "32"]
    line = run_error(capsys, argv)
    assert (
        line
        == "error: --seq-len 2 is too short for 3 stages: the deepest stage needs 4 tokens per sequence"
    )


def test_error_depth_and_model_dim_lengths_differ(tmp_path, capsys):
    line = run_error(
        capsys, ["--depth", "2", "2", "--model-dim", "64", "--base-dir", str(tmp_path)]
    )
    assert (
        line
        == "error: --depth [2, 2] and --model-dim [64] differ in length (2 vs 1): give one value of each per stage"
    )


def test_error_model_dim_not_a_multiple_of_head_dim(tmp_path, capsys):
    line = run_error(capsys, tiny_args(tmp_path, "--head-dim", "48"))
    assert line == "error: --model-dim 32 is not a multiple of --head-dim 48"


def test_error_odd_depth(tmp_path, capsys):
    argv = tiny_args(tmp_path)
    argv[1] = "3"
    line = run_error(capsys, argv)
    assert line.startswith(
        "error: --depth [3, 2] --model-dim [32, 64]: n_layer[0] must be a positive even"
    )


def test_error_base_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = run_error(capsys, tiny_args(blocker))
    assert line.startswith(f"error: base dir {blocker} is not writable: cannot write in ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_error_base_dir_read_only(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    line = run_error(capsys, tiny_args(read_only))
    assert (
        line.startswith(f"error: base dir {read_only} is not writable")
        and "Permission denied" in line
    )


def test_error_existing_checkpoints_without_resume(tmp_path, capsys):
    assert main(tiny_args(tmp_path)) == 0
    line = run_error(capsys, tiny_args(tmp_path))
    assert line.endswith(
        "already holds checkpoints (latest step 4): pass --resume to continue or --overwrite to start over"
    )
    assert main(tiny_args(tmp_path, "--overwrite", iterations=2)) == 0
    assert list_steps(checkpoint_dir_for(TAG, tmp_path)) == [2]


def test_error_resume_without_a_checkpoint(tmp_path, capsys):
    line = run_error(capsys, tiny_args(tmp_path, "--resume"))
    assert (
        line == f"error: --resume: no checkpoint to resume in {checkpoint_dir_for(TAG, tmp_path)}"
    )


def test_spec_rejects_resume_with_overwrite():
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        TrainSpec(depth=(2,), model_dim=(64,), resume=True, overwrite=True)


def test_module_exits_2_with_one_line_and_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "engine.train", "--depth", "2", "--model-dim", "64", "128"]
    done = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "error: --depth [2] and --model-dim [64, 128] differ in length (1 vs 2): give one value of each per stage"
    )
