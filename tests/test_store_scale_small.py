"""benchmarks/store_scale.py runs end to end at a tiny size (no timings asserted): it writes the
rows through the store, plans a resume that finds every cell done, compacts, and prints its
table for the loose and the compacted layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_store_scale_benchmark_runs_at_a_tiny_size(tmp_path):
    pytest.importorskip("duckdb")
    proc = subprocess.run(
        [sys.executable, "benchmarks/store_scale.py", "--sizes", "64", "--keep", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    loose = next(line for line in lines if " loose " in line)
    compacted = next(line for line in lines if " compacted " in line)
    assert loose.split()[:3] == ["64", "loose", "64"]  # one file per row
    assert compacted.split()[:3] == ["64", "compacted", "1"]
    job = tmp_path / "n64" / "scale"
    (only,) = job.glob("part-*")
    assert only.name.startswith("part-compact-")
