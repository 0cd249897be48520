"""`python -m orchestrator plot RESULTS_DIR`: PNG plots of a sweep (matplotlib, the `plot` extra).

Default plots, written to `<job dir>/_plots/` (or `--out DIR`):

    decode_tok_s_vs_prompt_len.png   decode tokens/s vs prompt length, a line per method (log axes)
    speedup_vs_prompt_len.png        decode speedup over naive vs prompt length, per batch size
                                     (a line per batch size and cached method)
    ttft_vs_prompt_len.png           time to first token vs prompt length, per method
    peak_memory_vs_batch_size.png    peak memory vs batch size per method, analytic KV cache dashed

Custom: `--x COL --y COL [--hue COL] [--col COL] [--logx] [--logy]` writes one plot named
`<y>_vs_<x>[_by_<hue>][_per_<col>].png`. Each `--col` value is a panel, each `--hue` value a line;
any other parameter that varies splits the lines further (never silently averaged). Only the
latest ok attempt of each cell is plotted, and only the columns the plots use are read (never the
raw `decode_step_ms` / `generated_ids` lists).

A figure has at most 12 panels of at most 10 lines (plot_series.py): past that, values are picked
evenly across their sorted order and the figure title and a warning say how many are shown.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import MissingDependencyError, QueryError
from orchestrator.reports.combos import combos, distinct_rows
from orchestrator.reports.compare import MATCH_CANDIDATES
from orchestrator.reports.dataset import PEAK_COLUMN, job_dirs, load_results, results_schema
from orchestrator.reports.hardware import HARDWARE_COLUMNS, hardware_ids
from orchestrator.reports.plot_series import Series, fmt, series
from orchestrator.reports.where import unknown_column
from workers.record import Status

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PLOTS_DIR = "_plots"
MARKER_MAX_POINTS = 60  # a line with more points is drawn without markers: they would hide it
INSTALL_HINT = (
    "plotting needs matplotlib: pip install 'unet-bench[plot]' (or pip install matplotlib)"
)


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend, or MissingDependencyError (exit 2) with the fix."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(INSTALL_HINT) from None
    return plt


@dataclass(frozen=True, kw_only=True)
class PlotSpec:
    """One figure: y against x, a line per hue value, a panel per col value."""

    x: str
    y: str
    hue: str | None = None
    col: str | None = None
    logx: bool = False
    logy: bool = False
    title: str = ""
    ylabel: str | None = None
    yscale: float = 1.0  # y values are divided by this (bytes -> MiB)
    reference: str | None = None  # a column drawn dashed per panel, e.g. kv_cache_bytes
    reference_label: str = ""
    hline: float | None = None  # e.g. 1.0 on a speedup plot
    filename: str | None = None

    @property
    def name(self) -> str:
        if self.filename:
            return self.filename
        parts = [f"{self.y}_vs_{self.x}"]
        if self.hue:
            parts.append(f"by_{self.hue}")
        if self.col:
            parts.append(f"per_{self.col}")
        return "_".join(parts) + ".png"


def _log_label(value: float, _pos: int | None = None) -> str:
    """Tick labels on a log axis at 1, 2 and 5 times a power of ten only.

    >>> [_log_label(v) for v in (20.0, 30.0, 500.0)]
    ['20', '', '500']
    """
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(lead, 6) in (1, 2, 5) else ""


def draw(table: pa.Table, spec: PlotSpec, out_dir: Path) -> Path:
    """Write one PNG for `spec` from the rows of `table`; returns its path."""
    plt = require_matplotlib()
    data = series(table, spec)
    if not data.lines:
        raise QueryError(f"plot {spec.name}: no rows with both {spec.x} and {spec.y}")
    n = len(data.lines)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=True
    )
    # many panels with one legend each would hide the lines: then only the first has it
    legends = {(tuple(data.lines[p]), tuple(data.refs.get(p, ()))) for p in data.lines}
    shared = n > 4 and len(legends) == 1
    for i, (ax, panel) in enumerate(zip(axes.flat, data.lines)):
        _draw_panel(ax, spec, data, panel, legend=i == 0 or not shared)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(spec.ylabel or spec.y)
    title = spec.title or spec.name.removesuffix(".png")
    if data.notes:
        note = "; ".join(data.notes) + " (evenly spaced, smallest and largest included)"
        log.warning("%s: %s", spec.name, note)
        title += "\n" + textwrap.fill(note, width=50 * ncols)  # ~50 characters fit a panel
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_panel(ax: Any, spec: PlotSpec, data: Series, panel: Any, *, legend: bool) -> None:
    """One panel: its lines, its dashed reference lines, axes, ticks, title and legend."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    lines = data.lines[panel]
    for label, pts in lines.items():
        marker = "o" if len(pts) <= MARKER_MAX_POINTS else None
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    refs = data.refs.get(panel, {})
    for i, (label, pts) in enumerate(refs.items()):
        grey = str(round(0.6 * i / (len(refs) - 1), 2)) if len(refs) > 1 else "k"  # black first
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=grey, label=label)
    if spec.hline is not None:
        ax.axhline(spec.hline, color="grey", linewidth=0.8, linestyle=":")
    if spec.logx:
        ax.set_xscale("log", base=2)
    if spec.logy:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_log_label))
        ax.yaxis.set_minor_formatter(FuncFormatter(_log_label))
    xs_all = sorted({x for pts in lines.values() for x, _ in pts})
    if all(isinstance(x, (int, float)) for x in xs_all) and len(xs_all) <= 12:
        ax.set_xticks(xs_all)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(spec.x)
    ax.grid(True, which="both", alpha=0.3)
    if spec.col:
        ax.set_title(f"{spec.col} = {fmt(panel)}", fontsize=10)
    if legend:
        ax.legend(fontsize=7)


