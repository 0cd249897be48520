"""The driver on a local 2-CPU Ray: a small job end to end on the real engine (Parquet rows,
types, summary), resume, worker crashes with retries, timeouts, and out-of-memory skipping."""

from __future__ import annotations

import logging
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from orchestrator.cli import main
from orchestrator.run.store import ResultStore
from orchestrator.run.submit import submit_job
from orchestrator.spec.job import load_job_spec

pytestmark = pytest.mark.usefixtures("ray_session")

TINY_MODEL = """\
model:
  tag: d[2,2]-h[64,128]
  checkpoint: random
  vocab_size: 256
  sequence_len: 64
  head_dim: 32
measure:
  warmup: 1
  repeats: 1
"""


def write_job(tmp_path: Path, body: str, name: str = "job") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + TINY_MODEL + textwrap.dedent(body))
    return path


def read_rows(job_dir: Path) -> pa.Table:
    return ds.dataset(job_dir, format="parquet").to_table()


def one_file_per_row(job_dir: Path) -> None:
    """Rewrite a job's rows one file each. The row writer puts rows that finished while it was
    busy into one file (run/writer.py), so which cells share a file depends on timing; a test
    that corrupts one cell's file needs that file to hold that cell alone."""
    store = ResultStore(job_dir)
    rows = read_rows(job_dir).to_pylist()
    for part in job_dir.glob("part-*.parquet"):
        part.unlink()
    for row in rows:
        store.write(row)


def test_small_job_end_to_end_on_the_engine(tmp_path, capsys):
    pytest.importorskip("engine.bench")
    spec = write_job(tmp_path, """\
        grid:
          method: [naive, cached]
          batch_size: [1, 2]
          prompt_len: [8]
          max_tokens: [4]
        workers: {cpu_workers: 2}
    """)
    results = tmp_path / "results"
    assert main(["submit", str(spec), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "decode tok/s" in out and "speedup" in out  # fitted to the terminal (see test_summary)
    assert "naive" in out.split("decode tok/s")[1] and "cached" in out.split("decode tok/s")[1]
    assert "4 ok (cells)" in out
    table = read_rows(results / "job")
    assert table.num_rows == 4
    types = {f.name: f.type for f in table.schema}
    assert types["batch_size"] == pa.int64() and types["decode_tok_s"] == pa.float64()
    assert types["decode_step_ms"] == pa.list_(pa.float64())
    assert types["finished_at"] == pa.timestamp("ms", tz="UTC")
    rows = table.to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["ray_node_id"] and r["hostname"] and r["torch_version"] for r in rows)
    assert all(r["run_id"] == rows[0]["run_id"] and r["attempt"] == 1 for r in rows)
    by = {(r["method"], r["batch_size"]): r for r in rows}
    for b in (1, 2):
        assert by["naive", b]["tokens_sha256"] == by["cached", b]["tokens_sha256"]

    # the same submit again: everything is skipped, nothing duplicated
    assert main(["submit", str(spec), "--results", str(results)]) == 0
    assert read_rows(results / "job").num_rows == 4
    # summarize prints the tables again
    capsys.readouterr()
    assert main(["summarize", str(results / "job")]) == 0
    assert "yes" in capsys.readouterr().out


def test_resume_runs_only_missing_cells(tmp_path):
    pytest.importorskip("engine.bench")
    spec = write_job(tmp_path, "grid: {method: [cached], batch_size: [1], prompt_len: [8], "
                               "max_tokens: [4]}\n")
    results = tmp_path / "r"
    first = submit_job(load_job_spec(str(spec)), results)
    assert (first.ran, first.skipped, first.exit_code) == (1, 0, 0)
    bigger = load_job_spec(str(spec), ["grid.batch_size=[1, 2]"])
    second = submit_job(bigger, results)
    assert (second.ran, second.skipped, second.exit_code) == (1, 1, 0)
    assert read_rows(results / "job").num_rows == 2
    third = submit_job(bigger, results, fresh=True)
    assert (third.ran, third.skipped) == (2, 0)
    rows = read_rows(results / "job").to_pylist()
    assert len(rows) == 4 and sorted(r["attempt"] for r in rows) == [1, 1, 2, 2]


class CrashingBackend:
    """batch_size 2 kills its worker (os._exit) on the first attempt only, 6 segfaults on the
    first attempt only, 3 always kills it; 5 hangs; 7 raises until `<marker_dir>/fixed` exists."""

    def __init__(self, marker_dir: str):
        self.marker_dir = marker_dir

    def device(self):
        return "cpu"

    def load(self, model, *, device, dtype):
        return object()

    def measure(self, model, cell, *, device):
        b = cell["batch_size"]
        marker = os.path.join(self.marker_dir, f"{cell['cell_id']}.crashed")
        if b == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        if b == 6 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGSEGV)
        if b == 3:
            os._exit(1)
        if b == 7 and not os.path.exists(os.path.join(self.marker_dir, "fixed")):
            raise RuntimeError("flaky cell")
        if b == 5:
            time.sleep(60)
        return {"decode_tok_s": 1.0, "ttft_ms": 1.0, "tokens_sha256": "x"}


