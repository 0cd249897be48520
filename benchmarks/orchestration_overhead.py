"""Orchestration overhead: 50 trivially small cells on one local CPU worker.

    python benchmarks/orchestration_overhead.py [RESULTS_DIR]

Overhead = wall time of the whole submit minus the sum of the cells' own measured wall times,
per cell; and the same for the dispatch loop alone (first cell start to last cell finish), which
leaves out Ray's start-up and the model load.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.run.submit import submit_job
from orchestrator.spec.job import parse_job_spec
from orchestrator.spec.source import Document

JOB = {
    "name": "overhead",
    "model": {"tag": "d[2,2]-h[64,128]", "vocab_size": 256, "sequence_len": 64, "head_dim": 32},
    "grid": {"method": ["cached"], "batch_size": [1, 2, 3, 4, 5], "prompt_len": list(range(1, 11)),
             "max_tokens": [2]},
    "measure": {"warmup": 1, "repeats": 1},
}


def main() -> int:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="overhead-"))
    start = time.perf_counter()
    outcome = submit_job(parse_job_spec(Document(data=JOB)), results)
    wall = time.perf_counter() - start
    rows = outcome.rows
    cell_sum = sum(r["cell_wall_s"] for r in rows)
    span = (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)).total_seconds()
    print(f"{len(rows)} cells: submit {wall:.2f} s, sum of cell wall times {cell_sum:.2f} s")
    print(f"overhead per cell, whole submit (Ray start, actor, model load): {(wall - cell_sum) / len(rows) * 1e3:.1f} ms")
    print(f"overhead per cell, dispatch loop only: {(span - cell_sum) / len(rows) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
