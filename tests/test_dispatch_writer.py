"""RowWriter: rows written off the dispatch loop, in order, batched under load; a failed write
surfaces in the driver's thread with its own type; a Ctrl-C while flushing loses no row; and a
real ResultStore behind it."""

from __future__ import annotations

import os
import signal
import threading
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import StorageError
from orchestrator.run import compact
from orchestrator.run.store import ResultStore
from orchestrator.run.writer import RowWriter


class SlowSink:
    """Records each call's rows; each call takes `delay` seconds (a slow disk)."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None):
        self.calls: list[list[dict]] = []
        self.delay, self.fail_at = delay, fail_at

    def __call__(self, rows: list[dict]) -> None:
        time.sleep(self.delay)
        if self.fail_at is not None and any(r["i"] >= self.fail_at for r in rows):
            raise StorageError("results/job/part-x.parquet", "No space left on device")
        self.calls.append(rows)


def test_rows_are_written_in_order_and_batched_while_the_sink_is_busy():
    sink = SlowSink(delay=0.05)
    writer = RowWriter(sink)
    for i in range(40):
        writer.put({"i": i})
    writer.close()
    assert [r["i"] for call in sink.calls for r in call] == list(range(40))
    assert len(sink.calls) < 40  # rows queued while a write ran went out together
    assert writer.written == 40


def test_a_failed_write_is_raised_by_put_or_close_with_its_type():
    writer = RowWriter(SlowSink(fail_at=3))
    with pytest.raises(StorageError, match="No space left on device"):
        for i in range(10_000):
            writer.put({"i": i})
            time.sleep(0.001)
    with pytest.raises(StorageError, match="results/job/part-x.parquet"):
        writer.close()


def test_put_blocks_when_full_instead_of_growing():
    release = threading.Event()
    written: list[int] = []

    def sink(rows):
        release.wait()
        written.extend(r["i"] for r in rows)

    writer = RowWriter(sink, max_pending=2, max_batch=1)
    for i in range(3):  # one in the sink, two queued
        writer.put({"i": i})
    blocked = threading.Thread(target=writer.put, args=({"i": 3},))
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive()  # the queue is full: the producer waits
    release.set()
    blocked.join(timeout=5)
    writer.close()
    assert written == [0, 1, 2, 3]


def test_ctrl_c_while_flushing_loses_no_row(python_sigint):
    sink = SlowSink(delay=0.2)
    writer = RowWriter(sink, max_batch=1)
    for i in range(5):
        writer.put({"i": i})
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        writer.close()  # the signal arrives while it waits; it still writes everything
    assert [r["i"] for call in sink.calls for r in call] == list(range(5))


def test_store_sink_writes_real_parquet_rows(tmp_path):
    store = ResultStore(tmp_path / "job")
    writer = RowWriter(store.write_many)
    for i in range(5):
        writer.put({"cell_id": f"c{i}", "attempt": 1, "run_id": "r1", "status": "ok",
                    "batch_size": i, "cpu_model": "x86", "node_ip": "127.0.0.1"})
    writer.close()
    rows = ds.dataset(tmp_path / "job", format="parquet").to_table().to_pylist()
    assert sorted(r["batch_size"] for r in rows) == list(range(5))
    assert {(r["cpu_model"], r["node_ip"]) for r in rows} == {("x86", "127.0.0.1")}


def test_a_batch_is_one_atomic_file_that_compaction_files_under_its_run(tmp_path):
    store = ResultStore(tmp_path / "job")
    rows = [{"cell_id": f"c{i}", "attempt": 1, "run_id": "r1", "status": "ok",
             "batch_size": i, "trace_json": "{}" if i == 0 else None} for i in range(3)]
    path = store.write_many(rows)
    assert path.name == "part-c0-a1-r1-n3.parquet"
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["_traces", path.name]
    assert pq.read_table(path).column("trace_path").to_pylist() == ["_traces/c0-a1.json", None,
                                                                       None]
    assert compact.ATTEMPT.match(path.name)["run"] == "r1"
