"""Device differences behind one small adapter: synchronisation, timing, memory statistics.

Everything that treats CUDA and CPU differently for measurement lives here, so ``bench`` and
``profiler`` read the same on both:

- ``synchronize(device)`` waits for queued kernels (a no-op on CPU);
- ``SyncTimer`` reads the host clock only after synchronising, so a timed region covers the work
  it launched, not just the launch;
- ``PeakMemory`` tracks the peak of a region: allocator peaks on CUDA (reset at the start), the
  process's resident set on CPU (Linux ``/proc``; see the class for the limits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from typing_extensions import Self

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def as_device(device: torch.device | str) -> torch.device:
    """``"cuda"`` / ``"cpu"`` / ``torch.device`` -> ``torch.device``."""
    return device if isinstance(device, torch.device) else torch.device(device)


def is_cuda(device: torch.device | str) -> bool:
    return as_device(device).type == "cuda"


def same_device(actual: torch.device | str, wanted: torch.device | str) -> bool:
    """True when ``actual`` is ``wanted``; ``"cuda"`` without an index matches any ``cuda:N``."""
    actual, wanted = as_device(actual), as_device(wanted)
    if actual.type != wanted.type:
        return False
    return wanted.index is None or actual.index in (None, wanted.index)


def synchronize(device: torch.device | str) -> None:
    """Wait until every kernel queued on ``device`` has finished (no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.synchronize(as_device(device))


class SyncTimer:
    """Wall-clock timer that synchronises the device before reading the clock.

    >>> with SyncTimer("cpu") as t:
    ...     _ = sum(range(1000))
    >>> t.ms >= 0
    True
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.ms: float | None = None
        self._start = 0.0

    def __enter__(self) -> Self:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._start) * 1e3


# --- host memory (Linux /proc) ------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])  # "VmRSS:   12345 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process (None where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def rss_peak_bytes() -> int | None:
    """Peak resident set size (VmHWM) since process start or the last ``reset_rss_peak``."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS by writing "5" to /proc/self/clear_refs.

    Returns False where that is not permitted (non-Linux, old kernels, restricted containers).
    """
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- device memory ------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device | str) -> None:
    """Reset CUDA's allocator peaks (no-op on CPU)."""
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(as_device(device))


def memory_now(device: torch.device | str) -> dict[str, int | None]:
    """Current memory: CUDA allocated/reserved bytes on a GPU; process RSS always."""
    cuda = is_cuda(device)
    dev = as_device(device)
    return {
        "allocated_bytes": torch.cuda.memory_allocated(dev) if cuda else None,
        "reserved_bytes": torch.cuda.memory_reserved(dev) if cuda else None,
        "rss_bytes": rss_bytes(),
    }


@dataclass(frozen=True)
class MemoryPeak:
    """Peaks of one region; fields that do not apply to the device are None."""

    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    peak_rss_growth_bytes: int | None


class PeakMemory:
    """Peak memory of a region: ``with PeakMemory(device) as m: ...; m.result``.

    CUDA: ``reset_peak_memory_stats`` on entry, ``max_memory_allocated`` / ``max_memory_reserved``
    on exit (they include the weights and anything else live on the device).

    CPU: the growth of the process's peak resident set over the RSS at entry. The kernel keeps one
    peak (VmHWM) per process lifetime; we reset it on entry through /proc/self/clear_refs. Where
    that is refused, the growth is the rise of VmHWM during the region, a lower bound that reads 0
    when the process had peaked higher before. ``exact`` says which case applied. RSS counts every
    thread of the process, so concurrent work in the same process inflates it.
    """

    def __init__(self, device: torch.device | str):
        self.device = device
        self.exact = False
        self.result: MemoryPeak | None = None
        self._rss_start: int | None = None
        self._hwm_start: int | None = None

    def __enter__(self) -> Self:
        if is_cuda(self.device):
            synchronize(self.device)
            reset_peak_memory(self.device)
        else:
            self.exact = reset_rss_peak()
            self._rss_start, self._hwm_start = rss_bytes(), rss_peak_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if is_cuda(self.device):
            synchronize(self.device)
            dev = as_device(self.device)
            self.result = MemoryPeak(
                torch.cuda.max_memory_allocated(dev), torch.cuda.max_memory_reserved(dev), None
            )
            return
        hwm = rss_peak_bytes()
        if hwm is None or self._rss_start is None:
            growth = None
        elif self.exact:
            growth = max(0, hwm - self._rss_start)
        else:
            growth = max(0, hwm - (self._hwm_start or 0))
        self.result = MemoryPeak(None, None, growth)
