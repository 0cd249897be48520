"""Where time and memory go: latency statistics, timers, memory snapshots, torch.profiler traces.

- ``LatencyStats.from_values(ms)``: the one place that turns raw latencies into statistics
  (``bench`` and ``SimpleTimer`` both use it).
- ``SimpleTimer``: ``with timer.measure("forward"): ...`` then ``timer.summary()``.
- ``MemoryProfiler``: ``snapshot(label)`` then ``summary()`` with deltas between snapshots.
- ``TorchProfiler``: Chrome traces on CPU or CUDA, automatic file names, and a per-region table
  built from the regions the model marks with ``record_function`` (embedding, pool_s,
  encoder_stage_s, decoder_stage_s, unpool_s, lm_head, sampling).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from engine.device import SyncTimer, is_cuda, memory_now, synchronize

REGION_RE = re.compile(
    r"^(embedding|lm_head|sampling|(pool|encoder_stage|decoder_stage|unpool)_(\d+))$"
)
STAT_KEYS = ("mean", "p50", "p90", "p99", "min", "max", "std", "cv")
NAME_PARAMS = ("method", "prompt_len", "max_tokens", "batch_size", "temperature")


# --- statistics ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyStats:
    """Summary of a list of latencies in milliseconds; every field is None for an empty list.

    ``std`` is the sample standard deviation (n - 1; 0 for a single value), ``cv = std / mean``;
    percentiles interpolate linearly between order statistics (numpy's default).

    >>> LatencyStats.from_values([1.0, 2.0, 3.0]).p50
    2.0
    """

    count: int
    total: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    min: float | None
    max: float | None
    std: float | None
    cv: float | None

    @classmethod
    def from_values(cls, values: Sequence[float]) -> LatencyStats:
        x = np.asarray(list(values), dtype=np.float64)
        if x.size == 0:
            return cls(0, None, None, None, None, None, None, None, None, None)
        mean = float(x.mean())
        std = float(x.std(ddof=1)) if x.size > 1 else 0.0
        p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
        return cls(
            count=int(x.size), total=float(x.sum()), mean=mean, p50=p50, p90=p90, p99=p99,
            min=float(x.min()), max=float(x.max()), std=std,
            cv=std / mean if mean > 0 else None,
        )

    def columns(self, prefix: str, keys: Sequence[str] = STAT_KEYS) -> dict[str, float | None]:
        """Flat columns ``{prefix}_{key}``: ``columns("decode_step_ms")["decode_step_ms_p50"]``."""
        return {f"{prefix}_{k}": getattr(self, k) for k in keys}


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


# --- SimpleTimer --------------------------------------------------------------------------------
class SimpleTimer:
    """Labelled wall-clock timings, synchronised on CUDA.

    >>> timer = SimpleTimer()
    >>> with timer.measure("forward"):
    ...     _ = sum(range(100))
    >>> timer.summary()["forward"]["count"]
    1
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.times_ms: dict[str, list[float]] = {}

    @contextmanager
    def measure(self, label: str) -> Iterator[None]:
        timer = SyncTimer(self.device)
        with timer:
            yield
        self.times_ms.setdefault(label, []).append(timer.ms)

    def summary(self) -> dict[str, dict[str, float | int]]:
        """Per label: count, total_ms, mean_ms, p50_ms."""
        out = {}
        for label, values in self.times_ms.items():
            stats = LatencyStats.from_values(values)
            out[label] = {"count": stats.count, "total_ms": stats.total, "mean_ms": stats.mean,
                          "p50_ms": stats.p50}
        return out

    def table(self) -> str:
        rows = [[label, s["count"], s["total_ms"], s["mean_ms"], s["p50_ms"]]
                for label, s in self.summary().items()]
        return tabulate(rows, headers=["label", "count", "total ms", "mean ms", "p50 ms"],
                        floatfmt=".3f")

    def reset(self) -> None:
        self.times_ms.clear()


# --- MemoryProfiler -----------------------------------------------------------------------------
class MemoryProfiler:
    """Labelled memory snapshots: CUDA allocated/reserved on a GPU, process RSS on both.

    >>> mem = MemoryProfiler("cpu")
    >>> _ = mem.snapshot("start"); _ = mem.snapshot("after")
    >>> [row["label"] for row in mem.summary()]
    ['start', 'after']
    """

    FIELDS = ("allocated_bytes", "reserved_bytes", "rss_bytes")

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.snapshots: list[dict] = []

    def snapshot(self, label: str) -> dict:
        synchronize(self.device)
        snap = {"label": label, **memory_now(self.device)}
        self.snapshots.append(snap)
        return snap

    def summary(self) -> list[dict]:
        """One row per snapshot, with ``delta_<field>`` against the previous snapshot (None for
        the first one, or where the field does not apply to the device)."""
        rows, previous = [], None
        for snap in self.snapshots:
            row = dict(snap)
            for field in self.FIELDS:
                before = previous.get(field) if previous else None
                now = snap.get(field)
                known = now is not None and before is not None
                row[f"delta_{field}"] = now - before if known else None
            rows.append(row)
            previous = snap
        return rows

    def table(self) -> str:
        def mib(v):
            return None if v is None else v / 2**20

        cols = [f for f in self.FIELDS if any(s.get(f) is not None for s in self.snapshots)]
        rows = [[r["label"]] + [mib(r[c]) for c in cols] + [mib(r[f"delta_{c}"]) for c in cols]
                for r in self.summary()]
        headers = ["label"] + [f"{c[:-6]} MiB" for c in cols] + [f"Δ{c[:-6]} MiB" for c in cols]
        return tabulate(rows, headers=headers, floatfmt=".2f", missingval="-")


# --- TorchProfiler ------------------------------------------------------------------------------
def _name_params(params: dict) -> dict:
    """The file-name parameters of ``profile_function``, with the seed's ``prompt_length``
    accepted for ``prompt_len``; unknown names are refused."""
    params = dict(params)
    if "prompt_length" in params:
        length = params.pop("prompt_length")
        if params.setdefault("prompt_len", length) != length:
            raise ValueError(f"prompt_length={length} and prompt_len={params['prompt_len']} "
                             "disagree: pass one of them")
    unknown = set(params) - set(NAME_PARAMS)
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}: expected method, prompt_len (or "
                         "prompt_length), max_tokens, batch_size, temperature")
    return params


