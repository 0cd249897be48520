"""The dispatcher on the session's local 2-CPU Ray: compared cells on one worker, the clock of a
queued cell, a sticky CUDA error replacing the process, workers that start late or never, and
Ctrl-C with a cell queued behind the running one."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime

import pytest

from orchestrator.errors import Interrupted
from orchestrator.run import dispatch
from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import ModelSpec, WorkersSpec

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = ModelSpec(tag="d[2]-h[32]", vocab_size=256, sequence_len=64, head_dim=32)


class SleepBackend:
    """No model: a cell sleeps `prompt_len / 10` seconds; batch_size 13 hits a sticky CUDA
    error (what torch raises after an illegal memory access)."""

    def device(self):
        return "cpu"

    def load(self, model, *, device, dtype):
        return object()

    def measure(self, model, cell, *, device):
        if cell["batch_size"] == 13:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        time.sleep(cell["prompt_len"] / 10)
        return {"decode_tok_s": 1.0, "ttft_ms": 1.0}


def cells(batch_sizes, methods=("cached",), prompt_len=1) -> list[CellSpec]:
    return [CellSpec(model=MODEL, method=m, batch_size=b, prompt_len=prompt_len, max_tokens=1)
            for b in batch_sizes for m in methods]


def run(todo, workers: WorkersSpec, on_start=None) -> list[dict]:
    rows: list[dict] = []
    dispatch.Dispatcher(todo, workers, rows.append, backend=SleepBackend(),
                        on_start=on_start).run()
    return rows


def test_compared_cells_run_on_the_same_worker_process():
    rows = run(cells([1, 2, 3, 4, 5, 6], methods=("naive", "cached")), WorkersSpec(cpu_workers=2))
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    assert {r["worker_index"] for r in rows} == {0, 1}  # both workers had work
    pairs: dict = {}
    for r in rows:
        pairs.setdefault(r["batch_size"], {})[r["method"]] = (r["worker_index"], r["pid"])
    for b, by_method in pairs.items():
        assert by_method["naive"] == by_method["cached"], f"batch_size {b}: {by_method}"
    r = rows[0]  # the hardware identity travels with every row
    assert r["cpu_model"] and r["node_ip"] and r["ray_node_id"]
    assert r["accelerator_model"] is None and r["cpu_stand_in"] is False


def test_a_queued_cell_is_timed_from_when_it_starts():
    # two 2 s cells on one worker with a 3 s limit: the second waits 2 s behind the first and
    # must not have that wait counted against it
    rows = run(cells([1, 2], prompt_len=20), WorkersSpec(cpu_workers=1, cell_timeout_s=3))
    assert sorted((r["batch_size"], r["status"]) for r in rows) == [(1, "ok"), (2, "ok")]
    first, second = sorted(rows, key=lambda r: r["batch_size"])
    assert datetime.fromisoformat(second["started_at"]) >= datetime.fromisoformat(
        first["finished_at"])


def test_a_sticky_cuda_error_replaces_the_worker_process():
    rows = run(cells([1, 13, 3, 4]), WorkersSpec(cpu_workers=1))
    by_b = {r["batch_size"]: r for r in rows}
    assert len(rows) == 4  # the cell queued behind the failed one is not lost or failed
    assert by_b[13]["status"] == "error"
    assert by_b[13]["error"] == ("RuntimeError: CUDA error: an illegal memory access was "
                                 "encountered (sticky CUDA error: the worker process is replaced)")
    assert "_restart_worker" not in by_b[13] and "_not_run" not in by_b[3]
    assert [by_b[b]["status"] for b in (1, 3, 4)] == ["ok", "ok", "ok"]
    assert by_b[1]["pid"] == by_b[13]["pid"] != by_b[3]["pid"] == by_b[4]["pid"]
    assert {r["worker_index"] for r in rows} == {0}


def test_dispatch_starts_with_the_first_worker_and_adds_one_that_comes_up_later(ray_session):
    # one of the 2 CPUs is held, so worker 1 cannot start until it is released
    blocker = ray_session.remote(num_cpus=1)(Holder).remote()
    ray_session.get(blocker.ping.remote())

    def release(cell, worker):
        if not release.done:
            release.done = True
            threading.Timer(1.0, ray_session.kill, (blocker,)).start()

    release.done = False
    rows = run(cells(range(20, 40), prompt_len=3), WorkersSpec(cpu_workers=2), on_start=release)
    assert len(rows) == 20 and {r["status"] for r in rows} == {"ok"}
    assert {r["worker_index"] for r in rows} == {0, 1}  # worker 1 joined once it could start


def test_a_worker_that_never_starts_names_the_missing_resource(ray_session, monkeypatch, caplog):
    blocker = ray_session.remote(num_cpus=1)(Holder).remote()
    ray_session.get(blocker.ping.remote())
    monkeypatch.setattr(dispatch, "ACTOR_START_TIMEOUT_S", 4.0)
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator"):
            rows = run(cells(range(1, 7), prompt_len=10), WorkersSpec(cpu_workers=2))
    finally:
        ray_session.kill(blocker)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    (started,) = {r["worker_index"] for r in rows}  # whichever Ray placed on the free CPU
    (warning,) = [r for r in caplog.records if "did not start" in r.getMessage()]
    assert warning.getMessage().startswith(
        f"worker {1 - started} did not start within 4s: it needs CPU 1; free now: CPU 0 of 2 "
        "(not enough CPU)")
    first_start = min(datetime.fromisoformat(r["started_at"]).timestamp() for r in rows)
    assert first_start < warning.created  # cells ran while the other worker was pending


def test_ctrl_c_keeps_the_running_cell_and_cancels_the_queued_one(python_sigint):
    def interrupt_later(cell, worker):
        if not interrupt_later.armed:
            interrupt_later.armed = True  # mid-way through the second cell (2 s each)
            threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()

    interrupt_later.armed = False
    rows: list[dict] = []
    with pytest.raises(Interrupted, match="finished cells are saved"):
        dispatch.Dispatcher(cells([1, 2, 3, 4], prompt_len=20), WorkersSpec(cpu_workers=1),
                            rows.append, backend=SleepBackend(), on_start=interrupt_later).run()
    assert sorted((r["batch_size"], r["status"]) for r in rows) == [(1, "ok"), (2, "ok")]


class Holder:
    """An actor that only holds its CPU."""

    def ping(self):
        return True