def speedup_rows(table: pa.Table, den: str = "naive") -> pa.Table:
    """The rows of every method other than `den`, with a `speedup` column: their decode tok/s
    over the matching `den` cell's (matched on every other parameter), only where both ran on
    one hardware identity (a cell whose pair ran elsewhere is left out, with a warning).

    >>> speedup_rows(pa.table({"method": ["naive", "cached"], "decode_tok_s": [10.0, 30.0],
    ...                        "batch_size": [1, 1]}))["speedup"].to_pylist()
    [3.0]
    """
    if not {"method", "decode_tok_s"} <= set(table.column_names):
        return table.slice(0, 0).append_column("speedup", pa.array([], pa.float64()))
    codes, _ = distinct_rows(table, [c for c in MATCH_CANDIDATES if c != "method"])
    is_den = pc.fill_null(pc.equal(table["method"], den), False)
    den_rows = pc.indices_nonzero(is_den)
    partner = den_rows.take(pc.index_in(codes, value_set=codes.take(den_rows)))  # null: none
    paired = pc.and_(pc.invert(is_den), pc.is_valid(partner))
    rows, partner = table.filter(paired), partner.filter(paired)
    hardware = hardware_ids(table)
    same_hw = pc.equal(hardware.filter(paired), hardware.take(partner))
    mixed = pc.sum(pc.invert(same_hw)).as_py() or 0
    if mixed:  # two machines: no ratio
        log.warning(
            "speedup: %d cell(s) left out: they and their %s cell ran on different hardware",
            mixed,
            den,
        )
    tok_s = rows["decode_tok_s"].cast(pa.float64())
    base = table["decode_tok_s"].cast(pa.float64()).take(partner)
    measured = pc.and_(pc.fill_null(pc.not_equal(tok_s, 0), False), pc.not_equal(base, 0))
    keep = pc.fill_null(pc.and_(same_hw, measured), False)
    speedup = pc.divide(tok_s, base).filter(keep)
    return rows.filter(keep).append_column("speedup", speedup)