def format_temperature(temperature: float) -> str:
    """``0.7 -> "0p7"``, ``0 -> "0p0"``, ``1 -> "1p0"``: file-name safe."""
    return repr(float(temperature)).replace(".", "p")


def profile_filename(
    method: str | None, prompt_len: int, max_tokens: int, batch_size: int = 1,
    temperature: float = 0.0, when: datetime | None = None,
) -> str:
    """``profile_[<method>_]<YYYYMMDD_HHMMSS>_prompt<N>_gen<M>[_bs<B>]_t<T>.json``.

    The method part is left out when ``method`` is None (the seed's own call names none), the
    batch part for batch 1:

    >>> profile_filename("cached", 128, 64, 4, 0.7, datetime(2025, 1, 2, 3, 4, 5))
    'profile_cached_20250102_030405_prompt128_gen64_bs4_t0p7.json'
    >>> profile_filename(None, 128, 64, 1, 0.0, datetime(2025, 1, 2, 3, 4, 5))
    'profile_20250102_030405_prompt128_gen64_t0p0.json'
    """
    stamp = (when or datetime.now()).strftime("%Y%m%d_%H%M%S")
    head = f"profile_{method}_" if method else "profile_"
    batch = f"_bs{batch_size}" if batch_size != 1 else ""
    return (f"{head}{stamp}_prompt{prompt_len}_gen{max_tokens}{batch}"
            f"_t{format_temperature(temperature)}.json")


def profile_dir(model_tag: str | None = None, base_dir: str | os.PathLike | None = None,
                output_dir: str | os.PathLike | None = None) -> Path:
    """``<base>/base_checkpoints/<model_tag>/profiles`` for a model tag, else ``output_dir``.

    ``<base>`` is ``base_dir``, else ``$NANOCHAT_BASE_DIR``, else the current directory (the
    seed's relative ``base_checkpoints/<model_tag>/profiles/``).
    """
    if model_tag is not None:
        if not isinstance(model_tag, str) or not model_tag or "/" in model_tag \
                or model_tag in (".", ".."):
            raise ValueError(f"model_tag must name one directory, like 'd[6,12]-h[768,1536]', "
                             f"got {model_tag!r}")
        base = base_dir if base_dir is not None else os.environ.get("NANOCHAT_BASE_DIR") or "."
        return Path(base) / "base_checkpoints" / model_tag / "profiles"
    if output_dir is None:
        raise ValueError("auto_save needs a directory: pass model_tag= (profiles go under "
                         "<base>/base_checkpoints/<model_tag>/profiles) or output_dir=")
    return Path(output_dir)


def _region_order(name: str) -> tuple:
    match = REGION_RE.match(name)
    kind, stage = match.group(2), int(match.group(3) or 0)
    return {
        "embedding": (0,), "pool": (1, stage, 0), "encoder_stage": (1, stage, 1),
        "decoder_stage": (2, -stage, 0), "unpool": (2, -stage, 1),
        "lm_head": (3,), "sampling": (4,),
    }[kind or name]


@dataclass(frozen=True)
class RegionStat:
    """Time spent in one model region over a profile (milliseconds, summed over calls)."""

    region: str
    calls: int
    cpu_total_ms: float
    device_total_ms: float | None


def region_stats(prof: torch.profiler.profile) -> list[RegionStat]:
    """The model's regions from ``prof.key_averages()``, in forward order."""
    stats = []
    for evt in prof.key_averages():
        if not REGION_RE.match(evt.key):
            continue
        device_us = getattr(evt, "device_time_total", None)
        if device_us is None:
            device_us = getattr(evt, "cuda_time_total", None)
        stats.append(RegionStat(evt.key, int(evt.count), evt.cpu_time_total / 1e3,
                                None if device_us is None else device_us / 1e3))
    return sorted(stats, key=lambda s: _region_order(s.region))


