"""Storage faults end in one line naming the path and the cause, exit code 3, no traceback;
finished rows stay and the run's manifest says how it ended. Real faults: a 1 MiB tmpfs filled
mid-run, a tmpfs remounted read-only (both skipped where this process may not mount), a
directory where the lock file belongs, a file where a directory belongs (the results root,
`_manifests`; a `_ray` file is harmless: Ray's log is kept elsewhere), a dangling symlink as the
job dir; and a driver that died without a word, marked `killed` by the next submit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.run.manifest import RunManifest, mark_dead_runs, read_manifests
from orchestrator.run.storage import resolve
from orchestrator.spec.job import load_job_spec
from tests.results_data import write_sweep

ROOT = Path(__file__).resolve().parents[1]
STORAGE_EXIT = 3


def _spec(tmp_path: Path, batch: str = "[1]", n: int = 4) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: job
        model: {{tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 64, head_dim: 32}}
        measure: {{warmup: 1, repeats: 1}}
        grid: {{method: [naive, cached], batch_size: {batch}, prompt_len: [8], max_tokens: [{n}]}}
        workers: {{cpu_workers: 1}}
    """))
    return path


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The last stderr line, after checking there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    """A real tmpfs of `size` at `where`, or a skip where this process may not mount one."""
    where.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def _remount(where: Path, mode: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {mode}: {done.stderr.strip()[:200]}")


# -- wrong file types (no Ray needed: each fails before it starts) ---------------------------
def test_lock_that_is_a_directory(tmp_path):
    (tmp_path / "results" / "job" / "_lock").mkdir(parents=True)
    proc = _cli("submit", str(_spec(tmp_path)), "--results", str(tmp_path / "results"))
    assert proc.returncode == STORAGE_EXIT
    assert _one_line(proc) == (
        f"error: {tmp_path}/results/job/_lock: is a directory where a file is expected")


def test_job_dir_that_is_a_dangling_symlink(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "job").symlink_to(tmp_path / "gone")
    proc = _cli("submit", str(_spec(tmp_path)), "--results", str(tmp_path / "results"))
    assert proc.returncode == STORAGE_EXIT
    assert _one_line(proc) == (
        f"error: {tmp_path}/results/job: is a dangling symlink (to {tmp_path}/gone)")
    assert not (tmp_path / "gone").exists()


def test_results_root_that_is_a_file(tmp_path):
    (tmp_path / "results").write_text("not a directory")
    proc = _cli("submit", str(_spec(tmp_path)), "--results", str(tmp_path / "results"))
    assert proc.returncode == STORAGE_EXIT
    assert _one_line(proc) == (
        f"error: {tmp_path}/results: is a file where a directory is expected")


def test_manifest_dir_that_is_a_file(tmp_path):
    write_sweep(tmp_path / "results" / "job")
    (tmp_path / "results" / "job" / "_manifests").write_text("oops")
    proc = _cli("submit", str(_spec(tmp_path)), "--results", str(tmp_path / "results"))
    assert proc.returncode == STORAGE_EXIT
    assert _one_line(proc) == (
        f"error: {tmp_path}/results/job/_manifests: is a file where a directory is expected")
    assert ds.dataset(tmp_path / "results" / "job", format="parquet").count_rows() == 9
    # readers are not bothered by it
    assert _cli("query", str(tmp_path / "results" / "job"), "--limit", "1").returncode == 0


# -- read-only -------------------------------------------------------------------------------
def test_read_only_results_root(tmp_path):
    with _tmpfs(tmp_path / "mnt", "4m") as mnt:
        write_sweep(mnt / "results" / "old")  # rows written before the mount went read-only
        _remount(mnt, "ro")
        proc = _cli("submit", str(_spec(tmp_path)), "--results", str(mnt / "results"))
        assert proc.returncode == STORAGE_EXIT
        assert _one_line(proc) == f"error: {mnt}/results/job: read-only file system"
        summary = _cli("summarize", str(mnt / "results"))  # readers need no write access
        assert summary.returncode == 0, summary.stderr
        assert f"{mnt}/results/old" in summary.stdout
        assert ds.dataset(mnt / "results" / "old", format="parquet").count_rows() == 9


# -- disk full mid-run -----------------------------------------------------------------------
def _fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem is full."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


def test_disk_full_mid_run_keeps_rows_and_says_so(tmp_path):
    pytest.importorskip("engine.bench")
    with _tmpfs(tmp_path / "mnt", "1m") as mnt:
        results = mnt / "results"
        job_dir = results / "job"
        argv = [sys.executable, "-m", "orchestrator", "submit",
                str(_spec(tmp_path, batch="[1, 2, 3, 4, 5, 6]", n=24)), "--results", str(results)]
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None and not list(
                    job_dir.glob("part-*")):
                time.sleep(0.02)
            _fill(mnt / "filler")  # the disk is full from here on
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == STORAGE_EXIT, err[-3000:]
        line = _one_line(subprocess.CompletedProcess(argv, proc.returncode, out, err))
        assert line.startswith(f"error: {job_dir}/") and line.endswith(
            ": no space left on device (the disk is full)"), line
        parts = sorted(job_dir.glob("part-*.parquet"))
        assert 1 <= len(parts) < 12
        for part in parts:
            pq.read_table(part)  # every saved row is whole
        leftovers = [p.name for p in job_dir.rglob(".tmp-*")]
        assert leftovers == []  # no temporary file (0-byte manifest or half a part) left
        (manifest,) = read_manifests(job_dir)
        assert manifest["status"] == "storage_error"
        assert "no space left on device" in manifest["error"]
        assert sum(manifest["statuses"].values()) >= 1

        (mnt / "filler").unlink()  # space again: the same submit resumes
        (job_dir / "_ray").write_text("a file")  # Ray's log lives elsewhere: harmless here
        again = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               capture_output=True, text=True, timeout=240, check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        rows = ds.dataset(job_dir, format="parquet").to_table(columns=["cell_id", "status"])
        ok = [r["cell_id"] for r in rows.to_pylist() if r["status"] == "ok"]
        assert len(ok) == len(set(ok)) == 12
        statuses = sorted(m["status"] for m in read_manifests(job_dir))
        assert statuses == ["finished", "storage_error"]


# -- a driver that died without a word -------------------------------------------------------
def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_runs_of_dead_drivers_are_marked_killed(tmp_path):
    spec = _spec(tmp_path)
    job = load_job_spec(str(spec))
    job_dir = tmp_path / "results" / "job"
    mine = RunManifest.start(job_dir, "r-alive", job, cells_to_run=2, skipped=0)
    dead = RunManifest.start(job_dir, "r-dead", job, cells_to_run=2, skipped=0)
    dead.data["pid"] = _dead_pid()  # as if a SIGKILLed driver had written it
    dead.location.write_atomic(dead.name, json.dumps(dead.data).encode())
    (job_dir / ".tmp-part-x.parquet").write_bytes(b"half")  # what a killed writer leaves
    assert mark_dead_runs(job_dir) == ["r-dead"]
    by_id = {m["run_id"]: m for m in read_manifests(job_dir)}
    assert by_id["r-alive"]["status"] == "running"  # this process is alive: left alone
    assert by_id["r-dead"]["status"] == "killed"
    assert f"pid {dead.data['pid']} on this host is not running" in by_id["r-dead"]["error"]
    assert not (job_dir / ".tmp-part-x.parquet").exists()
    mine.finish("finished", {"ok": 2})
    assert mark_dead_runs(resolve(job_dir)) == []


def test_manifest_fits_in_place_on_a_full_disk(tmp_path):
    """With the disk full, the final status still lands (in the space the running manifest
    reserved), and no 0-byte temporary is left."""
    job = load_job_spec(str(_spec(tmp_path)))
    with _tmpfs(tmp_path / "mnt", "256k") as mnt:
        manifest = RunManifest.start(mnt / "job", "r1", job, cells_to_run=2, skipped=0)
        _fill(mnt / "filler")
        manifest.finish("storage_error", {"ok": 1},
                        error=f"{mnt}/job/part-x.parquet: no space left on device")
        (data,) = read_manifests(mnt / "job")
        assert data["status"] == "storage_error" and data["statuses"] == {"ok": 1}
        assert [p.name for p in (mnt / "job" / "_manifests").iterdir()] == ["r1.json"]
