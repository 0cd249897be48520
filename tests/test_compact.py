"""Compaction and the store's readers: every row exactly once (also after a SIGKILL at each step
of a compaction), the README's one-liners on a compacted directory, legacy and foreign files,
a job named like a part file, and reads that touch only the columns they need."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.run import scan
from orchestrator.run.compact import COMPACT_PREFIX, PAUSE_ENV
from orchestrator.run.store import HISTORY_COLUMNS, ResultStore
from tests.results_data import make_record, write_sweep

ROOT = Path(__file__).resolve().parents[1]
KEY = ("run_id", "cell_id", "attempt")


def keys(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table[k].to_pylist() for k in KEY)))


def two_runs(job_dir: Path) -> ResultStore:
    """The 9-row sweep of run-a, plus two rows of a run-b with an extra column."""
    store = write_sweep(job_dir)
    for method in ("naive", "cached"):
        store.write(make_record(method, 1, 32, run_id="run-b", attempt=2, note=7))
    return store


def env_for_subprocess(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_compaction_keeps_every_row_once_and_the_readme_one_liners_work(tmp_path):
    job = tmp_path / "sweep"
    store = two_runs(job)
    before = store.read().table
    assert before.num_rows == 11  # 9 + 2 distinct attempts of run-b
    result = store.compact()
    assert result.inputs == 11 and result.rows == 11 and len(result.outputs) == 2
    names = sorted(p.name for p in store.part_files())
    assert all(n.startswith(COMPACT_PREFIX) for n in names), names
    assert not [p for p in job.iterdir() if p.name.startswith((".tmp", "_compaction"))]
    after = store.read().table
    assert keys(after) == keys(before)
    by_key = {k: r for k, r in zip(keys(after), after.sort_by([(k, "ascending") for k in KEY])
                                   .to_pylist())}
    ref = before.sort_by([(k, "ascending") for k in KEY]).to_pylist()
    assert list(by_key.values()) == ref  # every column, every value, list columns included
    # the README's one-liners, unchanged
    import duckdb
    import pandas as pd
    import polars as pl

    assert ds.dataset(job, format="parquet").to_table().num_rows == 11
    assert len(pd.read_parquet(job)) == 11
    assert len(pl.read_parquet(job, use_pyarrow=True)) == 11
    glob = f"{job}/part-*.parquet"
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', union_by_name=true)").fetchall()
    assert n == [(11,)]
    # compacting again is a no-op; new attempt files join in a new compacted file
    assert store.compact().inputs == 0
    store.write(make_record("naive", 8, 32, run_id="run-c"))
    assert store.compact().inputs == 1
    assert store.read().table.num_rows == 12 and len(store.part_files()) == 3


def test_readers_never_see_a_row_twice(tmp_path):
    store = write_sweep(tmp_path / "job")
    files = sorted(store.part_files())
    (tmp_path / "job" / "part-copy.parquet").write_bytes(files[0].read_bytes())  # a duplicate
    assert store.read().table.num_rows == 9
    assert ds.dataset(tmp_path / "job", format="parquet").to_table().num_rows == 10
    # a journal whose output exists hides its inputs (the window between rename and deletes)
    journal = {"output": "part-copy.parquet", "inputs": [files[0].name]}
    (tmp_path / "job" / "_compaction.json").write_text(json.dumps(journal))
    assert files[0].name not in scan.live_parts(store.location)
    assert store.read().table.num_rows == 9


def test_legacy_files_without_newer_columns_read_with_nulls(tmp_path):
    job = tmp_path / "job"
    store = write_sweep(job)
    legacy = store.read(["run_id", "cell_id", "attempt", "status", "decode_tok_s"]).table
    old = legacy.slice(0, 1).drop_columns(["decode_tok_s"])  # an older file: fewer columns
    old = old.set_column(0, "run_id", pa.array(["run-old"]))
    pq.write_table(old, job / "part-old-a1-run-old.parquet")
    table = store.read().table
    assert table.num_rows == 10
    row = next(r for r in table.to_pylist() if r["run_id"] == "run-old")
    assert row["decode_tok_s"] is None and row["will_retry"] is None
    store.compact()
    assert store.read().table.num_rows == 10


def write_foreign(job: Path) -> tuple[Path, Path]:
    foreign = job / "part-foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), foreign)
    clash = job / "part-clash-a1-r9.parquet"
    row = make_record("naive", 1, 32, run_id="r9")
    pq.write_table(pa.table({"run_id": ["r9"], "cell_id": ["zz"], "status": ["ok"],
                             "batch_size": ["one"], "method": [row["method"]]}), clash)
    return foreign, clash


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=ROOT,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=120,
                          check=False)


def test_foreign_parquet_files_are_named_once_and_skipped(tmp_path, capsys):
    job = tmp_path / "results" / "sweep"
    write_sweep(job)
    foreign, clash = write_foreign(job)
    summ = run_cli("summarize", str(job))
    assert summ.returncode == 0, summ.stderr
    assert summ.stderr.count(foreign.name) == 1 and "no run_id column" in summ.stderr
    assert summ.stderr.count(clash.name) == 1 and "batch_size is string" in summ.stderr
    assert "Traceback" not in summ.stderr and "8 ok (cells)" in summ.stdout
    query = run_cli("query", str(job), "--where", "status = 'ok'", "--format", "json")
    assert query.returncode == 0, query.stderr
    assert query.stderr.count(foreign.name) == 1 and len(json.loads(query.stdout)) == 8
    assert main(["compare", str(job), str(job)]) == 0
    assert "8 cells matched" in capsys.readouterr().err
    store = ResultStore(job)
    assert len(store.cell_history()) == 8
    assert store.compact().skipped == [clash.name, foreign.name]
    assert foreign.exists() and clash.exists()  # left as they are
    assert store.read().table.num_rows == 9
    pytest.importorskip("matplotlib")
    assert main(["plot", str(job), "--out", str(job.parent / "plots")]) == 0
    assert list((job.parent / "plots").glob("*.png"))


def test_a_job_named_like_a_part_file_is_a_job(tmp_path):
    root = tmp_path / "results"
    write_sweep(root / "sweep")
    write_sweep(root / "part-x.parquet", run_id="run-x")
    summ = run_cli("summarize", str(root))
    assert summ.returncode == 0, summ.stderr
    assert f"== {root / 'sweep'} ==" in summ.stdout
    assert f"== {root / 'part-x.parquet'} ==" in summ.stdout
    query = run_cli("query", str(root), "--group-by", "run_id", "--agg", "count",
                    "--format", "json")
    assert json.loads(query.stdout) == [{"run_id": "run-a", "count": 9},
                                        {"run_id": "run-x", "count": 9}]
    compact = run_cli("compact", str(root))
    assert compact.returncode == 0 and compact.stdout.count("9 attempt files -> 1 file") == 2


def corrupt_column(path: Path, column: str) -> None:
    """Overwrite the bytes of one column's chunk with garbage (the footer stays valid)."""
    meta = pq.ParquetFile(path).metadata
    index = meta.schema.to_arrow_schema().get_field_index(column)
    leaves = [i for i in range(meta.num_columns)
              if meta.schema.column(i).path.split(".")[0] == column]
    assert index >= 0 and leaves
    data = bytearray(path.read_bytes())
    for i in leaves:
        chunk = meta.row_group(0).column(i)
        start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o)
        data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))


