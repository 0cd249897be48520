"""Grid expansion at scale: `submit --dry-run` of 98,304, 10M and 12M-cell grids, timed as a
subprocess with its peak RSS, plus the refusal of a job over the cell limit and the streamed
resume planning of a 1M-cell job.

    python benchmarks/grid_scale.py            # medians of 3 runs per size
    python benchmarks/grid_scale.py --runs 1

Targets (issue 13): a dry run of a 10M-cell grid in <= 10 s and <= 500 MB. The specs are
written into a scratch directory; each has an `exclude` (so the count is not a plain product)
and an `include`. Nothing runs on Ray.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> grid axes; every spec below adds one exclude and one include to them
SIZES = {
    # 16 x 32 x 24 x 4 x 2 methods = 98,304
    "98k": {"batch_size": range(1, 17), "prompt_len": range(16, 528, 16),
            "max_tokens": range(16, 400, 16), "temperature": [0.0, 0.3, 0.7, 1.0]},
    # 50 x 100 x 100 x 10 x 2 = 10,000,000
    "10M": {"batch_size": range(1, 51), "prompt_len": range(16, 1616, 16),
            "max_tokens": range(16, 1616, 16), "temperature": [i / 10 for i in range(10)]},
    # 60 x 100 x 100 x 10 x 2 = 12,000,000
    "12M": {"batch_size": range(1, 61), "prompt_len": range(16, 1616, 16),
            "max_tokens": range(16, 1616, 16), "temperature": [i / 10 for i in range(10)]},
}


def write_spec(directory: Path, name: str, axes: dict) -> Path:
    grid = "\n".join(f"  {axis}: {list(values)}" for axis, values in axes.items())
    spec = directory / f"grid_{name}.yaml"
    spec.write_text(textwrap.dedent("""\
        name: grid_{name}
        model: {{tag: "d[2,4]-h[128,256]", checkpoint: random, sequence_len: 4096, head_dim: 64}}
        grid:
          method: [naive, cached]
        {grid}
        exclude:
          - {{method: naive, batch_size: 1, prompt_len: 16}}
        include:
          - {{method: cached, batch_size: 64}}
        """).format(name=name, grid=grid))
    return spec


def timed(argv: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS in MB, exit code, last stdout/stderr lines) of one subprocess."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        tail = out.read().strip().splitlines()[-3:]
    return wall, usage.ru_maxrss / 1024, proc.returncode, " | ".join(tail)


def planning(runs: int) -> str:
    """Streamed resume planning of a 1M-cell job against an empty history, in a subprocess."""
    code = textwrap.dedent("""\
        import resource, sys, time
        from orchestrator.run.plan import plan_job
        from orchestrator.spec.grid import count_cells
        from orchestrator.spec.job import load_job_spec
        job = load_job_spec(sys.argv[1], ["grid.batch_size=[1,2,3,4,5]"])
        t0 = time.perf_counter()
        plan = plan_job(job, {})  # as submit plans: every cell is to run, so every one is built
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{count_cells(job):,} cells, {len(plan.todo):,} to run: {dt:.1f} s, "
              f"{len(plan.todo) / dt:,.0f} cells/s, peak RSS {rss:.0f} MB")
    """)
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp), "1M", SIZES["10M"])
        lines = [subprocess.run([sys.executable, "-c", code, str(spec)], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
                 for _ in range(runs)]
    return lines[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True, check=False).stdout.strip()
    print(f"# grid_scale: {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, commit {commit}, medians of {args.runs}", flush=True)
    print(f"{'grid':>5}  {'command':<32} {'wall s':>7} {'peak RSS MB':>12} {'exit':>5}  output",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, axes in SIZES.items():
            spec = write_spec(Path(tmp), name, axes)
            base = [sys.executable, "-m", "orchestrator", "submit", str(spec)]
            cases = [("--dry-run --max-cells 20000000", [*base, "--dry-run", "--max-cells",
                                                          "20000000"])]
            if name == "12M":  # the default limit refuses it at once, creating nothing
                cases.append(("submit (over --max-cells)", [*base, "--results", tmp + "/r"]))
            for label, argv in cases:
                results = [timed(argv) for _ in range(args.runs)]
                wall = statistics.median(r[0] for r in results)
                rss = statistics.median(r[1] for r in results)
                print(f"{name:>5}  {label:<32} {wall:7.2f} {rss:12.0f} {results[-1][2]:5d}  "
                      f"{results[-1][3][:150]}", flush=True)
            assert not Path(tmp, "r").exists(), "a refused submit created its results dir"
    print(f"resume planning (streamed): {planning(1)}", flush=True)


if __name__ == "__main__":
    main()
