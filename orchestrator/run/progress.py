"""Progress of a submit: a live bar on a terminal, one line per event otherwise (CI, logs).

The driver reports through four calls (the `Progress` protocol):

    progress.begin(total=12, skipped=2, to_run=10)   # once, before the first cell starts
    progress.started(worker=0, label="... cached b=1 p=32 n=32")
    progress.finished(record, label, final=True)    # final=False: a failed try to be retried
    progress.end()

`LineProgress` logs one line per finished attempt ("[3/10] ok  <label>  decode ... | 3 ok,
0 failed, ETA 40s") and one per start at debug level, through the `orchestrator.run.progress`
logger (so `-q` silences it and log files keep it). `BarProgress` keeps those finished lines and
adds, at the bottom of the terminal, a bar with done/total, ok/failed counts, the elapsed time and
the ETA, and one line per worker with the cell it is running; it redraws twice a second and
moves itself out of the way of any log line. It uses only `\\r` and ANSI escapes.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Literal, Protocol

from workers.record import Status

log = logging.getLogger(__name__)
Mode = Literal["auto", "bar", "lines", "off"]
MODES: tuple[str, ...] = ("auto", "bar", "lines", "off")
REFRESH_S = 0.5
BAR_WIDTH = 24


class Progress(Protocol):
    """What the driver calls as cells start and finish."""

    def begin(self, *, total: int, skipped: int, to_run: int) -> None: ...
    def started(self, worker: int, label: str) -> None: ...
    def finished(self, record: dict, label: str, *, final: bool) -> None: ...
    def end(self) -> None: ...


def duration(seconds: float | None) -> str:
    """'1h02m', '3m05s', '42s' or '?'.

    >>> duration(185), duration(3725), duration(None)
    ('3m05s', '1h02m', '?')
    """
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass
class ProgressState:
    """Counts and timings shared by the displays."""

    total: int = 0
    skipped: int = 0
    to_run: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    t0: float = field(default_factory=time.monotonic)
    running: dict[int, tuple[str, float]] = field(default_factory=dict)  # worker -> label, since

    def finish(self, record: dict, *, final: bool) -> None:
        worker = record.get("worker_index")
        if worker is not None:
            self.running.pop(worker, None)
        if not final:
            return
        self.done += 1
        if record.get("status") == Status.OK.value:
            self.ok += 1
        else:
            self.failed += 1

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before the first cell finishes)."""
        if not self.done:
            return None
        return self.elapsed / self.done * max(0, self.to_run - self.done)

    def counts(self) -> str:
        eta = "" if self.done >= self.to_run else f", ETA {duration(self.eta())}"
        return f"{self.ok} ok, {self.failed} failed{eta}"


def describe(record: dict) -> str:
    """The short outcome of one attempt: throughput and TTFT, or the error."""
    if record.get("status") == Status.OK.value:
        return (
            f"decode {record.get('decode_tok_s') or 0:,.1f} tok/s, "
            f"TTFT {record.get('ttft_ms') or 0:,.2f} ms"
        )
    return record.get("error") or ""


class LineProgress:
    """One log line per event (see the module docstring)."""

    def __init__(self) -> None:
        self.state = ProgressState()

    def begin(self, *, total: int, skipped: int, to_run: int) -> None:
        self.state = ProgressState(total=total, skipped=skipped, to_run=to_run)

    def started(self, worker: int, label: str) -> None:
        self.state.running[worker] = (label, time.monotonic())
        log.debug("worker %d: started %s", worker, label)

    def finished(self, record: dict, label: str, *, final: bool) -> None:
        self.state.finish(record, final=final)
        wall = record.get("cell_wall_s")
        where = f"worker {record.get('worker_index')}" + (f", {wall:.1f}s" if wall else "")
        log.info(
            "[%d/%d] %-11s %s  %s  (%s) | %s",
            self.state.done,
            self.state.to_run,
            record.get("status"),
            label,
            describe(record),
            where,
            self.state.counts(),
        )

    def end(self) -> None:
        s = self.state
        log.info("%d/%d cells run in %s: %s", s.done, s.to_run, duration(s.elapsed), s.counts())