def default_specs(job: str, device: str) -> list[PlotSpec]:
    """The four standard plots of a sweep (see the module docstring)."""
    where = f"{job} ({device})" if device else job
    return [
        PlotSpec(
            x="prompt_len",
            y="decode_tok_s",
            hue="method",
            col="batch_size",
            logx=True,
            logy=True,
            ylabel="decode tokens/s",
            filename="decode_tok_s_vs_prompt_len.png",
            title=f"{where}: decode throughput vs prompt length",
        ),
        PlotSpec(
            x="prompt_len",
            y="speedup",
            hue="batch_size",
            logx=True,
            hline=1.0,
            ylabel="decode tok/s over naive",
            filename="speedup_vs_prompt_len.png",
            title=f"{where}: KV-cache speedup vs prompt length",
        ),
        PlotSpec(
            x="prompt_len",
            y="ttft_ms",
            hue="method",
            col="batch_size",
            logx=True,
            logy=True,
            ylabel="TTFT (ms)",
            filename="ttft_vs_prompt_len.png",
            title=f"{where}: time to first token vs prompt length",
        ),
        PlotSpec(
            x="batch_size",
            y=PEAK_COLUMN,
            hue="method",
            col="prompt_len",
            logx=True,
            yscale=MIB,
            ylabel="peak memory (MiB)",
            reference="kv_cache_bytes",
            reference_label="KV cache (analytic)",
            filename="peak_memory_vs_batch_size.png",
            title=f"{where}: peak memory vs batch size",
        ),
    ]


def _device(table: pa.Table) -> str:
    """The GPU names (else device kinds) of the rows, for the titles."""
    _, kinds = combos(table, ["gpu_name", "device"])
    names = {str(k["gpu_name"] or k["device"] or "") for k in kinds} - {""}
    return ", ".join(sorted(names))


# what every plot reads besides its own axes: the status, the parameters that split lines (and
# pair speedup cells), the hardware identity (speedup pairs, titles) and decode tok/s (speedup)
BASE_COLUMNS = ("status", *MATCH_CANDIDATES, *HARDWARE_COLUMNS, "decode_tok_s")


def plot_columns(specs: list[PlotSpec]) -> list[str]:
    """The columns the plots of `specs` read (`peak_bytes` brings its sources along); never the
    raw lists (`decode_step_ms`, `generated_ids`), which cost most of a results file."""
    axes = [c for s in specs for c in (s.x, s.y, s.hue, s.col, s.reference) if c]
    return list(dict.fromkeys(c for c in (*BASE_COLUMNS, *axes) if c != "speedup"))


def check_columns(spec: PlotSpec, schema: pa.Schema) -> None:
    """QueryError (with a did-you-mean) for a custom plot naming a column no results file has;
    `--y speedup` is derived."""
    for flag, name in (("x", spec.x), ("y", spec.y), ("hue", spec.hue), ("col", spec.col)):
        known = schema.append(pa.field("speedup", pa.float64())) if flag == "y" else schema
        if name and name not in known.names:
            raise QueryError(f"plot --{flag}: {unknown_column(name, known)}")


def _plottable(table: pa.Table, spec: PlotSpec) -> str | None:
    """The first of x and y that has no value in `table`, or None."""
    for name in (spec.x, spec.y):
        if name not in table.column_names or table[name].null_count == table.num_rows:
            return name
    return None


def write_plots(path: Path, out: Path | None = None, custom: PlotSpec | None = None) -> list[Path]:
    """Write the default plots (or one `custom` plot) for each job at `path`; returns the files.

    Plots that lack data (e.g. the speedup without naive cells) are skipped with a log line.
    """
    require_matplotlib()
    if custom:
        check_columns(custom, results_schema(path))
    columns = plot_columns([custom] if custom else default_specs("", ""))
    written = []
    dirs = job_dirs(path)
    for job_dir in dirs:
        ok = pc.field("status") == Status.OK.value
        table = load_results(job_dir, latest=True, columns=columns, filter=ok)
        # a job on an object store gets its plots locally, in ./plots/<job> (unless --out)
        here = job_dir / PLOTS_DIR if isinstance(job_dir, Path) else Path("plots") / job_dir.name
        target = (out / job_dir.name if len(dirs) > 1 else out) if out else here
        if not table.num_rows:
            log.warning("%s: no ok rows to plot", job_dir)
            continue
        specs = [custom] if custom else default_specs(job_dir.name, _device(table))
        for spec in specs:
            data = speedup_rows(table) if spec.y == "speedup" else table
            missing = _plottable(data, spec)
            if missing and not custom:
                log.info("%s: skipped %s (no %s values)", job_dir, spec.name, missing)
                continue
            written.append(draw(data, spec, target))
    return written
