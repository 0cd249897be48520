"""GPU-planned workers on a machine whose torch sees no CUDA: on a real local Ray with GPUs
declared (and 1 CPU, fewer than GPUs), each cell fails with one line naming the node and
CUDA_VISIBLE_DEVICES, never a silent CPU measurement; and the CPU share a GPU actor asks for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from orchestrator.run.actors import plan_workers
from orchestrator.spec.job import WorkersSpec
from workers.worker import CellWorker

ROOT = Path(__file__).resolve().parents[1]

JOB = """\
name: job
model: {tag: "d[2]-h[32]", checkpoint: random, vocab_size: 256, sequence_len: 64, head_dim: 32}
grid: {method: [naive, cached], batch_size: [1], prompt_len: [4], max_tokens: [2]}
measure: {warmup: 1, repeats: 1}
workers: {gpus_per_worker: 1, max_workers: 2}
"""

SCRIPT = """\
import os, sys, ray
from orchestrator.cli import main
os.environ.pop("ORCHESTRATOR_CPU_STAND_IN", None)
ray.init(address="local", num_cpus=1, num_gpus=2, include_dashboard=False, log_to_driver=False,
         configure_logging=False)
code = main(["submit", sys.argv[1], "--results", sys.argv[2]])
ray.shutdown()
sys.exit(code)
"""


class CpuBackend:
    def device(self):
        return "cpu"

    def load(self, model, *, device, dtype):
        return object()

    def measure(self, model, cell, *, device):
        return {"decode_tok_s": 1.0}


CELL = {"model": {"tag": "t"}, "method": "cached", "batch_size": 1, "prompt_len": 4,
        "max_tokens": 2, "dtype": "float32", "cell_id": "c1"}


def test_gpu_planned_worker_without_cuda_refuses_unless_stand_in_allowed(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    node = {"node_ip": "10.0.0.7", "ray_node_id": "abcdef0123456789"}
    rec = CellWorker(CpuBackend(), lambda: node, gpu_planned=True).run(dict(CELL))
    assert rec["status"] == "error"
    assert rec["error"].startswith(
        "worker planned for a GPU sees no CUDA device on node 10.0.0.7 (abcdef012345), "
        "CUDA_VISIBLE_DEVICES=3: not measuring on CPU")
    assert "\n" not in rec["error"] and "decode_tok_s" not in rec
    ok = CellWorker(CpuBackend(), lambda: node, gpu_planned=True, cpu_stand_in=True).run(
        dict(CELL))
    assert ok["status"] == "ok" and ok["cpu_stand_in"] is True and ok["device"] == "cpu"
    plain = CellWorker(CpuBackend()).run(dict(CELL))  # a CPU worker is no stand-in
    assert plain["status"] == "ok" and plain["cpu_stand_in"] is False


def test_gpu_actors_ask_for_a_cpu_share_that_fits_every_gpu_node():
    nodes = [{"CPU": 1.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 4.0}]
    plan = plan_workers(WorkersSpec(), {"CPU": 17.0, "GPU": 6.0}, 100, nodes)
    assert (plan.count, plan.kind, plan.options) == (6, "gpu", {"num_cpus": 0.5, "num_gpus": 1})
    half = plan_workers(WorkersSpec(gpus_per_worker=2), {"CPU": 1.0, "GPU": 2.0}, 5, nodes[:1])
    assert half.options == {"num_cpus": 1.0, "num_gpus": 2}


@pytest.mark.slow
def test_declared_gpus_without_cuda_fail_each_cell_in_one_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(spec),
                           str(tmp_path / "r")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]  # cells failed, the sweep finished
    rows = ds.dataset(tmp_path / "r" / "job", format="parquet").to_table().to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"error"}
    for r in rows:
        assert r["error"].startswith(
            f"worker planned for a GPU sees no CUDA device on node {r['node_ip']} "
            f"({r['ray_node_id'][:12]}), CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}: "
            "not measuring on CPU")
        assert r["decode_tok_s"] is None and r["cpu_stand_in"] is True
    assert "torch sees no CUDA device" in proc.stderr  # the driver warns as the worker starts
