"""Command line: `python -m orchestrator submit SPEC ...` and `python -m orchestrator summarize DIR`.

    submit SPEC [--results DIR] [--address ADDR] [--set K=V ...] [--dry-run]
                [--rerun failed | --fresh] [--continue-run RUN_ID] [--max-cells N]
        runs the cells never run (or stopped mid-retry); --rerun failed also those whose latest
        attempt failed; --fresh every cell (see orchestrator/run/plan.py, docs/failures.md);
        --continue-run what an interrupted run left; refuses jobs over --max-cells (1,000,000)
        exit 0: every cell ok; 1: some cells failed (the rest are saved);
        2: invalid spec or arguments (nothing run, no results directory created);
        3: storage fault (disk full, read-only, a file where a directory belongs, a refused
           object-store request): one line naming the path and the cause; finished rows stay;
        130: interrupted (finished cells saved; the command it prints resumes).
    --results and every RESULTS_DIR take a local path or a storage URI (s3://bucket/prefix,
    gs://..., hdfs://...; see orchestrator/run/storage.py).
    summarize RESULTS_DIR      print the summary tables of stored results again
    query, compare, plot, summarize --pivot, submit --progress/--plot: see results_cli.py

Progress and diagnostics go to stderr (logging); tables and cell lists go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import shlex
import sys

from orchestrator import results_cli
from orchestrator.cli_help import epilog, with_epilog
from orchestrator.errors import Interrupted, OrchestratorError, SpecError
from orchestrator.reports.dataset import job_dirs, rows_of_cells, summary_rows
from orchestrator.run import interrupts
from orchestrator.spec.grid import (
    DEFAULT_MAX_CELLS,
    cell_limit_error,
    count_cells,
    iter_cells,
)

log = logging.getLogger("orchestrator")
DRY_RUN_SAMPLE = 20  # cells a --dry-run lists


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
        epilog=epilog("main"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"print the cell count, the first {DRY_RUN_SAMPLE} cells and the checks; run nothing",
    )
    p.add_argument(
        "--max-cells",
        type=_positive_int,
        default=DEFAULT_MAX_CELLS,
        metavar="N",
        help=f"refuse a job of more than N cells (default {DEFAULT_MAX_CELLS:,})",
    )
    p.add_argument(
        "--continue-run",
        default=None,
        metavar="RUN_ID",
        help="continue an interrupted run: the cells it was to run and did not finish, under "
        "its run_id (the command an interrupted --fresh or --rerun submit prints)",
    )
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
    c = sub.add_parser(
        "compact",
        parents=[common],
        help="rewrite a job's one-file-per-attempt rows into a few large files "
        "(also done after a submit)",
    )
    c.add_argument("results_dir", help="a job's results directory (or a results root)")
    with_epilog(c, "compact")
    results_cli.register(sub, parents=[common])
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits 2 on bad arguments
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.verbose = getattr(args, "verbose", False)  # -v/-q may come before or after the command
    args.quiet = getattr(args, "quiet", False)
    _configure_logging(args.verbose, args.quiet)
    quit_line = _interrupted_line(args)
    try:
        with interrupts.handled(quit_line):  # Ctrl-C, SIGTERM, SIGHUP: KeyboardInterrupt
            return _command(args)
    except OrchestratorError as e:
        print(str(e) if isinstance(e, (SpecError, Interrupted)) else f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # an I/O fault that no layer named: still one line, exit 3
        from orchestrator.errors import StorageError
        from orchestrator.run.storage import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return StorageError.exit_code
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP)
            print(quit_line, file=sys.stderr)
        return interrupts.EXIT_INTERRUPTED


def _interrupted_line(args: argparse.Namespace) -> str:
    """What an interrupt that came before any cell ran prints: for submit, the same command."""
    if args.command != "submit":
        return "interrupted"
    return "interrupted; nothing was lost; resume with: " + shlex.join(
        ["python", "-m", "orchestrator", *args.argv]
    )


def _command(args: argparse.Namespace) -> int:
    if args.command == "submit":
        return _submit(args)
    if args.command in results_cli.COMMANDS:
        return results_cli.run(args)
    if args.command == "compact":
        from orchestrator.run.compact import compact_path

        for line in compact_path(args.results_dir):
            print(line)
        return 0
    if results_cli.wants_pivot(args):
        return results_cli.summarize_pivot(args)
    return _summarize(args.results_dir, args)


def _submit(args: argparse.Namespace) -> int:
    # imported here: the read-only commands (summarize on 100k rows in about a second) skip YAML
    from orchestrator.spec.job import load_job_spec

    job = load_job_spec(args.spec, args.overrides)
    refusal = cell_limit_error(count_cells(job), args.max_cells)
    if refusal and not args.dry_run:  # before the memory check, which may visit every cell
        raise SpecError(job.source, "", refusal)
    worker_memory = _local_cpu_memory(args)
    if worker_memory is not None:  # the same spec, now also checked against this machine's RAM
        job = load_job_spec(args.spec, args.overrides, worker_memory_bytes=worker_memory)
    if args.dry_run:
        return _dry_run(job, args.max_cells)
    from orchestrator.run.cluster import check_address, check_results_target, resolve_address

    address, label = resolve_address(args.address)  # --address, else $RAY_ADDRESS
    if address is not None:
        check_address(address, label=label)  # quick; the bounded trial join comes in connect()
    check_results_target(args.results)
    from orchestrator.run.submit import submit_job

    outcome = submit_job(
        job,
        args.results,  # a path or a storage URI: never a Path (it would mangle s3://)
        address=args.address,
        fresh=args.fresh,
        rerun_failed=args.rerun == "failed",
        max_cells=args.max_cells,
        continue_run=args.continue_run,
        **results_cli.submit_options(args),
    )
    title = f"{job.name}: {outcome.job_dir}"
    # the run is over; the readers render it (the run never imports them)
    rows = rows_of_cells(summary_rows(outcome.job_dir, allow_empty=True)[0], outcome.cell_ids)
    print(results_cli.summary_text(rows, title, args, outcome.job_dir))
    results_cli.after_submit(args, outcome.job_dir)
    log.info("%s", outcome.summary_line())
    return outcome.exit_code


def _dry_run(job, max_cells: int) -> int:
    """Print the job's first cells, their count and the checks' outcome; run nothing.

    The cells are streamed and counted without expanding the grid, so this takes seconds and
    little memory even for millions of cells."""
    total = count_cells(job)
    sample = list(itertools.islice(iter_cells(job), DRY_RUN_SAMPLE))
    headers = [
        "cell_id",
        "model",
        "method",
        "batch_size",
        "prompt_len",
        "max_tokens",
        "temperature",
        "top_k",
        "dtype",
    ]
    rows = [[c.cell_id, c.model.tag, *(getattr(c, h) for h in headers[2:])] for c in sample]
    from tabulate import tabulate  # ~60 ms to import: only where a table is printed with it

    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    if total > len(sample):
        print(f"... {total - len(sample):,} more")
    print(f"{total:,} cells (dry run: nothing was run)")
    refusal = cell_limit_error(total, max_cells)
    if refusal:
        raise SpecError(job.source, "", refusal)
    print(
        f"checks passed: the spec is valid, every cell fits its model's length limit, "
        f"{total:,} cells <= --max-cells {max_cells:,}"
    )
    return 0


def _local_cpu_memory(args: argparse.Namespace) -> int | None:
    """This machine's RAM when the cells will run here on CPU workers (no --address, no GPU, not
    a dry run): cells that cannot fit in it are refused before anything runs (spec/fits.py)."""
    import os

    from orchestrator.spec import memory

    joins = args.address or os.environ.get("RAY_ADDRESS", "").strip()  # cells run elsewhere
    if args.dry_run or joins or memory.local_gpus_visible():
        return None
    return memory.host_memory_bytes()


def _summarize(results_dir: str, args: argparse.Namespace | None = None) -> int:
    # a local path or a storage URI; only the columns the tables show
    jobs = [(job_dir, *summary_rows(job_dir)) for job_dir in job_dirs(results_dir)]
    results_cli.print_summaries(jobs, args)
    return 0
