"""Standalone check: greedy generation with the naive and the cached method must agree.

    python -m engine.check [--checkpoint DIR] [--step N] [--prompt TEXT] [--max-tokens N]

Without ``--checkpoint`` it builds a small random-init model. Prints both continuations, each
method's tokens/s and whether they match; exits 1 on a mismatch, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.checkpoint import load_checkpoint
from engine.config import UNetConfig
from engine.engine import UNetEngine
from engine.errors import EngineError
from engine.model import UNet
from engine.naive import naive_generate
from engine.tokenizer import ByteTokenizer, load_tokenizer

DEFAULT_TAG = "d[2,4]-h[128,256]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.check", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="a base_checkpoints/<tag> directory (default: random model)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"tag of the random model (default {DEFAULT_TAG})")
    parser.add_argument("--prompt", default="The hierarchical transformer", help="prompt text")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model")
    return parser


def load_model(args: argparse.Namespace):
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, step=args.step)
        # nanochat keeps tokenizer/ beside base_checkpoints/: <base>/base_checkpoints/<tag>
        tokenizer = load_tokenizer(Path(args.checkpoint).resolve().parent.parent)
        return model, tokenizer
    tokenizer = ByteTokenizer()
    config = UNetConfig.from_tag(args.tag, vocab_size=tokenizer.vocab_size, head_dim=64, sequence_len=1024)
    return UNet(config).init_weights("random", seed=args.seed).eval(), tokenizer


def timed(fn) -> tuple[list[int], float]:
    start = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model, tokenizer = load_model(args)
        if tokenizer.vocab_size > model.config.vocab_size:
            tokenizer = ByteTokenizer() if model.config.vocab_size >= 257 else None
        prompt = tokenizer.encode(args.prompt) if tokenizer else [1, 2, 3]
        engine = UNetEngine(model, tokenizer)
        naive, naive_s = timed(lambda: [int(c[0]) for c in naive_generate(model, prompt, args.max_tokens)])
        cached, cached_s = timed(lambda: engine.generate_batch(prompt, max_tokens=args.max_tokens)[0][0][len(prompt):])
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    show = tokenizer.decode if tokenizer else str
    print(f"model   {model.config.tag}  prompt {len(prompt)} tokens, {args.max_tokens} new")
    print(f"naive   {len(naive) / naive_s:8.1f} tok/s  {show(naive)!r}")
    print(f"cached  {len(cached) / cached_s:8.1f} tok/s  {show(cached)!r}")
    mismatch = next((i for i, (a, b) in enumerate(zip(naive, cached)) if a != b), None)
    if mismatch is None:
        print(f"match   yes ({len(naive)} tokens identical)")
        return 0
    print(f"match   NO: first mismatch at generated token {mismatch}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
