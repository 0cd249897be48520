"""The result-side commands of the CLI: `query`, `compare`, `plot`, `summarize --pivot`, and the
`submit --progress/--plot` options. `orchestrator.cli` registers them and hands over.

    query RESULTS_DIR [--where EXPR] [--columns A,B|all] [--group-by A,B --agg COL:FN,...]
                      [--sort [-]COL,...] [--limit N] [--latest] [--join-manifest] [--format F]
    compare A B [--results DIR] [--metrics M,...] [--on COLS] [--k 3] [--min-change 0.02]
                [--only-changed] [--fail-on-change] [--format F]
    plot RESULTS_DIR [--out DIR] [--x COL --y COL [--hue COL] [--col COL] [--logx] [--logy]]
    summarize RESULTS_DIR [--pivot ROWS --columns COLS --values METRIC [--ratio A/B] [--agg F]]
    history RESULTS_DIR [...]: see orchestrator/history_cli.py

Exit codes (also under each command's --help, from orchestrator/cli_help.py): 0 done; 1
`compare --fail-on-change` found a change, or `plot` had nothing to plot; 2 a bad argument,
expression, column name, results directory, or matplotlib missing; 3 a storage fault (a
one-line message on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from orchestrator import history_cli
from orchestrator.cli_help import with_epilog
from orchestrator.errors import QueryError
from orchestrator.reports import compare as compare_mod
from orchestrator.reports import summary
from orchestrator.reports.dataset import ids_fetcher, load_results, results_schema
from orchestrator.reports.formats import FORMATS, render
from orchestrator.reports.hardware import HARDWARE_COLUMNS
from orchestrator.reports.pivot import COMBINE, PivotSpec, parse_ratio, pivot
from orchestrator.reports.query import QuerySpec, parse_agg, query_results, split_list
from orchestrator.reports.where import unknown_column
from orchestrator.run.manifest import Invocation
from orchestrator.run.progress import MODES, make_progress
from workers.record import Status

log = logging.getLogger("orchestrator")


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format")


def register(sub: Any, parents: list | tuple = ()) -> None:
    """Add the query, compare and plot subcommands to the CLI's subparsers (`parents`: shared
    option parsers such as -v/-q)."""
    parents = list(parents)
    q = sub.add_parser("query", parents=parents, help="filter, group and sort stored results")
    with_epilog(q, "query")
    q.add_argument("results_dir", help="a job's results directory (or a results root)")
    q.add_argument("--where", help="filter, e.g. \"status = 'ok' and batch_size in (1, 8)\"")
    q.add_argument("--columns", help="columns to show, comma-separated, or 'all'")
    q.add_argument("--group-by", help="group keys, comma-separated")
    q.add_argument("--agg", help="aggregations COL:FN (mean median min max count sum std)")
    q.add_argument(
        "--sort",
        help="sort keys, comma-separated; --sort=-COL or COL:desc for descending",
    )
    q.add_argument("--limit", type=int, help="at most N rows")
    q.add_argument("--latest", action="store_true", help="only the latest attempt of each cell")
    q.add_argument(
        "--join-manifest", action="store_true", help="add the run_* columns of the run manifests"
    )
    _format_option(q)

    c = sub.add_parser("compare", parents=parents, help="compare two runs cell by cell")
    with_epilog(c, "compare")
    c.add_argument("a", metavar="A", help="run id (or unique prefix) or results directory")
    c.add_argument("b", metavar="B", help="run id (or unique prefix) or results directory")
    c.add_argument("--results", help="where to find run ids (job dir, results root or URI)")
    c.add_argument(
        "--metrics", help=f"metrics, comma-separated (default: {','.join(compare_mod.METRICS)})"
    )
    c.add_argument("--on", help="match on these columns instead of the varying parameters")
    c.add_argument("--k", type=float, default=compare_mod.DEFAULT_K, help="spread multiple (3)")
    c.add_argument(
        "--min-change",
        type=float,
        default=compare_mod.DEFAULT_MIN_CHANGE,
        help="smallest relative change ever flagged (0.02)",
    )
    c.add_argument("--only-changed", action="store_true", help="show only flagged lines")
    c.add_argument("--fail-on-change", action="store_true", help="exit 1 when a change is flagged")
    c.add_argument(
        "--any-hardware",
        action="store_true",
        help="also compare cells whose A and B rows ran on different hardware (default: shown, "
        "no ratio)",
    )
    _format_option(c)

    p = sub.add_parser(
        "plot", parents=parents, help="PNG plots of stored results (needs matplotlib)"
    )
    with_epilog(p, "plot")
    p.add_argument("results_dir", help="a job's results directory (or a results root)")
    p.add_argument("--out", type=Path, help="output directory (default: <job dir>/_plots)")
    p.add_argument("--x", help="custom plot: x column (with --y)")
    p.add_argument("--y", help="custom plot: y column, or 'speedup' (cached/naive)")
    p.add_argument("--hue", help="custom plot: one line per value of this column")
    p.add_argument("--col", help="custom plot: one panel per value of this column")
    p.add_argument("--logx", action="store_true", help="custom plot: log2 x axis")
    p.add_argument("--logy", action="store_true", help="custom plot: log y axis")
    history_cli.register(sub, parents)


def add_summarize_options(parser: argparse.ArgumentParser) -> None:
    """--pivot/--columns/--values/--ratio/--agg/--wide/--format for `summarize`, and its
    examples and exit codes under --help."""
    with_epilog(parser, "summarize")
    d = PivotSpec()
    parser.add_argument("--pivot", help=f"pivot rows, comma-separated (default {','.join(d.rows)})")
    parser.add_argument("--columns", help=f"pivot columns (default {','.join(d.columns)})")
    parser.add_argument("--values", help=f"the metric in the cells (default {d.values})")
    parser.add_argument("--ratio", help="add the ratio of two column values, e.g. cached/naive")
    parser.add_argument("--agg", choices=tuple(COMBINE), default="mean", help="combine duplicates")
    _wide_option(parser)
    _format_option(parser)


def _wide_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wide",
        action="store_true",
        help="summary tables on one line per row, every column (default: fit the terminal)",
    )


def summary_text(
    rows: summary.Rows, title: str, args: argparse.Namespace | None = None, job_dir: Any = None
) -> str:
    """The summary of `rows` as `summarize`/`submit` print it: fitted to the terminal, one line
    per row with --wide, or the table's data with --format csv/json/markdown (whose notes, such
    as mixed hardware or mixed runs, go to stderr). `job_dir`: where to read the generated ids
    of the cells whose tokens differ, to name the first differing token."""
    fmt = getattr(args, "format", "table")
    fetch = None if job_dir is None else ids_fetcher(job_dir)
    if fmt == "table":
        wide = bool(getattr(args, "wide", False))
        return summary.render(rows, title=title, wide=wide, fetch_ids=fetch)
    for note in summary.notes(rows, fetch):
        print(note, file=sys.stderr)
    return render(summary.records(rows, fetch), fmt)


def print_summaries(
    jobs: list[tuple[Any, summary.Rows, list[str]]], args: argparse.Namespace
) -> None:
    """`summarize`: each job's (dir, rows, unreadable files) as tables, or as one csv/json/
    markdown document with a `job` column (notes and skipped files then go to stderr)."""
    fmt = getattr(args, "format", "table")
    if fmt == "table":
        for i, (job_dir, rows, bad_files) in enumerate(jobs):
            print(("\n" if i else "") + summary_text(rows, str(job_dir), args, job_dir))
            _skipped(bad_files, sys.stdout)
        return
    records = []
    for job_dir, rows, bad_files in jobs:
        name = getattr(job_dir, "name", str(job_dir))
        for note in summary.notes(rows, ids_fetcher(job_dir)):
            print(f"{name}: {note}", file=sys.stderr)
        _skipped(bad_files, sys.stderr)
        records += [{"job": name, **r} for r in summary.records(rows, ids_fetcher(job_dir))]
    print(render(records, fmt))


def _skipped(bad_files: list[str], stream: Any) -> None:
    if bad_files:
        names = ", ".join(Path(f).name for f in bad_files)
        print(f"skipped {len(bad_files)} unreadable file(s): {names}", file=stream)


def add_submit_options(parser: argparse.ArgumentParser) -> None:
    """--progress, --plot and --wide for `submit`, and its examples and exit codes."""
    with_epilog(parser, "submit")
    parser.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="auto: a live bar when stderr is a terminal, else one line per cell",
    )
    parser.add_argument("--plot", action="store_true", help="write the plots when the run ends")
    _wide_option(parser)


def submit_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for submit_job from the parsed submit options."""
    if args.plot:
        from orchestrator.reports.plot import require_matplotlib

        require_matplotlib()  # fail before the sweep, not after it
    argv = getattr(args, "argv", None)
    return {
        "progress": make_progress("off" if getattr(args, "quiet", False) else args.progress),
        "invocation": Invocation(
            argv=("python", "-m", "orchestrator", *(sys.argv[1:] if argv is None else argv)),
            spec_file=args.spec,
            overrides=tuple(args.overrides),
        ),
    }


