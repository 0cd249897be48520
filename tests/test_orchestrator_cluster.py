"""The driver against Ray clusters it did not start, each in a fresh process: GPU pinning with
GPUs declared on a CPU machine, a two-node cluster on one machine, and the plain CLI starting its
own local Ray with Ray's chatter kept out of the terminal."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

JOB = """\
name: job
model: {tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 64,
        head_dim: 32}
grid: {method: [cached], batch_size: [1, 2, 3, 4], prompt_len: [8], max_tokens: [4]}
measure: {warmup: 1, repeats: 1}
workers: {gpus_per_worker: 1, max_workers: 2}
"""

PRELUDE = """\
import sys, ray
from orchestrator.cli import main
spec, results = sys.argv[1], sys.argv[2]
"""


def run_script(tmp_path: Path, body: str, timeout: int = 240) -> tuple[Path, str]:
    pytest.importorskip("engine.bench")
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(spec),
                           str(results)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results / "job", proc.stdout + proc.stderr


def test_gpu_pinning_with_declared_gpus_on_cpu(tmp_path):
    # A node with 1 CPU and 2 declared GPUs: both GPU workers start (each asks for 0.5 CPU, not
    # Ray's implicit 1). Torch sees no CUDA here, so the CPU stand-in is allowed on purpose
    # (ORCHESTRATOR_CPU_STAND_IN=1); without it their cells fail (tests/test_dispatch_gpu.py).
    job_dir, out = run_script(tmp_path, """\
        import os
        os.environ["ORCHESTRATOR_CPU_STAND_IN"] = "1"
        ray.init(address="local", num_cpus=1, num_gpus=2, include_dashboard=False,
                 log_to_driver=False,
                 configure_logging=False)
        # cells long enough that the second worker is up before the first one is done
        code = main(["-q", "submit", spec, "--results", results, "--set",
                     "grid.batch_size=[1,2,3,4,5,6,7,8]", "--set", "measure.repeats=5",
                     "--set", "grid.max_tokens=[48]"])
        ray.shutdown()
        sys.exit(code)
    """)
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert {r["cuda_visible_devices"] for r in rows} == {"0", "1"}
    assert len({r["ray_actor_id"] for r in rows}) == 2 and "did not start" not in out
    assert {r["device"] for r in rows} == {"cpu"}  # torch sees no CUDA: the worker uses CPU
    assert {r["cpu_stand_in"] for r in rows} == {True}  # and the rows say it was a stand-in
    assert {r["accelerator_model"] for r in rows} == {None}


def test_two_node_cluster_results_land_in_driver_dataset(tmp_path):
    job_dir, _ = run_script(tmp_path, """\
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        # dispatch starts with the first ready worker: cells long enough for the second
        code = main(["-q", "submit", spec, "--results", results,
                     "--set", "workers.cpu_workers=2", "--set", "grid.batch_size=[1,2,3,4,5,6,7,8]",
                     "--set", "measure.repeats=5", "--set", "grid.max_tokens=[48]"])
        ray.shutdown()
        cluster.shutdown()
        sys.exit(code)
    """)
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert len({r["ray_node_id"] for r in rows}) == 2


def test_cli_starts_local_ray_and_keeps_its_logs_out_of_the_terminal(tmp_path):
    job_dir, output = run_script(tmp_path, """\
        sys.exit(main(["submit", spec, "--results", results,
                       "--set", "workers.gpus_per_worker=1", "--set", "grid.batch_size=[1]"]))
    """)
    assert "Ray logs:" in output and "[1/1] ok" in output
    assert "Token authentication" not in output and "Started a local Ray" not in output
    # The log is in the system temp dir (it outlives the results dir); whether Ray writes
    # anything at start-up depends on its version, the file must be there.
    ray_log = Path(output.split("Ray logs: ", 1)[1].split()[0])
    assert ray_log.is_file() and ray_log.parent == Path(tempfile.gettempdir()) / "unet-bench-ray"
    assert not (job_dir / "_ray").exists()
    assert len(ds.dataset(job_dir, format="parquet").to_table()) == 1


def test_sigkill_of_driver_then_resubmit_gives_one_ok_row_per_cell(tmp_path):
    pytest.importorskip("engine.bench")
    spec = tmp_path / "kill.yaml"
    spec.write_text(JOB.replace("name: job", "name: kill").replace(
        "method: [cached], batch_size: [1, 2, 3, 4]",
        "method: [naive, cached], batch_size: [1, 2, 3, 4, 5, 6]").replace(
        "max_tokens: [4]", "max_tokens: [24]"))
    results = tmp_path / "results"
    job_dir = results / "kill"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "orchestrator", "-q", "submit", str(spec), "--results",
            str(results)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(job_dir.glob("part-*"))) < 3:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        try:  # the driver's own Ray processes share its session: end them too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = len(list(job_dir.glob("part-*")))
    assert 3 <= done < 12, "the driver finished before it could be killed"
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=240, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    for part in job_dir.glob("part-*"):
        pq.read_table(part)  # every committed file is whole
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    ok = [r["cell_id"] for r in rows if r["status"] == "ok"]
    assert len(rows) == len(ok) == len(set(ok)) == 12


def _wait_for_parts(job_dir: Path, proc: subprocess.Popen, more_than: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(job_dir.glob("part-*"))) > more_than:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be interrupted"
    return len(list(job_dir.glob("part-*")))


def _ok_rows(job_dir: Path) -> list[dict]:
    for part in job_dir.glob("part-*"):
        pq.read_table(part)  # every committed file is whole
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    ids = [r["cell_id"] for r in rows]
    assert len(ids) == len(set(ids)) and {r["status"] for r in rows} == {"ok"}
    return rows


def test_interrupted_driver_keeps_rows_refuses_a_second_submit_and_resumes(tmp_path):
    """SIGTERM, then SIGINT of the driver: finished rows kept, exit 130 with the command that
    resumes; a concurrent submit of the same job is refused; the last resume completes."""
    pytest.importorskip("engine.bench")
    spec = tmp_path / "stop.yaml"
    spec.write_text(JOB.replace("name: job", "name: stop").replace(
        "method: [cached], batch_size: [1, 2, 3, 4]",
        "method: [naive, cached], batch_size: [1, 2, 3, 4, 5, 6]").replace(
        "max_tokens: [4]", "max_tokens: [64]"))  # long enough to be interrupted mid-run
    results = tmp_path / "results"
    job_dir = results / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results", str(results)]
    seen = 0
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([*argv, "--progress", "lines"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            seen = _wait_for_parts(job_dir, proc, seen + 1)
            if signum == signal.SIGTERM:  # while it runs, the same submit is refused
                second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True,
                                        text=True, timeout=60, check=False)
                assert second.returncode == 2, second.stderr[-2000:]
                assert f"in use by another submit (pid {proc.pid} on" in second.stderr
                assert "Traceback" not in second.stderr
            os.kill(proc.pid, signum)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            try:  # Ray processes the driver left behind, if any
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err
        resume = err.split("resume with: ", 1)[-1].strip()
        assert resume == shlex.join(["python", "-m", "orchestrator", *argv[3:], "--progress",
                                     "lines"]), err[-3000:]
        rows = _ok_rows(job_dir)
        assert seen <= len(rows) < 12  # what had finished is kept, the rest was not run
        seen = len(rows)
        manifests = [json.loads(p.read_text()) for p in (job_dir / "_manifests").glob("*.json")]
        assert sorted(m["status"] for m in manifests).count("interrupted") == (
            1 if signum == signal.SIGTERM else 2)
    done = subprocess.run([sys.executable, *shlex.split(resume)[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"12 cells: {12 - seen} run, {seen} skipped (already ok), 0 failed" in done.stderr
    assert len(_ok_rows(job_dir)) == 12
