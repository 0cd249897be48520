"""Naive vs cached decode speed on this machine, in one run, the methods interleaved.

    python benchmarks/cached_vs_naive.py                     # the issue's setting, ~7 min on 2 cores
    python benchmarks/cached_vs_naive.py --rounds 1 --max-tokens 64   # a quick look

Model d[4,8]-h[256,512] (vocab 32768, head_dim 128), random init, float32, batch 1, prompt 512,
256 new tokens. Each round measures naive once and cached (the eager engine) and cached_graph (its
static-shape path, each decode phase replayed from a trace on CPU) ``--fast-repeats`` times each,
alternating, the order reversing between rounds, with ``engine.bench.measure_cell``; each figure
is a median over a method's runs, and speedups are quoted only if the greedy tokens of every run
are identical. Then each cached method's step time at two prompt lengths shows
whether it stays flat.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench import BenchSpec, measure_cell
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.model import UNet

MIB = 2**20
# The eager cached engine, and its static-shape path (engine/static.py: traced phases on CPU).
METHODS = ("naive", "cached", "cached_graph")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default="d[4,8]-h[256,512]")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all methods, order alternating")
    parser.add_argument("--fast-repeats", type=int, default=3,
                        help="runs of each cached method per round (seconds each, where naive takes minutes)")
    parser.add_argument("--flat-prompts", type=int, nargs=2, default=[64, 1024],
                        help="two prompt lengths for the cached step-time flatness check")
    return parser.parse_args(argv)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    config = UNetConfig.from_tag(args.tag, vocab_size=args.vocab_size, head_dim=args.head_dim,
                                 sequence_len=2048)
    model = UNet(config).init_weights("random", seed=0).eval()
    engine = UNetEngine(model)

    def cell(method: str, prompt_len: int):
        spec = BenchSpec(method=method, batch_size=args.batch_size, prompt_len=prompt_len,
                         max_tokens=args.max_tokens, warmup=1, repeats=1, seed=0)
        return measure_cell(model, spec, engine=engine)

    # This machine's speed drifts over minutes: the cached methods, seconds per run, run several
    # times per round, alternating, and every figure below is a median over all of a method's runs.
    results: dict[str, list] = {method: [] for method in METHODS}
    cached_runs = list(METHODS[1:]) * args.fast_repeats
    for round_index in range(args.rounds):
        order = ["naive", *cached_runs] if round_index % 2 == 0 else [*cached_runs[::-1], "naive"]
        for method in order:
            results[method].append(cell(method, args.prompt_len))
            print(f"round {round_index + 1}/{args.rounds} {method:12s} "
                  f"{results[method][-1].decode_tok_s:8.1f} tok/s", file=sys.stderr)

    fingerprints = {r.tokens_sha256 for rs in results.values() for r in rs}
    tokens_match = len(fingerprints) == 1
    rows = []
    for method, runs in results.items():
        tok_s = [r.decode_tok_s for r in runs]
        rows.append([
            method,
            statistics.median(tok_s),
            f"{min(tok_s):.1f}-{max(tok_s):.1f}, n={len(runs)}",
            statistics.median(r.decode_step_ms_p50 for r in runs),
            statistics.median(r.ttft_ms for r in runs),
            max(r.peak_rss_growth_bytes or 0 for r in runs) / MIB,
            runs[0].kv_cache_bytes / MIB,
        ])
    naive_tok_s = rows[0][1]
    # Mean step, not p50: the per-phase step-time distribution is bimodal and its median jumps.
    flat = {method: [cell(method, n) for n in args.flat_prompts] for method in METHODS[1:]}

    print(f"\n{args.tag}  vocab {args.vocab_size}  float32  batch {args.batch_size}  "
          f"prompt {args.prompt_len}  new {args.max_tokens}  rounds {args.rounds}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, commit {git_commit()}")
    print(tabulate(rows, headers=["method", "decode tok/s", "range", "step p50 ms", "TTFT ms",
                                  "peak RSS growth MiB", "KV analytic MiB"], floatfmt=".2f"))
    print(f"greedy tokens identical across methods and rounds: {'yes' if tokens_match else 'NO'}")
    for method, tok_s in ((row[0], row[1]) for row in rows[1:]):  # medians
        if tokens_match:
            print(f"speedup {method}/naive: {tok_s / naive_tok_s:.1f}x ({1000 / tok_s:.2f} ms per token)")
        else:
            print(f"speedup {method}/naive not reported: the methods disagree")
    for method, (short, long) in flat.items():
        print(f"{method} step mean: prompt {args.flat_prompts[0]} {short.decode_step_ms_mean:.2f} ms, "
              f"prompt {args.flat_prompts[1]} {long.decode_step_ms_mean:.2f} ms "
              f"(ratio {long.decode_step_ms_mean / short.decode_step_ms_mean:.2f})")
    print(f"weights {model.weight_bytes() / MIB:.1f} MiB")
    return 0 if tokens_match else 1


if __name__ == "__main__":
    sys.exit(main())