def _attempts(job_dir: Path) -> dict[int, list[tuple[int, str]]]:
    by_b: dict = {}
    for r in sorted(read_rows(job_dir).to_pylist(), key=lambda r: r["attempt"]):
        by_b.setdefault(r["batch_size"], []).append((r["attempt"], r["status"]))
    return by_b


def test_worker_crash_is_retried_then_recorded(tmp_path, caplog):
    # b=3 kills its worker every time: charged to b=3 alone, never to a cell queued with it
    spec = write_job(tmp_path, """\
        grid: {method: [cached], batch_size: [1, 3, 4], prompt_len: [8], max_tokens: [4]}
        workers: {retries: 1, cpu_workers: 2}
    """)
    outcome = submit_job(load_job_spec(str(spec)), tmp_path / "r",
                         backend=CrashingBackend(str(tmp_path)))
    assert outcome.exit_code == 1 and outcome.failed == 1
    assert _attempts(tmp_path / "r" / "job") == {1: [(1, "ok")], 3: [(1, "error"), (2, "error")],
                                                 4: [(1, "ok")]}
    always = sorted((r for r in read_rows(tmp_path / "r" / "job").to_pylist()
                     if r["batch_size"] == 3), key=lambda r: r["attempt"])
    assert "worker died" in always[0]["error"] and always[0]["will_retry"]
    assert "worker died" in always[-1]["error"]  # the cause
    assert "giving up after 2 tries" in always[-1]["error"] and not always[-1]["will_retry"]

    # one worker holding b=2 (running, os._exit) and b=6 (queued): which one killed it is not
    # known, so neither is charged; run alone, b=2 passes and b=6 segfaults, is charged, retried
    spec = write_job(tmp_path, """\
        grid: {method: [cached], batch_size: [2, 6], prompt_len: [8], max_tokens: [4]}
        workers: {retries: 1, cpu_workers: 1}
    """, name="once")
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        outcome = submit_job(load_job_spec(str(spec)), tmp_path / "r",
                             backend=CrashingBackend(str(tmp_path)))
    assert outcome.exit_code == 0
    assert "running them again one at a time" in caplog.text
    assert _attempts(tmp_path / "r" / "once") == {2: [(1, "ok")], 6: [(1, "error"), (2, "ok")]}
    died = next(r for r in read_rows(tmp_path / "r" / "once").to_pylist() if r["status"] != "ok")
    assert "worker died" in died["error"] and died["will_retry"]


def test_resume_skips_failed_cells_until_rerun_failed(tmp_path, caplog):
    spec = write_job(tmp_path, """\
        grid: {method: [cached], batch_size: [1, 7, 4], prompt_len: [8], max_tokens: [4]}
        workers: {cpu_workers: 1}
    """)
    job, results, backend = load_job_spec(str(spec)), tmp_path / "r", CrashingBackend(str(tmp_path))
    first = submit_job(job, results, backend=backend)
    assert (first.ran, first.failed, first.exit_code) == (3, 1, 1)
    job_dir = results / "job"

    # a plain resume runs nothing new: b=7 failed (reported), the others are ok
    again = submit_job(job, results, backend=backend)
    assert (again.ran, again.skipped, again.skipped_failed, again.failed) == (0, 2, 1, 1)
    assert again.exit_code == 1 and "1 skipped (failed before), 1 failed" in again.summary_line()
    assert read_rows(job_dir).num_rows == 3

    # a corrupt (truncated) file is reported by name and skipped: its cell counts as not run
    one_file_per_row(job_dir)
    cell_4 = next(r["cell_id"] for r in read_rows(job_dir).to_pylist() if r["batch_size"] == 4)
    (ok_file,) = job_dir.glob(f"part-{cell_4}-*")
    ok_file.write_bytes(ok_file.read_bytes()[:64])
    (tmp_path / "fixed").touch()
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        rerun = submit_job(job, results, backend=backend, rerun_failed=True)
    assert ok_file.name in caplog.text
    assert (rerun.ran, rerun.skipped, rerun.skipped_failed, rerun.exit_code) == (2, 1, 0, 0)
    loaded = ResultStore(job_dir).load()
    assert loaded.bad_files == [str(ok_file)]
    by_b: dict = {}
    for r in loaded.rows():
        by_b.setdefault(r["batch_size"], []).append((r["attempt"], r["status"]))
    assert sorted(by_b[7]) == [(1, "error"), (2, "ok")]  # numbering continues
    assert by_b[1] == [(1, "ok")]  # ok cells are never re-run
    assert by_b[4] == [(1, "ok")]  # the unreadable row is skipped, so its cell ran again


