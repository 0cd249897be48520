"""Run manifests: written atomically beside the dataset, completed at the end of the run, joined
to result rows by run_id; and one real tiny `submit --plot` end to end (manifest, line progress,
query --join-manifest, PNGs)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from orchestrator.cli import main
from orchestrator.reports.dataset import load_results
from orchestrator.run.manifest import Invocation, RunManifest, read_manifests
from orchestrator.spec.job import load_job_spec
from tests.results_data import write_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_written_then_completed(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: job\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n")
    job = load_job_spec(str(spec), ["measure.repeats=5"])
    invocation = Invocation(argv=("python", "-m", "orchestrator", "submit", str(spec), "--set",
                                  "measure.repeats=5"), spec_file=str(spec),
                            overrides=("measure.repeats=5",))
    manifest = RunManifest.start(tmp_path / "job", "r1", job, invocation, cells_to_run=2,
                                 skipped=0, git_commit="abc123-dirty")
    path = tmp_path / "job" / "_manifests" / "r1.json"
    first = json.loads(path.read_text())
    assert first["status"] == "running" and first["finished_at"] is None
    assert first["git_commit"] == "abc123" and first["git_dirty"] is True
    assert first["spec"]["measure"]["repeats"] == 5  # as resolved, with the override
    assert first["spec"]["models"][0]["tag"] == "d[2]-h[64]"
    assert first["command"].endswith("submit " + str(spec) + " --set measure.repeats=5")
    manifest.finish("finished", {"ok": 2})
    done = json.loads(path.read_text())
    assert done["status"] == "finished" and done["statuses"] == {"ok": 2}
    assert datetime.fromisoformat(done["finished_at"]) >= datetime.fromisoformat(
        done["started_at"])
    assert [p.name for p in path.parent.iterdir()] == ["r1.json"]  # no temporary files left


def test_query_joins_the_manifest_by_run_id(tmp_path, capsys):
    job_dir = tmp_path / "sweep"
    write_sweep(job_dir, run_id="run-a")
    job = load_job_spec(str(_spec(tmp_path)))
    RunManifest.start(job_dir, "run-a", job, Invocation(argv=("python", "-m", "orchestrator",
                      "submit", "jobs/sweep.yaml")), cells_to_run=8, skipped=0,
                      git_commit="0123abcd").finish("finished", {"ok": 8})
    argv = ["query", str(job_dir), "--join-manifest", "--where", "run_status = 'finished'",
            "--columns", "cell_id,run_command,run_git_commit,run_git_dirty", "--format", "json"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 9
    assert rows[0]["run_command"] == "python -m orchestrator submit jobs/sweep.yaml"
    assert rows[0]["run_git_commit"] == "0123abcd" and rows[0]["run_git_dirty"] is False
    table = load_results(job_dir, manifests=True)  # list columns survive the join
    assert len(table.column("decode_step_ms").to_pylist()[1]) == 31
    # the manifest directory is invisible to plain dataset readers
    assert ds.dataset(job_dir, format="parquet").to_table().num_rows == 9
    # rows of a run without a manifest get nulls
    write_sweep(tmp_path / "other", run_id="run-b")
    other = load_results(tmp_path / "other", manifests=True)
    assert set(other.column("run_command").to_pylist()) == {None}


def _spec(tmp_path, body: str = ""):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""\
        name: job
        model: {tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 64, head_dim: 32}
        measure: {warmup: 1, repeats: 1}
        grid: {method: [naive, cached], batch_size: [1], prompt_len: [8], max_tokens: [4]}
        workers: {cpu_workers: 1}
    """) + body)
    return path


def test_real_submit_writes_manifest_progress_lines_and_plots(tmp_path, capsys):
    """The CLI as a user runs it, in a fresh process (its own local Ray, real argv)."""
    pytest.importorskip("engine.bench")
    try:
        import matplotlib  # noqa: F401

        plot = ["--plot"]  # also check submit --plot when the plot extra is installed
    except ImportError:
        plot = []
    results = tmp_path / "results"
    argv = ["submit", str(_spec(tmp_path)), "--results", str(results), "--set",
            "grid.max_tokens=[3]", *plot]
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    progress = [line for line in err.splitlines() if line.startswith("[")]
    assert [line[:9] for line in progress] == ["[1/2] ok ", "[2/2] ok "]
    assert "\r" not in err and "\x1b" not in err  # not a terminal: plain lines
    job_dir = results / "job"
    (manifest,) = read_manifests(job_dir)
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    assert manifest["run_id"] == rows[0]["run_id"]
    assert manifest["status"] == "finished" and manifest["statuses"] == {"ok": 2}
    assert manifest["overrides"] == ["grid.max_tokens=[3]"]
    assert manifest["spec"]["grid"]["axes"]["max_tokens"] == [3]
    assert manifest["command"] == "python -m orchestrator " + shlex.join(argv)
    assert manifest["git_commit"] and isinstance(manifest["git_dirty"], bool)
    assert main(["query", str(results), "--join-manifest", "--columns",
                 "method,run_status,run_overrides", "--format", "csv"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()[1:]) == [
        "cached,finished,grid.max_tokens=[3]", "naive,finished,grid.max_tokens=[3]"]
    if plot:
        names = sorted(p.name for p in (job_dir / "_plots").iterdir())
        assert names == ["decode_tok_s_vs_prompt_len.png", "peak_memory_vs_batch_size.png",
                         "speedup_vs_prompt_len.png", "ttft_vs_prompt_len.png"]


def test_manifest_on_an_object_store(s3_server, s3_bucket, tmp_path):
    """Through a storage URI (a real S3 server on 127.0.0.1): written atomically, no padding,
    no temporary key left, read back by URI, `run_error` joined like the other columns."""
    from orchestrator.run.manifest import manifest_table

    job = load_job_spec(str(_spec(tmp_path)))
    job_uri = s3_server.uri(s3_bucket, "results/job")
    manifest = RunManifest.start(job_uri, "r1", job, cells_to_run=2, skipped=0)
    assert manifest.uri == f"s3://{s3_bucket}/results/job/_manifests/r1.json"
    assert s3_server.keys(s3_bucket) == ["results/job/_manifests/r1.json"]
    manifest.finish("storage_error", {"ok": 1}, error="s3://x/part-1.parquet: refused")
    (data,) = read_manifests(job_uri)
    assert data["status"] == "storage_error" and data["pid"] == os.getpid()
    raw = s3_server.filesystem().open_input_stream(
        f"{s3_bucket}/results/job/_manifests/r1.json").read()
    assert not raw.endswith(b"  ")  # the full-disk reserve is for local files only
    table = manifest_table([data])
    assert table["run_error"].to_pylist() == ["s3://x/part-1.parquet: refused"]
    assert s3_server.keys(s3_bucket) == ["results/job/_manifests/r1.json"]
