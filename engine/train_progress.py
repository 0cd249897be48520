"""The trainer's progress line on stderr: loss, learning rate, tokens/s and ETA.

On a terminal the line is redrawn in place (``\\r``, at most every 0.1 s); otherwise (logs, CI) one
line is printed every ~5% of the steps. ``clear`` blanks the line so that a result can be printed.

>>> progress = Progress(total=300)  # doctest: +SKIP
>>> progress.update(step=1, loss=5.2, tokens=8192, seconds=0.05, lr=3e-3)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class Progress:
    """One status line: redrawn in place (``\\r``) on a terminal, printed every ~5% otherwise."""

    MIN_REDRAW_S = 0.1

    def __init__(self, total: int, start: int = 0, stream=None):
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, (total - start) // 20)
        self.width = 0  # characters of the line on screen (terminal only)
        self.window_tokens, self.window_s = 0, 0.0  # since the last line: for tokens/s
        self.total_s = 0.0  # all steps so far: for the ETA
        self.drawn_at = 0.0

    def update(self, step: int, loss: float, tokens: int, seconds: float, lr: float) -> None:
        """Account one step of ``tokens`` tokens that took ``seconds``; show the line when due."""
        self.window_tokens += tokens
        self.window_s += seconds
        self.total_s += seconds
        now = time.perf_counter()
        if self.tty:
            due = step == self.total or now - self.drawn_at >= self.MIN_REDRAW_S
        else:
            due = step == self.total or (step - self.start) % self.every == 0
        if not due:
            return
        tok_s = self.window_tokens / self.window_s if self.window_s else 0.0
        eta = (self.total - step) * self.total_s / max(1, step - self.start)
        line = (
            f"step {step:>{len(str(self.total))}}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tok_s:,.0f} tok/s | eta {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn_at = now
        self.window_tokens, self.window_s = 0, 0.0

    def clear(self) -> None:
        """Blank the in-place line so that a result line can be printed."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def close(self) -> None:
        self.clear()
