"""How the results store scales: resume planning, summarize, query and DuckDB on 1k-100k rows.

    python benchmarks/store_scale.py                       # N = 1k, 10k, 100k (about 15 min)
    python benchmarks/store_scale.py --sizes 1000 --keep /tmp/scale   # one size, keep the data

For each N it writes a job of N realistic rows into a scratch directory, then times each
operation in a fresh Python process (wall time, and the peak RSS of that process from wait4):

    plan       load the spec, read the store's cell history, plan_job: the job's cell ids against
               it (what a re-submit of a finished job does before deciding there is nothing to
               run; the last column splits it: spec load / history read / grid + plan)
    summarize  python -m orchestrator summarize DIR          (output to /dev/null)
    query      python -m orchestrator query DIR --where "status = 'ok'" --limit 5
    duckdb     SELECT * FROM read_parquet('DIR/part-*.parquet', union_by_name=true), materialised
               as an Arrow table, the yardstick (`x duckdb` columns: time / DuckDB's time)

How the rows are produced (honestly): every row is a real cell of the benchmark's own job spec
(2 methods x 4 batch sizes x 4 max_tokens x N/32 prompt lengths, so the planning step finds every
cell done), turned into a record with every metric column, `decode_step_ms` with max_tokens
entries and `generated_ids` of batch x max_tokens ids (naive and cached agree, as greedy cells
do), provenance and timestamps, and converted by the store's own `record_to_table`. Up to 10k
rows each record is written by `ResultStore.write` (one atomic file per attempt, as a submit
does), the readers are timed on that loose layout, then `ResultStore.compact()` runs (timed) and
they are timed again. For 100k rows, writing 100k files would take most of the run, so the
converted rows go straight through the compaction's writer (`compact.write_file`) into the
same compacted layout a submit leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.run import compact as compact_mod
from orchestrator.run.store import KNOWN_COLUMNS, ResultStore, record_to_table
from orchestrator.spec.grid import expand_cells
from orchestrator.spec.job import load_job_spec
from workers.record import SCHEMA_VERSION

BATCHES = (1, 2, 4, 8)
MAX_TOKENS = (16, 32, 64, 128)
SPEC = """\
name: scale
model: {{tag: "d[2,4]-h[128,256]", checkpoint: random, seed: 0, vocab_size: 4096,
        sequence_len: 4096, head_dim: 64, dtype: float32}}
grid:
  method: [naive, cached]
  batch_size: {batches}
  max_tokens: {max_tokens}
  prompt_len: [{prompts}]