def test_planning_summary_and_query_do_not_read_the_raw_lists(tmp_path, capsys):
    job = tmp_path / "sweep"
    store = write_sweep(job)
    store.compact()
    (path,) = store.part_files()
    corrupt_column(path, "decode_step_ms")
    with pytest.raises(Exception):  # noqa: B017 - the column really is unreadable
        pq.read_table(path)
    assert len(store.cell_history()) == 8
    assert list(store.cell_history()["naive-b4-p128"][0]) == list(HISTORY_COLUMNS)
    assert main(["summarize", str(job)]) == 0
    assert "8 ok (cells)" in capsys.readouterr().out
    assert main(["query", str(job), "--where", "status = 'ok'", "--limit", "5"]) == 0
    assert main(["query", str(job), "--latest", "--where", "batch_size >= 4",
                 "--columns", "cell_id,decode_tok_s"]) == 0
    capsys.readouterr()


# -- SIGKILL during compaction --------------------------------------------------------------

def kill_at(point: str, argv: list[str], tmp_path: Path, **env: str) -> None:
    """Run argv with the compaction paused at `point`, SIGKILL it (and its process group)."""
    marker = tmp_path / f"paused-{point}"
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env_for_subprocess(**{PAUSE_ENV: f"{point}:{marker}"}, **env),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "timeout"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("point", ["written", "journaled", "renamed", "deleting"])
def test_sigkill_at_each_step_of_a_compaction_loses_and_duplicates_nothing(tmp_path, point):
    job = tmp_path / "sweep"
    store = two_runs(job)
    expected = keys(store.read().table)
    kill_at(point, [sys.executable, "-m", "orchestrator", "compact", str(job)], tmp_path)
    assert keys(ResultStore(job).read().table) == expected  # readers, before any recovery
    again = run_cli("compact", str(job))
    assert again.returncode == 0, again.stderr
    assert keys(ResultStore(job).read().table) == expected
    assert keys(ds.dataset(job, format="parquet").to_table()) == expected  # plain readers too
    names = [p.name for p in job.iterdir()]
    assert all(n.startswith(COMPACT_PREFIX) for n in names if n.startswith("part-")), names
    assert not [n for n in names if n.startswith((".tmp", "_compaction"))], names


JOB = """\
name: job
model: {tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 64,
        head_dim: 32}
grid: {method: [naive, cached], batch_size: [1, 2], prompt_len: [8], max_tokens: [4]}
measure: {warmup: 1, repeats: 1}
workers: {cpu_workers: 1}
"""


@pytest.mark.slow
def test_sigkill_during_a_submits_compaction_then_resubmit(tmp_path):
    """A real submit (local Ray) killed in its own compaction after the compacted file was
    renamed and half the inputs deleted; a re-submit that runs one more cell recovers, compacts,
    and leaves exactly one ok row per cell, for plain readers too."""
    pytest.importorskip("engine.bench")
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    results = tmp_path / "results"
    ray_tmp = tempfile.mkdtemp(prefix="h1ray", dir="/tmp")
    argv = [sys.executable, "-m", "orchestrator", "-q", "submit", str(spec), "--results",
            str(results), "--progress", "off"]
    try:
        kill_at("deleting", argv, tmp_path, ORCHESTRATOR_COMPACT_MIN_FILES="1",
                RAY_TMPDIR=ray_tmp)
        job_dir = results / "job"
        assert (job_dir / "_compaction.json").exists()
        again = subprocess.run([*argv, "--set", "grid.batch_size=[1,2,3]"], cwd=ROOT,
                               env=env_for_subprocess(ORCHESTRATOR_COMPACT_MIN_FILES="1",
                                                      RAY_TMPDIR=ray_tmp),
                               capture_output=True, text=True, timeout=300, check=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist()
    ok = [r["cell_id"] for r in rows if r["status"] == "ok"]
    assert len(rows) == len(ok) == len(set(ok)) == 6
    names = [p.name for p in job_dir.iterdir()]
    assert not [n for n in names if n.startswith((".tmp", "_compaction"))], names
    assert all(n.startswith(COMPACT_PREFIX) for n in names if n.startswith("part-")), names
