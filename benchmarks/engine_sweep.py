"""Sweep methods x batch sizes x prompt lengths through ``engine.bench`` directly (no Ray).

    python benchmarks/engine_sweep.py --device cuda --dtype bfloat16          # the jobs/h100.yaml grid
    python benchmarks/engine_sweep.py --tag 'd[2,2]-h[64,128]' --vocab-size 512 --head-dim 32 \
        --batch-sizes 1 --prompt-lens 32 --max-tokens 16 --peak-gbps 20      # a CPU smoke run

For a GPU machine without Ray. Prints one row per cell, then per (batch, prompt) the speedups
over naive and whether every method's greedy tokens equal naive's. ``floor ms`` is the time to read
the weights a decode step touches (averaged over phases: stage s runs every 2^s tokens) at
``--peak-gbps``; ``bw %`` is that floor over the measured p50 step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench import BenchSpec, measure_cell
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.model import UNet


def decode_weight_bytes(model: UNet) -> float:
    """Average weight bytes one decode step reads: stage s (and its pool/unpool) every 2^s steps."""
    total = float(model.lm_head.weight[: model.config.vocab_size].nbytes)
    for s in range(model.config.n_stages):
        modules = [*model.encoder_blocks(s), *model.decoder_blocks(s)]
        if s > 0:
            modules += [model.pool(s), model.unpool(s)]
        total += sum(p.nbytes for m in modules for p in m.parameters()) / 2**s
    return total


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default="d[6,12]-h[768,1536]")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["naive", "cached", "cached_graph"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="memory bandwidth (H100 SXM: 3350)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = UNetConfig.from_tag(args.tag, vocab_size=args.vocab_size, head_dim=args.head_dim,
                                 sequence_len=2048)
    dtype = getattr(torch, args.dtype)
    model = UNet(config).init_weights("random", seed=0).to(args.device, dtype).eval()
    floor_ms = decode_weight_bytes(model) / (args.peak_gbps * 1e9) * 1e3
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{args.tag} vocab {args.vocab_size} {args.dtype} on {name}; weight floor {floor_ms:.3f} ms/step "
          f"at {args.peak_gbps:.0f} GB/s", flush=True)
    rows, by_shape = [], {}
    for batch in args.batch_sizes:
        for prompt_len in args.prompt_lens:
            engine = UNetEngine(model)  # fresh per shape, shared by the cached methods
            for method in args.methods:
                spec = BenchSpec(method=method, batch_size=batch, prompt_len=prompt_len,
                                 max_tokens=args.max_tokens, repeats=args.repeats,
                                 device=args.device, dtype=args.dtype)
                result = measure_cell(model, spec, engine=engine)
                by_shape.setdefault((batch, prompt_len), {})[method] = result
                rows.append([method, batch, prompt_len, result.decode_tok_s, result.decode_step_ms_p50,
                             result.decode_step_ms_cv, result.ttft_ms, floor_ms / result.decode_step_ms_p50 * 100,
                             (result.peak_allocated_bytes or 0) / 2**20])
                print(f"  {method:12s} b={batch:<3d} p={prompt_len:<5d} {result.decode_tok_s:10.1f} tok/s",
                      file=sys.stderr, flush=True)
    print(tabulate(rows, headers=["method", "batch", "prompt", "decode tok/s", "step p50 ms", "step cv",
                                  "TTFT ms", "bw %", "peak MiB"], floatfmt=".3f"))
    summary, all_match = [], True
    for (batch, prompt_len), results in by_shape.items():
        naive = results.get("naive")
        line = [batch, prompt_len]
        for method in args.methods:
            if method == "naive" or naive is None:
                continue
            match = results[method].tokens_sha256 == naive.tokens_sha256
            all_match &= match
            line += [f"{results[method].decode_tok_s / naive.decode_tok_s:.1f}x", "yes" if match else "NO"]
        summary.append(line)
    others = [m for m in args.methods if m != "naive"]
    headers = ["batch", "prompt"] + [h for m in others for h in (f"{m}/naive", f"{m} tokens == naive")]
    print(tabulate(summary, headers=headers))
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
