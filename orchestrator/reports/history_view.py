"""What `python -m orchestrator history` prints: the changes of a HistoryAnalysis as text tables
fitted to the terminal, or as csv/json/markdown records.

    print(history_text(analysis, "results/history"))              # header line, then tables
    render(change_records(analysis), "csv")                        # one record per change

Table form: a one-line header (series, commits and runs read; how many series were flagged),
the hardware, then regressions and improvements apart, each largest first, one line per change:
the series (metric, method and the setting values that tell series apart), the commit range
`before..after` (short shas), the medians before and after, the relative change with its 95%
interval, and the p-value. `--all` adds every unchanged series with its newest value.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.reports.changes import Change, HistoryAnalysis
from orchestrator.reports.formats import render
from orchestrator.reports.hardware import legend, letters
from orchestrator.reports.layout import Column, fit
from orchestrator.reports.series import PointColumns, Series, describe, varying

SHORT_SHA = 7
LABELS = {"decode_tok_s": "tok/s", "ttft_ms": "TTFT ms", "speedup": "speedup"}
DIGITS = {"decode_tok_s": 1, "ttft_ms": 2, "speedup": 2}


def short(commit: str) -> str:
    """A commit's short form (a dirty tree keeps its mark).

    >>> short("0123456789abcdef"), short("unknown")
    ('0123456', 'unknown')
    """
    return commit if commit == "unknown" else commit[:SHORT_SHA]


def commit_count(series: Sequence[Series]) -> int:
    """Distinct code versions over `series`."""
    seen: set[str] = set()
    for s in series:
        if isinstance(s.points, PointColumns):
            return len(s.points.commits.commit)
        seen.update(p.code_version for p in s.points)
    return len(seen)


def row_count(series: Sequence[Series]) -> int:
    """Rows read: the values of the metric with the most (each row gives one per metric)."""
    totals: dict[str, int] = {}
    for s in series:
        if isinstance(s.points, PointColumns):
            n = len(s.points.values)
        else:
            n = sum(len(p.values) for p in s.points)
        totals[s.metric] = totals.get(s.metric, 0) + n
    return max(totals.values(), default=0)


def header(analysis: HistoryAnalysis, source: str) -> str:
    """The one-line header of the table form."""
    flagged = {c.series_id for c in analysis.changes}
    reg = sum(c.kind == "regression" for c in analysis.changes)
    imp = len(analysis.changes) - reg
    what = (
        f"{len(flagged)} flagged ({reg} regression{'s' * (reg != 1)}, "
        f"{imp} improvement{'s' * (imp != 1)})"
        if flagged
        else "nothing changed"
    )
    series = analysis.series
    return (
        f"{source}: {len(series)} series, {commit_count(series)} commits, "
        f"{row_count(series)} rows; {what}"
    )


def thresholds(analysis: HistoryAnalysis) -> str:
    """The thresholds a flagged change passed, in words."""
    o = analysis.options
    return f"|change| >= {o.min_change:.0%}, p < {o.alpha:g}, 95% CI excludes 0"


def _number(value: float, metric: str) -> str:
    return f"{value:,.{DIGITS.get(metric, 2)}f}"


def _p(p: float) -> str:
    return f"{p:.0e}" if p < 1e-3 else f"{p:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def _labels(analysis: HistoryAnalysis, series: Sequence[Series]) -> dict[str, str]:
    """series_id -> 'tok/s cached b4 p128' (a hardware letter first when there are several)."""
    shown = varying(analysis.series)
    hw = letters(s.hardware for s in analysis.series)
    several = len(hw) > 1
    out = {}
    for s in series:
        parts = [LABELS.get(s.metric, s.metric), s.method, describe(s, shown) if shown else ""]
        text = " ".join(p for p in parts if p and p != "-")
        out[s.series_id] = f"{hw[s.hardware]}: {text}" if several else text
    return out


def _change_columns(changes: list[Change], by_id: dict[str, Series], labels: dict) -> list:
    metric = [by_id[c.series_id].metric for c in changes]
    commits = [
        f"{short(c.commit_before)}..{short(c.commit_after)}" + ("*" if c.at_tip else "")
        for c in changes
    ]
    return [
        Column(group="", name="series", values=[labels[c.series_id] for c in changes], key=True,
               align="left"),
        Column(group="", name="commits", align="left", values=commits),
        Column(group="median", name="before",
               values=[_number(c.before, m) for c, m in zip(changes, metric)]),
        Column(group="median", name="after",
               values=[_number(c.after, m) for c, m in zip(changes, metric)]),
        Column(group="change %", name="rel", values=[_pct(c.rel_change) for c in changes]),
        Column(group="change %", name="95% CI",
               values=[f"{_pct(c.ci_low)}..{_pct(c.ci_high)}" for c in changes]),
        Column(group="", name="p", values=[_p(c.p_value) for c in changes]),
    ]


def history_text(
    analysis: HistoryAnalysis, source: str, *, show_all: bool = False, width: int | None = None
) -> str:
    """The table form (see the module docstring)."""
    lines = [header(analysis, source)]
    hw = letters(s.hardware for s in analysis.series)
    lines += legend(hw) if len(hw) > 1 else [f"on {h}" for h in hw]
    by_id = {s.series_id: s for s in analysis.series}
    labels = _labels(analysis, [by_id[c.series_id] for c in analysis.changes])
    for kind in ("regression", "improvement"):
        changes = [c for c in analysis.changes if c.kind == kind]
        if changes:
            lines += ["", f"{kind}s ({len(changes)}), largest first: {thresholds(analysis)}"]
            lines.append(fit(_change_columns(changes, by_id, labels), width))
    if any(c.at_tip for c in analysis.changes):
        lines.append("* the newest commit, tested against the commits before it")
    if show_all:
        lines += ["", "every series: newest value"] + [_unchanged(analysis, width)]
    return "\n".join(lines)


def _unchanged(analysis: HistoryAnalysis, width: int | None) -> str:
    series = analysis.series
    labels = _labels(analysis, series)
    flagged = {c.series_id for c in analysis.changes}
    newest = [s.medians()[-1] if len(s.points) else float("nan") for s in series]
    tips = [short(s.commit(len(s.points) - 1)) if len(s.points) else "-" for s in series]
    values = [_number(v, s.metric) for v, s in zip(newest, series)]
    return fit(
        [
            Column(group="", name="series", values=[labels[s.series_id] for s in series],
                   key=True, align="left"),
            Column(group="", name="commits", values=[str(len(s.points)) for s in series]),
            Column(group="", name="newest", align="left", values=tips),
            Column(group="", name="value", values=values),
            Column(group="", name="changed", align="left",
                   values=["yes" if s.series_id in flagged else "no" for s in series]),
        ],
        width,
    )


def change_records(analysis: HistoryAnalysis) -> list[dict]:
    """One record per change (csv/json/markdown), with full commits and the series' setting."""
    by_id = {s.series_id: s for s in analysis.series}
    out = []
    for c in analysis.changes:
        s = by_id[c.series_id]
        out.append(
            {
                "kind": c.kind,
                "at_tip": c.at_tip,
                "metric": s.metric,
                "method": s.method,
                **{k: v for k, v in s.setting.items()},
                "hardware": s.hardware,
                "series_id": c.series_id,
                "index": c.index,
                "commit_before": c.commit_before,
                "commit_after": c.commit_after,
                "before": c.before,
                "after": c.after,
                "rel_change": c.rel_change,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "p_value": c.p_value,
            }
        )
    return out