def after_submit(args: argparse.Namespace, job_dir: Path) -> None:
    """`submit --plot`: write the default plots of the job."""
    if args.plot:
        from orchestrator.reports.plot import write_plots

        for path in write_plots(job_dir):
            log.info("plot: %s", path)


def wants_pivot(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("pivot", "columns", "values", "ratio"))


def summarize_pivot(args: argparse.Namespace) -> int:
    """`summarize --pivot ...`: print the pivot table."""
    d = PivotSpec()
    spec = PivotSpec(
        rows=split_list(args.pivot) or d.rows,
        columns=split_list(args.columns) or d.columns,
        values=args.values or d.values,
        ratio=parse_ratio(args.ratio),
        agg=args.agg,
    )
    schema = results_schema(args.results_dir)  # unknown names: one line listing the columns
    for name in (*spec.rows, *spec.columns, spec.values):
        if name not in schema.names:
            raise unknown_column(name, schema)
    table = load_results(
        args.results_dir,
        latest=True,
        columns=[*spec.rows, *spec.columns, spec.values, *HARDWARE_COLUMNS],
        filter=pc.field("status") == Status.OK.value,
    )
    notes: list[str] = []
    print(render(pivot(table, spec, notes), args.format))
    for note in notes:  # on stdout under a table, on stderr beside csv/json/markdown
        print(note, file=sys.stdout if args.format == "table" else sys.stderr)
    return 0


