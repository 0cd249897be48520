"""Progress of a submit: a live bar on a terminal, one line per event otherwise (CI, logs).

The driver reports through four calls (the `Progress` protocol):

    progress.begin(total=12, skipped=2, to_run=10, cells=todo)   # once, before the first cell
    progress.started(worker=0, label="... cached b=1 p=32 n=32")
    progress.finished(record, label, final=True)    # final=False: a failed try to be retried
    progress.end()

`LineProgress` logs one line per finished attempt ("[3/10] ok  <label>  decode ... | 3 ok,
0 failed, ETA 40s") and one per start at debug level, through the `orchestrator.run.progress`
logger (so `-q` silences it and log files keep it). `BarProgress` keeps those finished lines and
adds, at the bottom of the terminal, a bar with done/total, ok/failed counts, the elapsed time and
the ETA, and one line per worker with the cell it is running; it redraws twice a second and
moves itself out of the way of any log line. It uses only `\\r` and ANSI escapes.

The ETA adds up, over the cells still to run, how long finished cells of the same kind took on
their worker (`cell_wall_s` less `model_load_s`); for a size not run yet, the same model and
method's times scaled to its batch x sequence (orchestrator/run/eta.py); divided by the number
of workers. Naive cells can take a hundred times longer than cached ones, so a pace averaged
over all cells would be far off. While a method has not finished a cell yet, its cells count as
the slowest method seen so far and the ETA reads ">=".
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Protocol

from orchestrator.run.eta import EtaEstimator
from workers.record import Status

log = logging.getLogger(__name__)
Mode = Literal["auto", "bar", "lines", "off"]
MODES: tuple[str, ...] = ("auto", "bar", "lines", "off")
REFRESH_S = 0.5
BAR_WIDTH = 24


class Progress(Protocol):
    """What the driver calls as cells start and finish."""

    def begin(
        self, *, total: int, skipped: int, to_run: int, cells: Sequence[Any] = ()
    ) -> None: ...
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
    estimator: EtaEstimator | None = None  # per-kind ETA when the driver passed the cells
    workers: set[int] = field(default_factory=set)  # every worker that started a cell

    def start(self, worker: int, label: str) -> None:
        self.running[worker] = (label, time.monotonic())
        self.workers.add(worker)

    def finish(self, record: dict, *, final: bool) -> None:
        worker = record.get("worker_index")
        if worker is not None:
            self.running.pop(worker, None)
        if self.estimator is not None:
            self.estimator.finished(record, final=final)
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
        """Seconds left (None before the first cell finishes); see the module docstring."""
        return None if (est := self.estimate()) is None else est[0]

    def estimate(self) -> tuple[float, bool] | None:
        """(seconds left, whether every remaining method has been measured)."""
        if not self.done:
            return None
        if self.estimator is not None:
            workers = len(self.workers) or 1
            est = self.estimator.seconds_left(self.running, workers, time.monotonic())
            if est is not None:
                return est
        return self.elapsed / self.done * max(0, self.to_run - self.done), True

    def counts(self) -> str:
        eta = ""
        if self.done < self.to_run:
            est = self.estimate()
            at_least = "" if est is None or est[1] else ">="
            eta = f", ETA {at_least}{duration(None if est is None else est[0])}"
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

    def begin(self, *, total: int, skipped: int, to_run: int, cells: Sequence[Any] = ()) -> None:
        estimator = EtaEstimator.for_cells(cells) if cells else None
        self.state = ProgressState(total=total, skipped=skipped, to_run=to_run, estimator=estimator)

    def started(self, worker: int, label: str) -> None:
        self.state.start(worker, label)
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

    def begin(self, *, total: int, skipped: int, to_run: int, cells: Sequence[Any] = ()) -> None:
        super().begin(total=total, skipped=skipped, to_run=to_run, cells=cells)
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

    def begin(
        self, *, total: int, skipped: int, to_run: int, cells: Sequence[Any] = ()
    ) -> None: ...
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
def reporting(
    progress: Progress, *, total: int, skipped: int, to_run: int, cells: Sequence[Any] = ()
) -> Iterator[Progress]:
    """begin() ... end(), even when the run is interrupted (`cells`: those to run, for the ETA)."""
    progress.begin(total=total, skipped=skipped, to_run=to_run, cells=cells)
    try:
        yield progress
    finally:
        progress.end()
