"""Every shipped job spec validates and expands (dry run); the checkpoint job runs on the
golden nanochat checkpoint in-process, prompt encoded with the checkpoint's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.grid import expand_cells
from orchestrator.spec.job import load_job_spec
from workers.worker import CellWorker

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))
GOLDEN_TAG = "d[2,2]-h[64,128]"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_spec_dry_runs(path, tmp_path, capsys, monkeypatch, nanochat_base):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(nanochat_base))
    overrides = [] if "checkpoint: auto" not in path.read_text() else [
        "--set", f"model.tag={GOLDEN_TAG}"]
    argv = ["submit", str(path), "--dry-run", "--results", str(tmp_path / "r"), *overrides]
    assert main(argv) == 0, capsys.readouterr().err
    assert "cells (dry run" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_sweep_is_small_enough_for_a_laptop():
    job = load_job_spec(str(JOBS[0].parent / "sweep.yaml"))
    cells = expand_cells(job)
    assert job.models[0].is_random and len(cells) <= 16
    assert {c.method for c in cells} == {"naive", "cached"}


def test_checkpoint_job_runs_on_the_golden_checkpoint(monkeypatch, nanochat_base):
    pytest.importorskip("engine.bench")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(nanochat_base))
    job = load_job_spec(str(JOBS[0].parent / "checkpoint.yaml"), [
        f"model.tag={GOLDEN_TAG}", "model.dtype=float32", "grid.batch_size=[2]",
        "grid.prompt_len=[12]", "grid.max_tokens=[4]", "measure.repeats=1"])
    (model,) = job.models
    assert model.step == 10 and model.vocab_size == 300
    worker = CellWorker()
    records = [worker.run(cell.to_dict()) for cell in expand_cells(job)]
    assert [r["status"] for r in records] == ["ok", "ok"], records[0]["error_detail"]
    assert records[0]["model_step"] == 10
    assert records[0]["tokens_sha256"] == records[1]["tokens_sha256"]