def _query(args: argparse.Namespace) -> int:
    spec = QuerySpec(
        where=args.where,
        columns=split_list(args.columns),
        group_by=split_list(args.group_by),
        agg=parse_agg(args.agg),
        sort=split_list(args.sort),
        limit=args.limit,
    )
    table = query_results(args.results_dir, spec, latest=args.latest, manifests=args.join_manifest)
    print(render(table, args.format))
    return 0


def _compare(args: argparse.Namespace) -> int:
    metrics = split_list(args.metrics) or tuple(compare_mod.METRICS)
    columns = compare_mod.needed_columns(metrics, split_list(args.on))
    a = compare_mod.resolve_side(args.a, args.results, columns)
    b = compare_mod.resolve_side(args.b, args.results, columns)
    result = compare_mod.compare(
        a,
        b,
        metrics=metrics,
        on=split_list(args.on),
        k=args.k,
        min_change=args.min_change,
        any_hardware=args.any_hardware,
    )
    lines = result.flagged if args.only_changed else result.lines
    if args.format == "table" and result.differs:
        print(
            "differs between A and B: "
            + ", ".join(f"{c} ({va} vs {vb})" for c, (va, vb) in result.differs.items())
        )
    if args.format == "table" and result.other_hw:
        ha, hb = result.other_hw[0]
        print(
            f"hardware differs between A and B for {len(result.other_hw)} cells (e.g. A on {ha}, "
            f"B on {hb}): shown without ratios; --any-hardware compares them anyway"
        )
    print(render(lines, args.format) if lines else "(no lines)")
    print(compare_mod.summary_line(result, a, b), file=sys.stderr)
    return 1 if args.fail_on_change and result.flagged else 0


def _plot(args: argparse.Namespace) -> int:
    from orchestrator.reports.plot import PlotSpec, write_plots

    custom = None
    if args.x or args.y or args.hue or args.col:
        if not (args.x and args.y):
            raise QueryError("a custom plot needs both --x and --y")
        custom = PlotSpec(
            x=args.x, y=args.y, hue=args.hue, col=args.col, logx=args.logx, logy=args.logy
        )
    written = write_plots(args.results_dir, args.out, custom)
    for path in written:
        print(path)
    return 0 if written else 1


COMMANDS = {"query": _query, "compare": _compare, "plot": _plot, "history": history_cli.run}


def run(args: argparse.Namespace) -> int:
    """Run one of COMMANDS."""
    return COMMANDS[args.command](args)