def region_table(stats: Sequence[RegionStat]) -> str:
    """A table of regions: calls, total and per-call CPU time, device time, share of the total."""
    total = sum(s.cpu_total_ms for s in stats) or 1.0
    with_device = any(s.device_total_ms for s in stats)
    rows = []
    for s in stats:
        row = [s.region, s.calls, s.cpu_total_ms, s.cpu_total_ms / max(s.calls, 1),
               100 * s.cpu_total_ms / total]
        rows.append(row + ([s.device_total_ms] if with_device else []))
    headers = ["region", "calls", "cpu ms", "cpu ms/call", "cpu %"]
    headers += ["device ms"] if with_device else []
    return tabulate(rows, headers=headers, floatfmt=".3f")


@dataclass(frozen=True)
class ProfileRun:
    """What ``profile_function`` returns: the trace path (None when not saved) and the regions."""

    path: Path | None
    regions: list[RegionStat]
    profile_iters: int

    def table(self) -> str:
        return region_table(self.regions)


class TorchProfiler:
    """torch.profiler on CPU or CUDA, with Chrome traces and a per-region summary.

    >>> profiler = TorchProfiler("cpu")
    >>> with profiler.profile(output_path="trace.json"):            # doctest: +SKIP
    ...     model(ids)
    >>> print(profiler.table())                                     # doctest: +SKIP
    """

    def __init__(self, device_type: str | None = None, *, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False):
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
        if device_type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device_type='cuda' but CUDA is not available: use device_type='cpu'")
        self.device_type = device_type
        self.record_shapes = record_shapes
        self.profile_memory = profile_memory
        self.with_stack = with_stack
        self.last: torch.profiler.profile | None = None

    @property
    def activities(self) -> list[torch.profiler.ProfilerActivity]:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if is_cuda(self.device_type):
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        return acts

    @contextmanager
    def profile(
        self, output_path: str | os.PathLike | None = None
    ) -> Iterator[torch.profiler.profile]:
        """Profile the body; write a Chrome trace to ``output_path`` (parents created) if given."""
        with torch.profiler.profile(activities=self.activities, record_shapes=self.record_shapes,
                                    profile_memory=self.profile_memory,
                                    with_stack=self.with_stack) as prof:
            yield prof
            synchronize(self.device_type)
        self.last = prof
        if output_path is not None:
            Path(output_path).parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(output_path))

    def profile_function(
        self, fn: Callable[[], object], warmup_iters: int = 3, profile_iters: int = 10,
        auto_save: bool = True, *, output_dir: str | os.PathLike | None = None,
        model_tag: str | None = None, base_dir: str | os.PathLike | None = None, **params,
    ) -> ProfileRun:
        """Call ``fn()`` ``warmup_iters`` times unprofiled, then ``profile_iters`` times profiled.

        ``params`` name the saved trace: ``prompt_len`` (or the seed's ``prompt_length``) and
        ``max_tokens`` (required when saving), ``method`` (optional), ``batch_size`` (default 1),
        ``temperature`` (default 0.0); see ``profile_filename`` and ``profile_dir``. The seed's
        call works as written:

        >>> TorchProfiler("cpu").profile_function(
        ...     fn, warmup_iters=3, profile_iters=10, auto_save=True, prompt_length=128,
        ...     max_tokens=64, batch_size=1, temperature=0.0,
        ...     model_tag="d[6,12]-h[768,1536]")                         # doctest: +SKIP
        """
        if warmup_iters < 0 or profile_iters < 1:
            raise ValueError(f"need warmup_iters >= 0 and profile_iters >= 1, got "
                             f"{warmup_iters} and {profile_iters}")
        params = _name_params(params)
        path = None
        if auto_save:
            missing = [k for k in ("prompt_len", "max_tokens") if k not in params]
            if missing:
                raise ValueError(f"auto_save names the trace file from params: pass {missing}")
            path = profile_dir(model_tag, base_dir, output_dir) / profile_filename(
                params.pop("method", None), **params)
        for _ in range(warmup_iters):
            fn()
        synchronize(self.device_type)
        with self.profile(output_path=path):
            for _ in range(profile_iters):
                fn()
        return ProfileRun(path, self.regions(), profile_iters)

    def regions(self, prof: torch.profiler.profile | None = None) -> list[RegionStat]:
        prof = prof or self.last
        if prof is None:
            raise ValueError("nothing profiled yet: run profile() or profile_function() first")
        return region_stats(prof)

    def table(self, prof: torch.profiler.profile | None = None) -> str:
        """Per-region breakdown of the last (or the given) profile."""
        return region_table(self.regions(prof))


__all__ = [
    "LatencyStats", "MemoryProfiler", "ProfileRun", "RegionStat", "SimpleTimer", "TorchProfiler",
    "format_temperature", "median", "profile_dir", "profile_filename", "region_stats",
    "region_table",
]