def series_records(analysis: HistoryAnalysis) -> list[dict]:
    """`--all` in csv/json/markdown: one record per series with its newest value."""
    flagged = {c.series_id for c in analysis.changes}
    return [
        {
            "metric": s.metric,
            "method": s.method,
            **s.setting,
            "hardware": s.hardware,
            "series_id": s.series_id,
            "commits": len(s.points),
            "newest_commit": s.commit(len(s.points) - 1) if len(s.points) else None,
            "newest_value": float(s.medians()[-1]) if len(s.points) else None,
            "changed": s.series_id in flagged,
        }
        for s in analysis.series
    ]


def gate_lines(analysis: HistoryAnalysis) -> list[str]:
    """`--fail-on-regression`: one line per regression the newest commit introduced."""
    by_id = {s.series_id: s for s in analysis.series}
    labels = _labels(analysis, [by_id[c.series_id] for c in analysis.regressions_at_tip()])
    lines = []
    for c in analysis.regressions_at_tip():
        s = by_id[c.series_id]
        lines.append(
            f"regression at {short(c.commit_after)}: {labels[c.series_id]} on {s.hardware}: "
            f"{_number(c.before, s.metric)} -> {_number(c.after, s.metric)} "
            f"({_pct(c.rel_change)}%, 95% CI {_pct(c.ci_low)}..{_pct(c.ci_high)}%, "
            f"p={_p(c.p_value)})"
        )
    return lines


def output(analysis: HistoryAnalysis, source: str, fmt: str, *, show_all: bool = False) -> str:
    """The command's stdout in `fmt`."""
    if fmt == "table":
        return history_text(analysis, source, show_all=show_all)
    records = series_records(analysis) if show_all else change_records(analysis)
    return render(records, fmt)
