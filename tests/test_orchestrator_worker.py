"""CellWorker in-process: records for ok / error / oom cells, one model load per model,
provenance, and the real engine end to end on a tiny random model."""

from __future__ import annotations

import subprocess
import sys
import weakref

import pytest

from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import ModelSpec
from workers.record import SCHEMA_VERSION
from workers.worker import CellWorker

TINY = ModelSpec(tag="d[2,2]-h[64,128]", vocab_size=256, sequence_len=64, head_dim=32)


def cell(**kw) -> dict:
    params = {"model": TINY, "method": "cached", "batch_size": 2, "prompt_len": 8,
              "max_tokens": 4, "repeats": 1, **kw}
    return CellSpec(**params).to_dict()


class FakeBackend:
    """Counts loads; fails on request: batch_size 13 raises, 99 is an out-of-memory."""

    def __init__(self):
        self.loads = 0

    def device(self):
        return "cpu"

    def load(self, model, *, device, dtype):
        self.loads += 1
        return object()

    def measure(self, model, cell, *, device):
        if cell["batch_size"] == 13:
            raise RuntimeError("bad\nthing")
        if cell["batch_size"] == 99:
            raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
        return {"decode_tok_s": 10.0, "method": "overridden?", "ttft_ms": 1.0}


def test_ok_record_has_params_metrics_provenance():
    backend = FakeBackend()
    worker = CellWorker(backend=backend, extra_provenance=lambda: {"ray_node_id": "n1"})
    c = cell()
    rec = worker.run(c)
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["cell_id"] == c["cell_id"] and rec["schema_version"] == SCHEMA_VERSION
    assert rec["method"] == "cached"  # params are authoritative over metric keys
    assert rec["decode_tok_s"] == 10.0 and rec["model_tag"] == TINY.tag
    assert rec["device"] == "cpu" and rec["ray_node_id"] == "n1" and rec["hostname"]
    assert rec["started_at"] <= rec["finished_at"] and rec["cell_wall_s"] >= 0


def test_model_loaded_once_per_model():
    backend = FakeBackend()
    worker = CellWorker(backend=backend)
    for method in ("naive", "cached", "naive"):
        worker.run(cell(method=method))
    assert backend.loads == 1
    worker.run({**cell(), "model": {**cell()["model"], "seed": 7}})
    assert backend.loads == 2


def test_failures_are_records_not_exceptions():
    worker = CellWorker(backend=FakeBackend())
    rec = worker.run(cell(batch_size=13))
    assert rec["status"] == "error" and rec["error"] == "RuntimeError: bad thing"
    assert "Traceback" in rec["error_detail"]
    oom = worker.run(cell(batch_size=99))
    assert oom["status"] == "oom" and "out of memory" in oom["error"]
    assert worker.run(cell())["status"] == "ok"  # the worker carries on
    assert worker.run({"cell_id": "x"})["status"] == "error"


def test_real_engine_greedy_naive_equals_cached():
    pytest.importorskip("engine.bench")
    worker = CellWorker()
    naive, cached = worker.run(cell(method="naive")), worker.run(cell(method="cached"))
    for rec in (naive, cached):
        assert rec["status"] == "ok", rec["error_detail"]
        assert rec["decode_tok_s"] > 0 and rec["ttft_ms"] > 0
        assert len(rec["decode_step_ms"]) == 3  # repeats=1, max_tokens-1 decode steps
        assert rec["torch_version"] and rec["torch_num_threads"] >= 1
    assert naive["tokens_sha256"] == cached["tokens_sha256"]
    assert naive["generated_ids"] == cached["generated_ids"]


def test_real_engine_oom_from_memory_budget():
    pytest.importorskip("engine.bench")
    rec = CellWorker().run(cell(memory_budget_bytes=1024))
    assert rec["status"] == "oom" and "memory budget" in rec["error"]


def test_real_engine_prompt_text_uses_byte_tokenizer():
    pytest.importorskip("engine.bench")
    rec = CellWorker().run(cell(prompt="hello world"))
    assert rec["status"] == "ok", rec["error_detail"]


def test_driver_modules_do_not_import_torch():
    code = ("import sys, orchestrator.cli, orchestrator.run.submit, orchestrator.run.dispatch, "
            "workers.actor; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


class CudaOomBackend(FakeBackend):
    """Raises torch.cuda.OutOfMemoryError while a local ("the KV cache") is still referenced."""

    def __init__(self):
        super().__init__()
        self.cache_ref = None

    def measure(self, model, cell, *, device):
        import torch

        if cell["batch_size"] == 64:
            kv_cache = torch.zeros(1024)  # held by this frame, so by the traceback
            self.cache_ref = weakref.ref(kv_cache)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().measure(model, cell, device=device)


def test_cuda_oom_frees_the_failed_cells_memory_and_carries_on(monkeypatch):
    import torch

    backend, alive_at_empty_cache = CudaOomBackend(), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def empty_cache():
        if backend.cache_ref is not None:  # (also called when the model is loaded)
            alive_at_empty_cache.append(backend.cache_ref() is not None)

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    worker = CellWorker(backend=backend)
    rec = worker.run(cell(batch_size=64, prompt_len=16, max_tokens=8))
    assert rec["status"] == "oom"
    assert rec["error"].startswith("out of memory at batch_size=64 prompt_len=16 max_tokens=8 "
                                   "dtype=float32: OutOfMemoryError: CUDA out of memory")
    assert (rec["batch_size"], rec["prompt_len"], rec["max_tokens"]) == (64, 16, 8)
    assert alive_at_empty_cache == [False]  # the cell's tensors were gone before empty_cache
    assert worker.run(cell())["status"] == "ok" and backend.loads == 1  # model kept, goes on


@pytest.mark.gpu
def test_real_cuda_oom_is_recorded_and_memory_released():
    pytest.importorskip("engine.bench")
    import torch

    worker = CellWorker()
    assert worker.run(cell())["status"] == "ok"  # model loaded on the GPU
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    huge = worker.run(cell(batch_size=1 << 22, prompt_len=60, max_tokens=4))
    assert huge["status"] == "oom", huge["error"]
    assert "batch_size=4194304" in huge["error"]
    assert torch.cuda.memory_allocated() <= baseline + (16 << 20)  # the failed cell freed
    assert worker.run(cell())["status"] == "ok"


def test_a_worker_that_never_restarts_is_given_up(monkeypatch):
    """A restart that never answers (node gone, no GPU to place the actor on) must not hang the
    sweep: past the start timeout the worker is lost and gets no more cells."""
    from orchestrator.run import dispatch
    from orchestrator.run.actors import Slot
    from orchestrator.spec.job import WorkersSpec

    dispatcher = dispatch.Dispatcher([], WorkersSpec(), on_record=lambda record: None)
    slot = Slot(index=0, handle=None, state="restarting")
    dispatcher.slots = [slot]
    dispatcher.ever_ready = True
    probe = object()
    dispatcher.probes[probe] = slot
    dispatcher.probe_deadlines[probe] = 10.0
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: 5.0)
    dispatcher._check_probes()
    assert dispatcher.lost == set() and probe in dispatcher.probes
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: 11.0)
    dispatcher._check_probes()
    assert dispatcher.lost == {0} and not dispatcher.probes and not dispatcher.probe_deadlines
    assert 0 in dispatcher._busy()
