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
latest ok attempt of each cell is plotted.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import MissingDependencyError, QueryError
from orchestrator.reports.compare import MATCH_CANDIDATES, order_key
from orchestrator.reports.dataset import PEAK_COLUMN, job_dirs, load_results, ok_rows
from orchestrator.reports.hardware import hardware_id

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PLOTS_DIR = "_plots"
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


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _series(rows: list[dict], spec: PlotSpec) -> OrderedDict:
    """{panel value: {line label: [(x, y)]}}, split by hue and any other varying parameter."""
    fixed = {spec.x, spec.col, spec.hue}
    split = [
        c for c in MATCH_CANDIDATES if c not in fixed and len({repr(r.get(c)) for r in rows}) > 1
    ]
    keys = ([spec.hue] if spec.hue else []) + split
    panels: OrderedDict = OrderedDict()
    for row in sorted(rows, key=lambda r: order_key(tuple(r.get(k) for k in (spec.col, *keys)))):
        x, y = row.get(spec.x), row.get(spec.y)
        if x is None or y is None:
            continue
        label = ", ".join(f"{k}={_fmt(row.get(k))}" for k in keys) or spec.y
        panel = row.get(spec.col) if spec.col else None
        panels.setdefault(panel, OrderedDict()).setdefault(label, []).append((x, y / spec.yscale))
    return panels


def draw(rows: list[dict], spec: PlotSpec, out_dir: Path) -> Path:
    """Write one PNG for `spec` from result rows; returns its path."""
    plt = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    for name in (spec.x, spec.y, spec.hue, spec.col):
        if name and not any(name in r for r in rows):
            raise QueryError(
                f"plot: unknown column {name!r}; columns: {', '.join(rows[0]) if rows else 'none'}"
            )
    panels = _series(rows, spec)
    if not panels:
        raise QueryError(f"plot {spec.name}: no rows with both {spec.x} and {spec.y}")
    n = len(panels)
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=True
    )
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        xs_all = sorted({x for pts in lines.values() for x, _ in pts})
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if spec.reference:
            ref = sorted(
                {
                    (r[spec.x], r[spec.reference] / spec.yscale)
                    for r in rows
                    if r.get(spec.reference) and (not spec.col or r.get(spec.col) == panel)
                }
            )
            if ref:
                ax.plot([p[0] for p in ref], [p[1] for p in ref], "k--", label=spec.reference_label)
        if spec.hline is not None:
            ax.axhline(spec.hline, color="grey", linewidth=0.8, linestyle=":")
        if spec.logx:
            ax.set_xscale("log", base=2)
        if spec.logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_log_label))
            ax.yaxis.set_minor_formatter(FuncFormatter(_log_label))
        if all(isinstance(x, (int, float)) for x in xs_all) and len(xs_all) <= 12:
            ax.set_xticks(xs_all)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(spec.x)
        ax.grid(True, which="both", alpha=0.3)
        if spec.col:
            ax.set_title(f"{spec.col} = {_fmt(panel)}", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(spec.ylabel or spec.y)
    fig.suptitle(spec.title or spec.name.removesuffix(".png"), fontsize=11)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speedup_rows(rows: list[dict], den: str = "naive") -> list[dict]:
    """Rows of every method other than `den` with a `speedup` column: their decode tok/s over
    the matching `den` cell's (matched on every other parameter), only where both ran on one
    hardware identity (a cell whose pair ran elsewhere is left out, with a warning).

    >>> speedup_rows([{"method": "naive", "decode_tok_s": 10.0, "batch_size": 1},
    ...               {"method": "cached", "decode_tok_s": 30.0, "batch_size": 1}])[0]["speedup"]
    3.0
    """
    params = [c for c in MATCH_CANDIDATES if c != "method"]
    base = {tuple(r.get(c) for c in params): r for r in rows if r.get("method") == den}
    out, mixed = [], 0
    for row in rows:
        other = base.get(tuple(row.get(c) for c in params))
        if row.get("method") == den or not other:
            continue
        if hardware_id(row) != hardware_id(other):
            mixed += 1  # two machines: no ratio
            continue
        if other.get("decode_tok_s") and row.get("decode_tok_s"):
            out.append({**row, "speedup": row["decode_tok_s"] / other["decode_tok_s"]})
    if mixed:
        log.warning(
            "speedup: %d cell(s) left out: they and their %s cell ran on different hardware",
            mixed,
            den,
        )
    return out


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


def _device(rows: list[dict]) -> str:
    names = sorted({str(r.get("gpu_name") or r.get("device") or "") for r in rows} - {""})
    return ", ".join(names)


def write_plots(path: Path, out: Path | None = None, custom: PlotSpec | None = None) -> list[Path]:
    """Write the default plots (or one `custom` plot) for each job at `path`; returns the files.

    Plots that lack data (e.g. the speedup without naive cells) are skipped with a log line.
    """
    require_matplotlib()
    written = []
    dirs = job_dirs(path)
    for job_dir in dirs:
        rows = ok_rows(load_results(job_dir, latest=True))
        # a job on an object store gets its plots locally, in ./plots/<job> (unless --out)
        here = job_dir / PLOTS_DIR if isinstance(job_dir, Path) else Path("plots") / job_dir.name
        target = (out / job_dir.name if len(dirs) > 1 else out) if out else here
        if not rows:
            log.warning("%s: no ok rows to plot", job_dir)
            continue
        specs = [custom] if custom else default_specs(job_dir.name, _device(rows))
        for spec in specs:
            data = speedup_rows(rows) if spec.y == "speedup" else rows
            needed = [c for c in (spec.x, spec.y) if not any(r.get(c) is not None for r in data)]
            if needed and not custom:
                log.info("%s: skipped %s (no %s values)", job_dir, spec.name, needed[0])
                continue
            written.append(draw(data, spec, target))
    return written