class _BarStream:
    """Stands in for the terminal stream of the log handlers: clears the bar before each write
    and redraws it after each complete line."""

    def __init__(self, bar: BarProgress):
        self.bar = bar

    def write(self, text: str) -> int:
        with self.bar.lock:
            self.bar._clear()
            self.bar.stream.write(text)
            if text.endswith("\n"):
                self.bar._draw()
        return len(text)

    def flush(self) -> None:
        self.bar.stream.flush()


class BarProgress(LineProgress):
    """The finished lines of LineProgress, plus a live bar and per-worker lines at the bottom."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__()
        self.stream = stream or sys.stderr
        self.lock = threading.RLock()
        self.drawn = 0  # lines of the bar area now on screen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._swapped: list[logging.StreamHandler] = []

    def begin(self, *, total: int, skipped: int, to_run: int) -> None:
        super().begin(total=total, skipped=skipped, to_run=to_run)
        proxy = _BarStream(self)
        for name in ("orchestrator", "workers", ""):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                    handler.setStream(proxy)
                    self._swapped.append(handler)
        self._thread = threading.Thread(target=self._refresh, name="progress-bar", daemon=True)
        self._thread.start()

    def started(self, worker: int, label: str) -> None:
        with self.lock:  # the refresh thread reads the state under the same lock
            super().started(worker, label)
            self.redraw()

    def finished(self, record: dict, label: str, *, final: bool) -> None:
        with self.lock:
            super().finished(record, label, final=final)
            self.redraw()

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * REFRESH_S)
        with self.lock:
            self._clear()
            for handler in self._swapped:
                handler.setStream(self.stream)
            self._swapped.clear()
        super().end()

    # -- drawing ----------------------------------------------------------------------------
    def lines(self, width: int) -> list[str]:
        """The bar area as text lines no wider than `width`."""
        s = self.state
        frac = s.done / s.to_run if s.to_run else 1.0
        filled = round(frac * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        head = f"[{bar}] {s.done}/{s.to_run} cells | {s.counts()} | {duration(s.elapsed)} elapsed"
        if s.skipped:
            head += f" | {s.skipped} skipped (already ok)"
        now = time.monotonic()
        out = [head] + [
            f"  worker {w}: {label} ({duration(now - since)})"
            for w, (label, since) in sorted(s.running.items())
        ]
        return [line[: max(10, width - 1)] for line in out]

    def _clear(self) -> None:
        if self.drawn:
            up = f"\x1b[{self.drawn - 1}F" if self.drawn > 1 else ""
            self.stream.write(f"{up}\r\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        lines = self.lines(shutil.get_terminal_size((100, 20)).columns)
        self.stream.write("\n".join(lines))
        self.stream.flush()
        self.drawn = len(lines)

    def redraw(self) -> None:
        with self.lock:
            self._clear()
            self._draw()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.redraw()


class NoProgress:
    """Reports nothing."""

    def begin(self, *, total: int, skipped: int, to_run: int) -> None: ...
    def started(self, worker: int, label: str) -> None: ...
    def finished(self, record: dict, label: str, *, final: bool) -> None: ...
    def end(self) -> None: ...


def make_progress(mode: Mode = "auto", stream: IO[str] | None = None) -> Progress:
    """The display for `mode`; "auto" draws a bar when `stream` (stderr) is a terminal.

    >>> type(make_progress("auto", stream=open("/dev/null", "w"))).__name__
    'LineProgress'
    """
    stream = stream or sys.stderr
    if mode == "off":
        return NoProgress()
    if mode == "bar" or (mode == "auto" and _isatty(stream)):
        return BarProgress(stream)
    return LineProgress()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def reporting(progress: Progress, *, total: int, skipped: int, to_run: int) -> Iterator[Progress]:
    """begin() ... end(), even when the run is interrupted."""
    progress.begin(total=total, skipped=skipped, to_run=to_run)
    try:
        yield progress
    finally:
        progress.end()
