"""The examples and exit codes shown under `--help` (the main command and each subcommand).

    parser = argparse.ArgumentParser(..., epilog=epilog("main"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    with_epilog(subparser, "summarize")      # the same, on a parser built elsewhere

The codes come from the error classes in orchestrator/errors.py, so the help cannot drift from
what the program returns.
"""

from __future__ import annotations

import argparse

from orchestrator import errors

P = "python -m orchestrator"
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "main": [
        (f"{P} submit jobs/sweep.yaml", "run the main job (ok cells are skipped)"),
        (f"{P} summarize results/sweep", "its tables again (--wide: one line per row)"),
        (f"{P} query results/sweep --where \"status != 'ok'\"", "what failed"),
        (f"{P} compare previous latest --results results/sweep", "two runs, cell by cell"),
        (f"{P} COMMAND --help", "each command's options and examples"),
    ],
    "submit": [
        (f"{P} submit jobs/sweep.yaml", "run the cells never run, then print the tables"),
        (f"{P} submit jobs/sweep.yaml --dry-run", "count and list the cells; run nothing"),
        (f"{P} submit jobs/sweep.yaml --set grid.batch_size=[1,8]", "override a spec field"),
        (f"{P} submit jobs/sweep.yaml --rerun failed", "also rerun the failed cells"),
        (f"{P} submit jobs/sweep.yaml --fresh", "measure every cell again (new run_id)"),
        (f"{P} submit jobs/cluster.yaml --address auto", "on a running Ray cluster"),
    ],
    "summarize": [
        (f"{P} summarize results/sweep", "fitted to the terminal, one block per column group"),
        (f"{P} summarize results/sweep --wide", "every column, one line per row"),
        (f"{P} summarize results/sweep --format csv > sweep.csv", "the same data, complete"),
        (
            f"{P} summarize results/sweep --pivot batch_size --ratio cached/naive",
            "any axes as a table; ratios only within one hardware",
        ),
    ],
    "query": [
        (f"{P} query results/sweep --latest --columns method,decode_tok_s", "two columns"),
        (f'{P} query results/sweep --where "batch_size >= 4"', "a filter"),
        (f"{P} query results/sweep --group-by method --agg decode_tok_s:mean", "a mean"),
    ],
    "compare": [
        (f"{P} compare previous latest --results results/sweep", "the last two runs"),
        (f"{P} compare results/a/sweep results/b/sweep --only-changed", "two directories"),
        (f"{P} compare previous latest --results results/sweep --fail-on-change", ""),
    ],
    "history": [
        (f"{P} history results/history", "the series that changed over commits"),
        (f"{P} history results/history --fail-on-regression", "CI: exit 1 on a new regression"),
        (f"{P} history results/history --all --format csv", "every series, newest values"),
    ],
    "compact": [
        (f"{P} compact results/sweep", "a job's attempt files into a few large files"),
        (f"{P} compact results", "every job under a results root"),
        (f"{P} compact s3://bucket/results/sweep", "a job in a bucket"),
    ],
    "plot": [
        (f"{P} plot results/sweep", "the default PNGs in results/sweep/_plots/"),
        (f"{P} plot results/sweep --x prompt_len --y speedup --hue batch_size", ""),
    ],
}


def _codes(command: str) -> list[tuple[int, str]]:
    bad = errors.SpecError.exit_code
    storage = getattr(errors, "StorageError", None)
    codes = [(0, "done" if command != "submit" else "every cell ok")]
    ones = {
        "main": "submit: some cells failed; compare --fail-on-change: a change found",
        "submit": "some cells failed (the rest are saved)",
        "compare": "--fail-on-change: a change beyond the noise band was flagged",
        "plot": "nothing to plot",
        "history": "--fail-on-regression: the newest commit regressed a series (one line each)",
    }
    if command in ones:
        codes.append((1, ones[command]))
    what = "spec, argument, address" if command in ("main", "submit") else "argument, column, dir"
    codes.append((bad, f"invalid input ({what}): one line on stderr, nothing done"))
    if storage is not None:
        codes.append((storage.exit_code, "storage fault: one line naming the path and the cause"))
    if command in ("main", "submit"):
        codes.append(
            (
                errors.Interrupted.exit_code,
                "interrupted: finished cells kept; it prints how to resume",
            )
        )
    return codes


def epilog(command: str) -> str:
    """The examples and exit codes of `command` ("main" for the top-level parser)."""
    lines = ["examples:"]
    for cmd, what in EXAMPLES[command]:
        lines.append(f"  {cmd}")
        if what:
            lines.append(f"      {what}")
    lines += ["", "exit codes:"]
    lines += [f"  {code:<4} {what}" for code, what in _codes(command)]
    return "\n".join(lines)


def with_epilog(parser: argparse.ArgumentParser, command: str) -> None:
    """Give a parser built elsewhere the epilog of `command`, kept as written."""
    parser.epilog = epilog(command)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