def test_cell_timeout_is_recorded_and_worker_replaced(tmp_path):
    spec = write_job(tmp_path, """\
        grid: {method: [cached], batch_size: [5, 1], prompt_len: [8], max_tokens: [4]}
        workers: {cell_timeout_s: 3, cpu_workers: 1}
    """)
    outcome = submit_job(load_job_spec(str(spec)), tmp_path / "r",
                         backend=CrashingBackend(str(tmp_path)))
    rows = {r["batch_size"]: r for r in read_rows(tmp_path / "r" / "job").to_pylist()}
    assert rows[5]["status"] == "timeout" and "cell_timeout_s=3" in rows[5]["error"]
    assert rows[1]["status"] == "ok"  # ran on the replaced worker
    assert outcome.exit_code == 1


def test_oom_skips_dominated_cells(tmp_path):
    pytest.importorskip("engine.bench")
    from engine.bench import BenchSpec, estimate_cell_bytes
    from engine.config import UNetConfig
    from engine.model import UNet

    model = UNet(UNetConfig.from_tag("d[2,2]-h[64,128]", vocab_size=256, head_dim=32,
                                     sequence_len=64))
    need = {b: estimate_cell_bytes(model, BenchSpec(method="cached", batch_size=b,
                                                    prompt_len=8, max_tokens=4))["total_bytes"]
            for b in (1, 2)}
    budget = (need[1] + need[2]) // 2
    spec = write_job(tmp_path, """\
        grid: {method: [cached], batch_size: [1, 2, 4], prompt_len: [8], max_tokens: [4]}
        workers: {cpu_workers: 1}
    """)
    job = load_job_spec(str(spec), [f"measure.memory_budget_bytes={budget}"])
    outcome = submit_job(job, tmp_path / "r")
    rows = {r["batch_size"]: r for r in read_rows(tmp_path / "r" / "job").to_pylist()}
    assert {b: r["status"] for b, r in rows.items()} == {1: "ok", 2: "oom", 4: "skipped_oom"}
    assert rows[2]["error"].startswith("out of memory at batch_size=2 prompt_len=8 max_tokens=4")
    assert f"cell {rows[2]['cell_id']}" in rows[4]["error"] and rows[4]["attempt"] == 1
    assert (outcome.ran, outcome.failed, outcome.exit_code) == (3, 2, 1)  # the sweep finished


def test_in_process_worker_equals_ray_worker(ray_session):
    pytest.importorskip("engine.bench")
    from orchestrator.spec.grid import CellSpec
    from orchestrator.spec.job import ModelSpec
    from workers.actor import RemoteCellActor
    from workers.worker import CellWorker

    model = ModelSpec(tag="d[2,2]-h[64,128]", vocab_size=256, sequence_len=64, head_dim=32)
    cell = CellSpec(model=model, method="cached", batch_size=2, prompt_len=8, max_tokens=4,
                    repeats=1).to_dict()
    local = CellWorker().run(cell)
    actor = RemoteCellActor.options(num_cpus=1).remote()
    try:
        remote = ray_session.get(actor.run.remote(cell), timeout=120)
    finally:
        ray_session.kill(actor)
    timing = ("ms", "tok_s", "_s", "_at", "bytes", "pid", "ray_", "cv", "threads")
    same = [k for k in local if not any(t in k for t in timing)]
    assert {k: local[k] for k in same} == {k: remote.get(k) for k in same}
    assert remote["ray_node_id"] and sys.modules.get("ray")
