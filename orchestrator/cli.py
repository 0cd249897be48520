"""Command line: `python -m orchestrator submit SPEC ...` and `python -m orchestrator summarize DIR`.

    submit SPEC [--results DIR] [--address ADDR] [--set K=V ...] [--dry-run]
                [--rerun failed | --fresh]
        runs the cells never run (or stopped mid-retry); --rerun failed also those whose latest
        attempt failed; --fresh every cell (see orchestrator/run/plan.py, docs/failures.md)
        exit 0: every cell ok; 1: some cells failed (the rest are saved);
        2: invalid spec or arguments (nothing run, no results directory created);
        130: interrupted (finished cells saved; the command it prints resumes).
    summarize RESULTS_DIR      print the summary tables of stored results again
    query, compare, plot, summarize --pivot, submit --progress/--plot: see results_cli.py

Progress and diagnostics go to stderr (logging); tables and cell lists go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from tabulate import tabulate

from orchestrator import results_cli
from orchestrator.errors import Interrupted, OrchestratorError, ResultsError, SpecError
from orchestrator.results import summary
from orchestrator.run.store import ResultStore
from orchestrator.spec.grid import expand_cells
from orchestrator.spec.job import load_job_spec

log = logging.getLogger("orchestrator")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # -v/-q before or after the subcommand
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only warnings and tables",
    )
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Benchmark UNet LMs (naive vs cached) on Ray.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "submit", parents=[common], help="run a job spec (resumes: cells already ok are skipped)"
    )
    p.add_argument("spec", help="job spec YAML, e.g. jobs/sweep.yaml")
    p.add_argument(
        "--results",
        default="results",
        help="results root; the job writes <results>/<name>/ (default: results)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: start a local Ray)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a spec field, value parsed as YAML "
        "(e.g. --set measure.repeats=5 --set grid.batch_size=[1,8])",
    )
    p.add_argument("--dry-run", action="store_true", help="print the cells and run nothing")
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--rerun",
        choices=["failed"],
        default=None,
        help="--rerun failed: also run the cells whose latest attempt failed "
        "(error, timeout, oom, skipped_oom); cells already ok are still skipped",
    )
    again.add_argument(
        "--fresh",
        action="store_true",
        help="run every cell again, even those already ok (earlier rows are kept)",
    )
    results_cli.add_submit_options(p)
    s = sub.add_parser(
        "summarize", parents=[common], help="print the summary tables of a results directory"
    )
    s.add_argument("results_dir", help="a job's results directory (or a results root)")
    results_cli.add_summarize_options(s)
    results_cli.register(sub, parents=[common])
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(message)s" if not verbose else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    )
    for name in ("orchestrator", "workers"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits 2 on bad arguments
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.verbose = getattr(args, "verbose", False)  # -v/-q may come before or after the command
    args.quiet = getattr(args, "quiet", False)
    _configure_logging(args.verbose, args.quiet)
    try:
        if args.command == "submit":
            return _submit(args)
        if args.command in results_cli.COMMANDS:
            return results_cli.run(args)
        if results_cli.wants_pivot(args):
            return results_cli.summarize_pivot(args)
        return _summarize(Path(args.results_dir))
    except OrchestratorError as e:
        print(str(e) if isinstance(e, (SpecError, Interrupted)) else f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _submit(args: argparse.Namespace) -> int:
    job = load_job_spec(args.spec, args.overrides)
    cells = expand_cells(job)
    if args.dry_run:
        rows = [
            [
                c.cell_id,
                c.model.tag,
                c.method,
                c.batch_size,
                c.prompt_len,
                c.max_tokens,
                c.temperature,
                c.top_k,
                c.dtype,
            ]
            for c in cells
        ]
        print(
            tabulate(
                rows,
                headers=[
                    "cell_id",
                    "model",
                    "method",
                    "batch_size",
                    "prompt_len",
                    "max_tokens",
                    "temperature",
                    "top_k",
                    "dtype",
                ],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
        print(f"{len(cells)} cells (dry run: nothing was run)")
        return 0
    if args.address:
        from orchestrator.run.cluster import check_address

        check_address(args.address)
    from orchestrator.run.submit import submit_job

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        outcome = submit_job(
            job,
            Path(args.results),
            address=args.address,
            fresh=args.fresh,
            rerun_failed=args.rerun == "failed",
            **results_cli.submit_options(args),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.render(outcome.rows, title=f"{job.name}: {outcome.job_dir}"))
    results_cli.after_submit(args, outcome.job_dir)
    log.info("%s", outcome.summary_line())
    return outcome.exit_code


def _summarize(results_dir: Path) -> int:
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: no such results directory")
    job_dirs = (
        [results_dir]
        if ResultStore(results_dir).part_files()
        else sorted(d for d in results_dir.iterdir() if d.is_dir() and ResultStore(d).part_files())
    )
    if not job_dirs:
        raise ResultsError(f"{results_dir}: no results files found")
    for i, job_dir in enumerate(job_dirs):
        loaded = ResultStore(job_dir).require_results()
        if i:
            print()
        print(summary.render(loaded.rows(), title=str(job_dir)))
        if loaded.bad_files:
            print(
                f"skipped {len(loaded.bad_files)} unreadable file(s): "
                + ", ".join(Path(f).name for f in loaded.bad_files)
            )
    return 0