measure: {{warmup: 1, repeats: 3, seed: 42}}
workers: {{cpu_workers: 1}}
"""
PLAN = """\
import json, sys, time
t0 = time.perf_counter()
from orchestrator.run.plan import plan_job
from orchestrator.run.store import ResultStore
from orchestrator.spec.job import load_job_spec
t1 = time.perf_counter()
job = load_job_spec(sys.argv[1])
t2 = time.perf_counter()
history = ResultStore(sys.argv[2]).cell_history()
t3 = time.perf_counter()
plan = plan_job(job, history)  # what submit does: the job's cell ids against the history
t4 = time.perf_counter()
assert not plan.todo and plan.skipped_ok == len(history), (len(plan.todo), plan.skipped_ok)
print(json.dumps({"import": t1 - t0, "spec": t2 - t1, "history": t3 - t2, "plan": t4 - t3}))
"""
DUCKDB = """\
import sys, duckdb
t = duckdb.sql(f"SELECT * FROM read_parquet('{sys.argv[1]}/part-*.parquet', union_by_name=true)")
print(t.to_arrow_table().num_rows)
"""


def write_spec(root: Path, n: int) -> Path:
    prompts = max(1, n // (2 * len(BATCHES) * len(MAX_TOKENS)))
    text = SPEC.format(
        batches=list(BATCHES),
        max_tokens=list(MAX_TOKENS),
        prompts=", ".join(str(16 + i) for i in range(prompts)),
    )
    path = root / "scale.yaml"
    path.write_text(text)
    return path


def record(cell, rng: random.Random, i: int) -> dict:
    """One realistic ok row for a cell (see the module docstring)."""
    d = cell.to_dict()
    b, n, p = cell.batch_size, cell.max_tokens, cell.prompt_len
    speed = (4.0 if cell.method == "cached" else 1.0) * 1000.0 / (1 + p / 256)
    steps = [1000.0 / speed * (1 + 0.05 * rng.random()) for _ in range(n)]
    ids_rng = random.Random(hash((p, b, n)))  # naive and cached generate the same ids
    ids = [ids_rng.choices(range(4096), k=n) for _ in range(b)]
    srt = sorted(steps)
    mean = sum(steps) / n
    row = {
        "schema_version": SCHEMA_VERSION, "run_id": "20260101T000000-bench1", "job_name": "scale",
        "cell_id": cell.cell_id, "attempt": 1, "status": "ok", "error": None, "will_retry": False,
        **{k: v for k, v in d.items() if k not in ("model", "cell_id")},
        **{f"model_{k}": v for k, v in d["model"].items()},
        "ttft_ms": p * 0.05, "prefill_tok_s": b * p / (p * 0.05) * 1000, "decode_tok_s": b * speed,
        "decode_step_ms_mean": mean, "decode_step_ms_p50": srt[n // 2],
        "decode_step_ms_p90": srt[int(n * 0.9)], "decode_step_ms_p99": srt[int(n * 0.99)],
        "decode_step_ms_min": srt[0], "decode_step_ms_max": srt[-1],
        "decode_step_ms_std": 0.01, "decode_step_ms_cv": 0.01, "e2e_ms": mean * n + p * 0.05,
        "decode_step_ms": steps, "generated_ids": ids, "ttft_ms_cv": 0.02, "decode_tok_s_cv": 0.01,
        "peak_rss_growth_bytes": b * (p + n) * 4096, "weight_bytes": 12_000_000,
        "kv_cache_bytes": b * (p + n) * 2048 if cell.method == "cached" else 0,
        "tokens_sha256": f"{hash(str(ids)) & (1 << 64) - 1:016x}", "n_generated": n,
        "hostname": "bench-host", "pid": 1000 + i % 8, "device": "cpu",
        "worker_index": i % 8, "python_version": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_version": "2.x", "torch_num_threads": 1, "ray_version": "2.x",
        "git_commit": "0" * 40,
        "started_at": f"2026-01-01T00:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.000+00:00",
        "finished_at": f"2026-01-01T01:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.000+00:00",
        "cell_wall_s": 1.0, "model_load_s": 0.5,
    }
    return row


def write_rows(job_dir: Path, cells: list, loose: bool) -> float:
    """Write one row per cell (see the module docstring); returns seconds."""
    t0 = time.perf_counter()
    rng = random.Random(0)
    store = ResultStore(job_dir)
    if loose:
        for i, cell in enumerate(cells):
            store.write(record(cell, rng, i))
        return time.perf_counter() - t0

    def tables():
        chunk = []
        for i, cell in enumerate(cells):
            chunk.append(record_to_table(record(cell, rng, i)))
            if len(chunk) == 2048:
                yield _concat(chunk)
                chunk = []
        if chunk:
            yield _concat(chunk)

    schema = record_to_table(record(cells[0], rng, 0)).schema
    assert schema.names == list(KNOWN_COLUMNS) and len(cells) <= compact_mod.MAX_ROWS
    name = f"{compact_mod.COMPACT_PREFIX}bench-{len(cells)}.parquet"
    compact_mod.write_file(store.location, name, schema, tables())
    return time.perf_counter() - t0


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


def run_ops(spec: Path, job_dir: Path, repeats: int) -> dict:
    py = sys.executable
    ops = {
        "plan": [py, "-c", PLAN, str(spec), str(job_dir)],
        "summarize": [py, "-m", "orchestrator", "-q", "summarize", str(job_dir)],
        "query": [py, "-m", "orchestrator", "-q", "query", str(job_dir), "--where",
                  "status = 'ok'", "--limit", "5"],
        "duckdb": [py, "-c", DUCKDB, str(job_dir)],
    }
    out = {}
    for name, argv in ops.items():
        runs = [measure_rss(argv) for _ in range(repeats)]
        runs.sort(key=lambda r: r[0])
        wall, _, stdout = runs[len(runs) // 2]
        out[name] = (wall, max(r[1] for r in runs))
        if name == "plan":
            out["plan_parts"] = json.loads(stdout)
    return out


def measure_rss(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MB of that process, stdout). The RSS comes from /usr/bin/time -f %M
    when present: wait4's ru_maxrss of a child forked from this (large) process would count
    this process's own pages from before the exec."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        full = [timer, "-f", "%M", "-o", str(rss_file), *argv] if timer else argv
        t0 = time.perf_counter()
        proc = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        if timer:
            rss_mb = int(rss_file.read_text().split()[-1]) / 1024
        else:
            import resource

            rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return wall, rss_mb, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--loose-up-to", type=int, default=10_000,
                        help="write one file per row up to this N (then compact)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per operation (median)")
    parser.add_argument("--keep", default=None, help="scratch directory to keep (default: temp)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse a compacted job of the right size left there")
    args = parser.parse_args()
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="store_scale-"))
    results = []
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = scratch / f"n{n}"
            root.mkdir(parents=True, exist_ok=True)
            spec = write_spec(root, n)
            cells = list(expand_cells(load_job_spec(str(spec))))
            job_dir = root / "scale"
            loose = len(cells) <= args.loose_up_to
            if args.reuse and _rows(job_dir) == len(cells):
                loose, write_s = False, 0.0  # the compacted job a previous run left
                print(f"N={len(cells)}: reusing {job_dir}", file=sys.stderr)
            else:
                shutil.rmtree(job_dir, ignore_errors=True)
                write_s = write_rows(job_dir, cells, loose)
                how = "one file per row" if loose else "the compaction writer"
                print(f"N={len(cells)}: wrote in {write_s:.1f}s ({how})", file=sys.stderr)
            if loose:
                ops = run_ops(spec, job_dir, args.repeats)
                results.append(row(len(cells), "loose", job_dir, write_s, None, ops))
                compact = [sys.executable, "-m", "orchestrator", "-q", "compact", str(job_dir)]
                compact_s = measure_rss(compact)[0]
            else:
                compact_s = None
            ops = run_ops(spec, job_dir, args.repeats)
            results.append(row(len(cells), "compacted", job_dir, write_s, compact_s, ops))
            print_table(results)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _rows(job_dir: Path) -> int | None:
    """Rows of a compacted job with today's columns (else None: write it again)."""
    if not job_dir.is_dir() or not all(
        p.name.startswith(compact_mod.COMPACT_PREFIX) for p in job_dir.glob("part-*")
    ):
        return None
    import pyarrow.parquet as pq

    if any(pq.read_schema(p).names != list(KNOWN_COLUMNS) for p in job_dir.glob("part-*")):
        return None
    table = ResultStore(job_dir).read(["cell_id"]).table
    return None if table is None else table.num_rows


