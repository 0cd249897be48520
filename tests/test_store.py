"""The results store: typed round trip, plain pyarrow.dataset reading, resume, corrupt files,
the job lock, and `summarize` on stored results."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from orchestrator.cli import main
from orchestrator.errors import ResultsLockedError
from orchestrator.run.store import ResultStore
from workers.record import SCHEMA_VERSION


def record(cell_id: str, method: str = "cached", status: str = "ok", attempt: int = 1,
           **extra) -> dict:
    row = {
        "schema_version": SCHEMA_VERSION, "run_id": "r1", "job_name": "j", "cell_id": cell_id,
        "attempt": attempt, "status": status, "error": None if status == "ok" else "boom",
        "method": method, "batch_size": 2, "prompt_len": 8, "max_tokens": 4,
        "temperature": 0.0, "top_k": None, "dtype": "float32", "model_tag": "d[2]-h[64]",
        "model_checkpoint": "random", "model_seed": 0,
        "started_at": "2026-01-01T00:00:00.000+00:00",
        "finished_at": f"2026-01-01T00:00:0{attempt}.000+00:00",
    }
    if status == "ok":
        row.update(decode_tok_s=1000.0 if method == "cached" else 250.0, ttft_ms=1.5,
                   decode_step_ms=[1.0, 2.0, 3.0], peak_rss_growth_bytes=2 << 20,
                   tokens_sha256="abc", n_generated=4)
    row.update(extra)
    return row


def test_round_trip_keeps_types_and_lists(tmp_path):
    store = ResultStore(tmp_path / "job")
    store.write(record("a", something_new=3, trace_json=b'{"traceEvents": []}'))
    store.write(record("b", status="error"))
    table = store.load().table
    assert table.num_rows == 2
    schema = table.schema
    assert schema.field("batch_size").type == pa.int64()
    assert schema.field("decode_tok_s").type == pa.float64()
    assert schema.field("decode_step_ms").type == pa.list_(pa.float64())
    assert schema.field("finished_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("something_new").type == pa.int64()
    rows = {r["cell_id"]: r for r in table.to_pylist()}
    assert rows["a"]["decode_step_ms"] == [1.0, 2.0, 3.0]
    assert rows["b"]["decode_tok_s"] is None
    trace = tmp_path / "job" / rows["a"]["trace_path"]
    assert trace.read_bytes() == b'{"traceEvents": []}'
    assert not [p for p in (tmp_path / "job").iterdir() if p.name.startswith(".tmp")]


def test_plain_pyarrow_dataset_reads_the_job_dir(tmp_path):
    store = ResultStore(tmp_path / "job")
    store.write(record("a", status="error"))  # a row without metrics first
    store.write(record("b"))
    store.lock()
    try:
        table = ds.dataset(tmp_path / "job", format="parquet").to_table()
    finally:
        store.unlock()
    assert table.num_rows == 2
    assert sorted(v for v in table.column("decode_tok_s").to_pylist() if v) == [1000.0]


def test_resume_sees_ok_cells_only(tmp_path):
    store = ResultStore(tmp_path / "job")
    store.write(record("a"))
    store.write(record("b", status="error"))
    store.write(record("c", status="error", attempt=1))
    store.write(record("c", status="ok", attempt=2))
    assert store.ok_cell_ids() == {"a", "c"}
    assert [r["attempt"] for r in store.cell_history()["c"]] == [1, 2]


def test_corrupt_file_is_reported_by_name_and_skipped(tmp_path, caplog, capsys):
    store = ResultStore(tmp_path / "job")
    good = store.write(record("a", method="naive"))
    store.write(record("a2", method="cached"))
    bad = store.write(record("b"))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        loaded = store.load()
    assert loaded.table.num_rows == 2 and loaded.bad_files == [str(bad)]
    assert bad.name in caplog.text
    assert store.ok_cell_ids() == {"a", "a2"}
    assert good.exists()
    assert main(["summarize", str(tmp_path / "job")]) == 0
    out = capsys.readouterr().out
    assert bad.name in out and "250.0" in out and "4.00x" in out


def test_second_lock_is_refused_naming_the_holder(tmp_path):
    first, second = ResultStore(tmp_path / "job"), ResultStore(tmp_path / "job")
    first.lock()
    try:
        with pytest.raises(ResultsLockedError, match=r"in use by another submit \(pid \d+"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


def test_summarize_prints_speedup_and_match(tmp_path, capsys):
    store = ResultStore(tmp_path / "job")
    store.write(record("n", method="naive"))
    store.write(record("c", method="cached"))
    store.write(record("f", method="cached", status="error", batch_size=8))
    assert main(["summarize", str(tmp_path)]) == 0  # a results root works too
    out = capsys.readouterr().out
    assert "4.00x" in out and "yes" in out
    assert "cells that did not succeed" in out and "boom" in out


def test_summarize_missing_dir_exits_2(tmp_path, capsys):
    assert main(["summarize", str(tmp_path / "nothing")]) == 2
    assert "no such results directory" in capsys.readouterr().err


def test_concurrent_submit_is_refused_while_the_lock_is_held(tmp_path, capsys):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: job\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n")
    holder = ResultStore(tmp_path / "results" / "job")
    holder.lock()
    try:
        assert main(["submit", str(spec), "--results", str(tmp_path / "results")]) == 2
    finally:
        holder.unlock()
    err = capsys.readouterr().err
    assert "in use by another submit (pid" in err and "Traceback" not in err
    assert not holder.part_files()
