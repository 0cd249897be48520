"""`python -m orchestrator history RESULTS/JOB`: the series that changed over commits, and the CI
gate (orchestrator/results_cli.py registers it).

    history RESULTS_DIR [--metric M,...] [--min-change 0.05] [--alpha 0.01] [--window 20]
                        [--format table|csv|json|markdown] [--all] [--fail-on-regression]

Exit codes: 0 done (also when changes were found); 1 `--fail-on-regression` and the newest commit
introduced a significant regression on some series: one line each on stderr, after the output;
2 bad input (missing or empty directory, an unknown metric, an option out of range), one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator.cli_help import with_epilog
from orchestrator.errors import UsageError
from orchestrator.reports import changes as changes_mod
from orchestrator.reports.formats import FORMATS
from orchestrator.reports.series import DEFAULT_METRICS, METRICS


def register(sub: Any, parents: list) -> None:
    """Add the `history` subcommand."""
    h = sub.add_parser(
        "history",
        parents=parents,
        help="changes over commits per series (change points, significance); a CI gate",
    )
    with_epilog(h, "history")
    h.add_argument("results_dir", help="a job's results directory (or a results root)")
    h.add_argument(
        "--metric",
        "--metrics",
        dest="metrics",
        help=f"metrics, comma-separated: {', '.join(METRICS)} "
        f"(default: {','.join(DEFAULT_METRICS)})",
    )
    h.add_argument(
        "--min-change",
        type=float,
        default=changes_mod.DEFAULT_MIN_CHANGE,
        help=f"smallest relative change flagged (default {changes_mod.DEFAULT_MIN_CHANGE})",
    )
    h.add_argument(
        "--alpha",
        type=float,
        default=changes_mod.DEFAULT_ALPHA,
        help=f"significance level (default {changes_mod.DEFAULT_ALPHA})",
    )
    h.add_argument(
        "--window",
        type=int,
        default=changes_mod.DEFAULT_WINDOW,
        help=f"at most this many commits before the newest one as its baseline "
        f"(default {changes_mod.DEFAULT_WINDOW}, at least {changes_mod.MIN_SEGMENT})",
    )
    h.add_argument("--format", choices=FORMATS, default="table", help="output format")
    h.add_argument("--all", action="store_true", help="also list the series without a change")
    h.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when the newest commit introduced a significant regression",
    )


def options(args: argparse.Namespace) -> changes_mod.ChangeOptions:
    """ChangeOptions from the arguments; UsageError (exit 2) naming the bad one."""
    for name, ok, want in (
        ("--min-change", args.min_change >= 0 and args.min_change < 10, "a number in [0, 10)"),
        ("--alpha", 0 < args.alpha < 1, "a number between 0 and 1"),
        ("--window", args.window >= changes_mod.MIN_SEGMENT, f">= {changes_mod.MIN_SEGMENT}"),
    ):
        if not ok:
            value = getattr(args, name[2:].replace("-", "_"))
            raise UsageError(f"{name} must be {want}, got {value}")
    return changes_mod.ChangeOptions(
        min_change=args.min_change, alpha=args.alpha, window=args.window
    )


def run(args: argparse.Namespace) -> int:
    from orchestrator.reports.history_view import gate_lines, output
    from orchestrator.reports.query import split_list
    from orchestrator.reports.series import load_series

    opts = options(args)
    metrics = split_list(args.metrics) or DEFAULT_METRICS
    series = load_series(args.results_dir, metrics=metrics)
    analysis = changes_mod.analyze(series, opts)
    print(output(analysis, str(args.results_dir), args.format, show_all=args.all))
    if args.format != "table":
        from orchestrator.reports.history_view import header

        print(header(analysis, str(args.results_dir)), file=sys.stderr)
    if args.fail_on_regression:
        lines = gate_lines(analysis)
        for line in lines:
            print(line, file=sys.stderr)
        return 1 if lines else 0
    return 0