def row(n, layout, job_dir, write_s, compact_s, ops) -> dict:
    files = [p for p in job_dir.iterdir() if p.name.startswith("part-")]
    return {
        "n": n, "layout": layout, "files": len(files),
        "mb": sum(p.stat().st_size for p in files) / 1e6, "write_s": write_s,
        "compact_s": compact_s, **ops,
    }


def print_table(results: list[dict]) -> None:
    head = ("cells", "layout", "files", "MB", "compact s", "plan s (x duckdb)",
            "summarize s (x duckdb)", "query s (x duckdb)", "duckdb s", "peak RSS MB p/s/q/d",
            "plan: spec/history/grid+plan s")
    lines = [head]
    for r in results:
        d = r["duckdb"][0]
        pp = r["plan_parts"]
        lines.append((
            f"{r['n']:,}", r["layout"], str(r["files"]), f"{r['mb']:.0f}",
            "-" if r["compact_s"] is None else f"{r['compact_s']:.1f}",
            *(f"{r[k][0]:.2f} ({r[k][0] / d:.1f}x)" for k in ("plan", "summarize", "query")),
            f"{d:.2f}",
            "/".join(f"{r[k][1]:.0f}" for k in ("plan", "summarize", "query", "duckdb")),
            f"{pp['spec']:.2f}/{pp['history']:.2f}/{pp['plan']:.2f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print()
    print(f"# {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    for i, line in enumerate(lines):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
