"""Orchestration overhead: how fast the driver feeds workers trivially small cells.

    python benchmarks/orchestration_overhead.py [--cells 6000] [--workers 1,2,4,8] [--engine]

On a local Ray with 8 declared CPUs (`ray.init(num_cpus=8)`, whatever the machine has), for each
worker count it runs one job of trivially small cells and reports:

- `dispatch`: the Dispatcher alone, rows discarded (Ray round trips, queueing, bookkeeping);
- `submit`: the whole `submit_job` path, rows written to a Parquet results dir by the writer
  thread, progress off.

cells/s = cells / span and driver CPU/cell = `time.process_time()` of the driver process (every
thread: dispatch loop, row writer, Ray's client threads) over the same span / cells, where the
span runs from the moment every worker has started a cell (dispatch starts with the first worker
ready; the others join as they come up) until every row is written, and `cells` counts the cells
that finished in it; "of it in the loop" is the dispatch thread's own share
(`time.thread_time()`). Cells use a trivial in-process backend (the worker returns fixed metrics at
once: the real engine's smallest cell takes milliseconds, which would measure the engine);
`--engine` runs the real engine on the smallest cell instead.
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.run.dispatch import Dispatcher
from orchestrator.run.submit import submit_job
from orchestrator.spec.grid import expand_cells
from orchestrator.spec.job import parse_job_spec
from orchestrator.spec.source import Document

DECLARED_CPUS = 8


class TrivialBackend:
    """A worker backend that measures nothing: fixed metrics, no model."""

    def device(self) -> str:
        return "cpu"

    def load(self, model: dict, *, device: str, dtype: str) -> object:
        return object()

    def measure(self, model: object, cell: dict, *, device: str) -> dict:
        return {"decode_tok_s": 1.0, "ttft_ms": 1.0, "tokens_sha256": "0"}


class SpanProgress:
    """A silent Progress that clocks the steady state: from the moment every worker has started
    a cell (workers come up one by one and dispatch starts with the first) to the end of the
    dispatch, counting the cells that finished in between."""

    def __init__(self, workers: int) -> None:
        self.workers, self.seen, self.done = workers, set(), 0
        self.first: tuple[float, float, float] | None = None  # the first cell's start
        self.t0: tuple[float, float, float] | None = None
        self.t1: tuple[float, float, float] | None = None
        self.done_at_t0 = 0

    def begin(self, **counts: object) -> None:
        pass

    def started(self, worker: int, label: str) -> None:
        if self.t0 is None:
            now = (time.perf_counter(), time.process_time(), time.thread_time())
            self.first = self.first or now
            self.seen.add(worker)
            if len(self.seen) == self.workers:
                self.t0, self.done_at_t0 = now, self.done

    def finished(self, record: dict, label: str, **kw: object) -> None:
        self.done += 1

    def end(self) -> None:
        self.t1 = (time.perf_counter(), time.process_time(), time.thread_time())

    def rates(self) -> tuple[int, float, float, float, str]:
        """(cells in the span, cells/s, driver CPU ms per cell, dispatch-thread CPU ms/cell,
        a note); from the first cell on when not every worker started before the end."""
        assert self.first is not None and self.t1 is not None
        start, note = (self.t0, "") if self.t0 else (self.first, "  (not all workers came up)")
        n = self.done - (self.done_at_t0 if self.t0 else 0)
        wall, cpu, loop = (b - a for a, b in zip(start, self.t1, strict=True))
        return n, n / wall, cpu / n * 1e3, loop / n * 1e3, note


def job_spec(name: str, n_cells: int, workers: int):
    """n_cells cells (naive/cached pairs over batch sizes) of the smallest model."""
    data = {
        "name": name,
        "model": {"tag": "d[2]-h[32]", "vocab_size": 256, "sequence_len": 64, "head_dim": 32},
        "grid": {
            "method": ["naive", "cached"],
            "batch_size": list(range(1, n_cells // 2 + 1)),
            "prompt_len": [1],
            "max_tokens": [1],
        },
        "measure": {"warmup": 1, "repeats": 1},
        "workers": {"cpu_workers": workers},
    }
    return parse_job_spec(Document(data=data))


def run_dispatch(job, backend) -> tuple[int, float, float, float, str]:
    cells = list(expand_cells(job))
    span = SpanProgress(job.workers.cpu_workers)
    rows: list[dict] = []

    def on_record(record: dict) -> None:
        rows.append(record)
        span.finished(record, "")

    dispatcher = Dispatcher(
        cells,
        job.workers,
        on_record,
        backend=backend,
        on_start=lambda cell, worker: span.started(worker, ""),
    )
    dispatcher.run()
    span.end()
    assert len(rows) == len(cells) and all(r["status"] == "ok" for r in rows), rows[:1]
    return span.rates()


def run_submit(job, backend, results: Path) -> tuple[int, float, float, float, str]:
    span = SpanProgress(job.workers.cpu_workers)
    outcome = submit_job(job, results, backend=backend, progress=span)
    assert outcome.exit_code == 0 and outcome.ran == len(outcome.cell_ids), outcome.summary_line()
    return span.rates()


def machine() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, commit {commit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 6000: with 8 workers, 2000 cells left a window of under 200 cells once all were up
    parser.add_argument("--cells", type=int, default=6000, help="cells per run (default 6000)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (default 1,2,4,8)")
    parser.add_argument("--engine", action="store_true", help="real engine cells, not trivial")
    parser.add_argument("--modes", default="dispatch,submit", help="dispatch,submit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(address="local", num_cpus=DECLARED_CPUS, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    backend = None if args.engine else TrivialBackend()
    kind = "real engine, smallest cell" if args.engine else "trivial in-process backend"
    print(f"{machine()}; local Ray with {DECLARED_CPUS} declared CPUs; cells: {kind}")
    print(f"{'mode':<9} {'workers':>7} {'cells':>6} {'cells/s':>8} {'driver CPU ms/cell':>19} "
          f"{'of it in the loop':>18}")
    scratch = Path(tempfile.mkdtemp(prefix="overhead-"))
    modes = args.modes.split(",")
    try:
        for w in (int(x) for x in args.workers.split(",")):
            for mode in modes:
                job = job_spec(f"overhead-{mode}-{w}", args.cells, w)
                if mode == "dispatch":
                    n, rate, cpu, loop, note = run_dispatch(job, backend)
                else:
                    n, rate, cpu, loop, note = run_submit(job, backend, scratch)
                print(f"{mode:<9} {w:>7} {n:>6} {rate:>8.0f} {cpu:>19.2f} {loop:>18.2f}{note}",
                      flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
