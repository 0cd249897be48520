"""Where a history series changed: change points (ruptures), tested with rank tests and the
bootstrap (scipy), and the newest commit checked against its baseline (the CI gate).

    analysis = analyze(load_series("results/history"), ChangeOptions())
    [c for c in analysis.changes if c.at_tip and c.kind == "regression"]   # what fails CI

The method, its defaults and why are in docs/metrics.md ("History: finding changes"). In short:

1. Candidates: `ruptures.KernelCPD(kernel="linear")` (PELT, least squares) over the per-commit
   medians divided by their median, segments of at least MIN_SEGMENT commits, penalty
   PENALTY x log(n) x sigma^2, where sigma is the series' own robust noise (the MAD of the first
   differences / sqrt 2, scaled to a standard deviation).
2. Each candidate is tested on the per-run values of the segments before and after it (bounded by
   its neighbouring candidates): Mann-Whitney U (two-sided) p < alpha, |relative change of the
   medians| >= min_change, and the 95% bootstrap interval of that relative change (two
   independent samples, a fixed seed per series: reproducible from the rows) excluding 0.
   Rejected candidates are dropped and the rest tested again until none is dropped.
3. Tip check: the newest commit cannot be a change point (segments need MIN_SEGMENT commits), so
   its runs are tested against the baseline (the commits since the last accepted change, at most
   `window`, at least MIN_SEGMENT) with Student's t test (equal variances: with one newest run the
   prediction-interval test); its interval is the t interval of the difference of means, over
   the baseline median. Flagged on the same three conditions.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from orchestrator.reports.series import Series

# The defaults, in one place (docs/metrics.md says how they were chosen).
DEFAULT_MIN_CHANGE = 0.05  # smallest relative change ever flagged
DEFAULT_ALPHA = 0.01  # significance level of each test
DEFAULT_WINDOW = 20  # at most this many commits in the tip check's baseline
MIN_SEGMENT = 3  # commits on each side of a change point (and in a tip baseline)
PENALTY = 2.0  # change-point penalty: PENALTY * log(n) * sigma^2
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
MAX_ROUNDS = 5  # candidate pruning rounds

Kind = Literal["regression", "improvement"]


@dataclass(frozen=True)
class ChangeOptions:
    """Thresholds of `analyze` (defaults above; `history --min-change/--alpha/--window`)."""

    min_change: float = DEFAULT_MIN_CHANGE
    alpha: float = DEFAULT_ALPHA
    window: int = DEFAULT_WINDOW
    min_segment: int = MIN_SEGMENT
    penalty: float = PENALTY
    resamples: int = BOOTSTRAP_RESAMPLES

    def __post_init__(self) -> None:
        if not (self.min_change >= 0 and math.isfinite(self.min_change)):
            raise ValueError(f"min_change must be a number >= 0, got {self.min_change}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.window < self.min_segment:
            raise ValueError(f"window must be at least {self.min_segment}, got {self.window}")


@dataclass(frozen=True)
class Change:
    """A significant change of one series."""

    series_id: str
    index: int  # index in points of the first point after the change
    commit_before: str  # the range where it happened: the last commit before ...
    commit_after: str  # ... and the first one after
    before: float  # median of the runs before (the segment, or the tip's baseline)
    after: float  # median of the runs after
    rel_change: float  # after / before - 1
    ci_low: float  # 95% interval of rel_change
    ci_high: float
    p_value: float
    kind: Kind
    at_tip: bool  # found by the tip check: the newest commit introduced it


@dataclass(frozen=True)
class HistoryAnalysis:
    series: list[Series]
    changes: list[Change]
    options: ChangeOptions = field(default_factory=ChangeOptions)

    def regressions_at_tip(self) -> list[Change]:
        """What `history --fail-on-regression` fails on."""
        return [c for c in self.changes if c.at_tip and c.kind == "regression"]


def noise_sigma(x: np.ndarray) -> float:
    """A robust standard deviation of the noise around a piecewise-constant level: the MAD of
    the first differences / sqrt(2), times 1.4826 (a normal's MAD to its SD).

    >>> round(noise_sigma(np.array([1.0, 2.0] * 50)), 3)
    0.0
    """
    if len(x) < 3:
        return 0.0
    d = np.diff(x)
    mad = np.median(np.abs(d - np.median(d)))
    return float(1.4826 * mad / math.sqrt(2))


def candidates(medians: np.ndarray, options: ChangeOptions) -> list[int]:
    """Change-point candidates (indices of the first point after each) of one series."""
    n = len(medians)
    if n < 2 * options.min_segment:
        return []
    scale = np.median(medians)
    if not np.isfinite(scale) or scale == 0:
        return []
    x = medians / scale
    sigma = noise_sigma(x)
    # a floor: a series flat to float precision still gets a finite penalty
    var = max(sigma * sigma, (options.min_change / 4) ** 2 / 4, 1e-12)
    import ruptures

    algo = ruptures.KernelCPD(kernel="linear", min_size=options.min_segment, jump=1)
    bkps = algo.fit(x.reshape(-1, 1)).predict(pen=options.penalty * math.log(n) * var)
    return [int(b) for b in bkps[:-1]]


def _pool(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0)


def _rel(before: np.ndarray, after: np.ndarray) -> float:
    b = float(np.median(before))
    return float(np.median(after)) / b - 1 if b else math.nan


def _kind(rel: float, higher_is_better: bool) -> Kind:
    return "improvement" if (rel > 0) == higher_is_better else "regression"


def _seed(series_id: str, index: int) -> int:
    return zlib.crc32(f"{series_id}:{index}".encode())


def _bootstrap_ci(
    before: np.ndarray, after: np.ndarray, seed: int, options: ChangeOptions
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(after)/median(before) - 1."""
    from scipy import stats

    if np.ptp(before) == 0 and np.ptp(after) == 0:
        r = _rel(before, after)
        return r, r

    def statistic(b, a, axis=-1):
        return np.median(a, axis=axis) / np.median(b, axis=axis) - 1

    res = stats.bootstrap(
        (before, after),
        statistic,
        vectorized=True,
        n_resamples=options.resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _test_segments(
    series: Series, runs: list[np.ndarray], cps: list[int], options: ChangeOptions
) -> list[Change]:
    """The candidates `cps` that pass all three conditions against their neighbours."""
    from scipy import stats

    bounds = [0, *cps, len(runs)]
    out = []
    for k in range(1, len(bounds) - 1):
        before = _pool(runs[bounds[k - 1] : bounds[k]])
        after = _pool(runs[bounds[k] : bounds[k + 1]])
        if len(before) < 2 or len(after) < 2:
            continue
        rel = _rel(before, after)
        if not abs(rel) >= options.min_change:
            continue
        if np.ptp(np.concatenate([before, after])) == 0:
            continue
        p = float(stats.mannwhitneyu(before, after, alternative="two-sided").pvalue)
        if not p < options.alpha:
            continue
        lo, hi = _bootstrap_ci(before, after, _seed(series.series_id, bounds[k]), options)
        if lo <= 0 <= hi:
            continue
        i = bounds[k]
        out.append(
            Change(
                series_id=series.series_id,
                index=i,
                commit_before=series.commit(i - 1),
                commit_after=series.commit(i),
                before=float(np.median(before)),
                after=float(np.median(after)),
                rel_change=rel,
                ci_low=lo,
                ci_high=hi,
                p_value=p,
                kind=_kind(rel, series.higher_is_better),
                at_tip=False,
            )
        )
    return out


def _tip(
    series: Series, runs: list[np.ndarray], last_change: int, options: ChangeOptions
) -> Change | None:
    """The newest commit against its baseline (see the module docstring)."""
    from scipy import stats

    n = len(runs)
    start = max(last_change, n - 1 - options.window)
    if n - 1 - start < options.min_segment:
        return None
    baseline = _pool(runs[start : n - 1])
    newest = runs[n - 1]
    if len(baseline) < 2 or len(newest) < 1:
        return None
    base_median = float(np.median(baseline))
    if not base_median:
        return None
    rel = float(np.median(newest)) / base_median - 1
    if not abs(rel) >= options.min_change:
        return None
    if np.ptp(baseline) == 0 and np.ptp(newest) == 0:
        p, lo, hi = 0.0, rel, rel  # no noise at all: any difference is real
    else:
        res = stats.ttest_ind(newest, baseline, equal_var=True)
        p = float(res.pvalue)
        ci = res.confidence_interval(CONFIDENCE)
        lo, hi = float(ci.low) / base_median, float(ci.high) / base_median
    if not (p < options.alpha) or lo <= 0 <= hi:
        return None
    return Change(
        series_id=series.series_id,
        index=n - 1,
        commit_before=series.commit(n - 2),
        commit_after=series.commit(n - 1),
        before=base_median,
        after=float(np.median(newest)),
        rel_change=rel,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        kind=_kind(rel, series.higher_is_better),
        at_tip=True,
    )


def series_changes(series: Series, options: ChangeOptions) -> list[Change]:
    """The significant changes of one series, oldest first (the tip check's last)."""
    medians = series.medians()
    if len(medians) < 2:
        return []
    runs = series.run_values()
    cps = candidates(medians, options)
    found: list[Change] = []
    for _ in range(MAX_ROUNDS):
        found = _test_segments(series, runs, cps, options) if cps else []
        kept = [c.index for c in found]
        if kept == cps:
            break
        cps = kept
    last = found[-1].index if found else 0
    tip = _tip(series, runs, last, options)
    return [*found, *([tip] if tip else [])]


def analyze(series: list[Series], options: ChangeOptions | None = None) -> HistoryAnalysis:
    """Every significant change of every series; regressions first, then improvements, each
    largest first."""
    options = options or ChangeOptions()
    changes = [c for s in series for c in series_changes(s, options)]
    changes.sort(key=lambda c: (c.kind != "regression", -abs(c.rel_change)))
    return HistoryAnalysis(series=list(series), changes=changes, options=options)
