"""Results on a real S3-protocol server (moto_server on 127.0.0.1, tests/s3server.py), through
the CLI as a user runs it: a full submit to `s3://...`, reading it back (summarize, query,
compare, plot, compact), and a driver SIGKILLed mid-run then resumed into the same URI."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from orchestrator.run.manifest import read_manifests
from orchestrator.run.storage import resolve

ROOT = Path(__file__).resolve().parents[1]
JOB = """\
    name: {name}
    model: {{tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 64, head_dim: 32}}
    measure: {{warmup: 1, repeats: 1}}
    grid: {{method: [naive, cached], batch_size: {batch}, prompt_len: [8], max_tokens: [{n}]}}
    workers: {{cpu_workers: 1}}
"""


def _spec(tmp_path: Path, name: str, batch: str = "[1]", n: int = 4) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(JOB.format(name=name, batch=batch, n=n)))
    return path


def _cli(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(uri: str) -> list[dict]:
    job = resolve(uri)
    return ds.dataset(job.path, filesystem=job.fs, format="parquet").to_table().to_pylist()


def test_submit_to_s3_then_read_it_back(s3_server, s3_bucket, tmp_path):
    pytest.importorskip("engine.bench")
    env = s3_server.env()
    results = s3_server.uri(s3_bucket, "results")
    done = _cli(["submit", str(_spec(tmp_path, "job")), "--results", results], env)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = f"s3://{s3_bucket}/results/job"
    assert f"results in {shown}" in done.stderr
    assert "endpoint_override" not in done.stderr + done.stdout  # messages show the plain URI
    keys = s3_server.keys(s3_bucket, "results/job")
    parts = [k for k in keys if k.startswith("part-")]
    assert len(parts) == 2 and not any(k.startswith((".tmp-", "_lock")) for k in keys), keys
    job_uri = s3_server.uri(s3_bucket, "results/job")
    (manifest,) = read_manifests(job_uri)
    assert manifest["status"] == "finished" and manifest["statuses"] == {"ok": 2}
    assert {r["status"] for r in _rows(job_uri)} == {"ok"}  # plain pyarrow reads the prefix

    summary = _cli(["summarize", results], env)
    assert summary.returncode == 0, summary.stderr
    assert shown in summary.stdout and "decode tok/s" in summary.stdout
    query = _cli(["query", job_uri, "--columns", "method,status,run_status", "--join-manifest",
                  "--format", "json"], env)
    assert query.returncode == 0, query.stderr
    assert sorted((r["method"], r["status"], r["run_status"]) for r in json.loads(query.stdout)) == [
        ("cached", "ok", "finished"), ("naive", "ok", "finished")]
    compare = _cli(["compare", job_uri, job_uri, "--format", "json"], env)
    assert compare.returncode == 0, compare.stderr
    if importlib.util.find_spec("matplotlib"):
        plots = _cli(["plot", job_uri, "--out", str(tmp_path / "plots")], env)
        assert plots.returncode == 0, plots.stderr
        assert (tmp_path / "plots" / "decode_tok_s_vs_prompt_len.png").is_file()
    compact = _cli(["compact", results], env)
    assert compact.returncode == 0, compact.stderr
    assert len(_rows(job_uri)) == 2  # compaction keeps every row exactly once
    # a resubmit of the finished job runs nothing
    again = _cli(["submit", str(_spec(tmp_path, "job")), "--results", results], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 run, 2 skipped (already ok)" in again.stderr


def test_missing_results_uri_is_one_line(s3_server, s3_bucket):
    out = _cli(["query", s3_server.uri(s3_bucket, "nothing/here")], s3_server.env())
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: s3://{s3_bucket}/nothing/here: no such results directory"


def test_sigkill_mid_run_then_resume_into_the_same_uri(s3_server, s3_bucket, tmp_path):
    """The driver is SIGKILLed after a few cells: the finished ones are whole objects, the
    lock object it left names a dead pid on this host and is taken over, the resume runs only
    the rest, the killed run's manifest says `killed`, and every cell has exactly one ok row."""
    pytest.importorskip("engine.bench")
    spec = _spec(tmp_path, "kill", batch="[1, 2, 3, 4, 5, 6]", n=24)
    results = s3_server.uri(s3_bucket, "results")
    argv = [sys.executable, "-m", "orchestrator", "-q", "submit", str(spec), "--results", results]
    env = {**os.environ, **s3_server.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def parts() -> list[str]:
        return [k for k in s3_server.keys(s3_bucket, "results/kill") if k.startswith("part-")]

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(parts()) < 3 and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        try:  # the driver's own Ray processes share its session: end them too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = len(parts())
    assert 3 <= before < 12, "the driver finished before it could be killed"
    assert "_lock" in s3_server.keys(s3_bucket, "results/kill")  # left by the killed driver
    job_uri = s3_server.uri(s3_bucket, "results/kill")
    (killed,) = read_manifests(job_uri)
    assert killed["status"] == "running"

    again = _cli(["submit", str(spec), "--results", results], s3_server.env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "taking over the lock of a submit that is gone" in again.stderr
    assert f"{12 - before} run, {before} skipped (already ok)" in again.stderr
    rows = _rows(job_uri)
    ok = [r["cell_id"] for r in rows if r["status"] == "ok"]
    assert len(rows) == len(ok) == len(set(ok)) == 12
    manifests = {m["run_id"]: m for m in read_manifests(job_uri)}
    assert manifests[killed["run_id"]]["status"] == "killed"
    assert "is not running" in manifests[killed["run_id"]]["error"]
    assert sorted(m["status"] for m in manifests.values()) == ["finished", "killed"]
    keys = s3_server.keys(s3_bucket, "results/kill")
    assert not any(k.startswith(".tmp-") or "/.tmp-" in k or k == "_lock" for k in keys), keys
