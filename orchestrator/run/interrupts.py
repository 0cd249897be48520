"""Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop a command the same way, at any moment.

    with interrupts.handled(quit_line="resume with: python -m orchestrator submit ..."):
        run()     # the first signal raises KeyboardInterrupt: finish saving, exit 130

The first signal raises KeyboardInterrupt in the main thread, so the run stops taking cells,
keeps what finished, shuts its workers and Ray down and prints the command that resumes. A second
signal while that cleanup runs only says so (a KeyboardInterrupt inside Ray's shutdown would print
Ray's traceback and leave its helper processes behind); a third one quits at once: Ray's local
processes are killed, `quit_line` is printed, exit 130. Rows already written are on disk either
way (each is written atomically).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_INTERRUPTED = 130


class _Handler:
    def __init__(self, quit_line: str):
        self.quit_line = quit_line
        self.count = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        if self.count == 2:
            _say("stopping: saving finished rows and shutting Ray down; signal again to quit now")
            return
        _kill_local_ray()
        _say(self.quit_line)
        os._exit(EXIT_INTERRUPTED)


def _say(line: str) -> None:
    """Write straight to fd 2 (safe inside a signal handler; a closed terminal is ignored)."""
    with contextlib.suppress(OSError):
        os.write(2, f"{line}\n".encode())


def _kill_local_ray() -> None:
    """Kill the Ray processes this driver started (a local Ray), if any, without waiting."""
    try:
        from ray._private import worker
    except ImportError:
        return
    node = getattr(worker, "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return
    with contextlib.suppress(Exception):
        node.kill_all_processes(check_alive=False, allow_graceful=False)


@contextlib.contextmanager
def handled(quit_line: str = "interrupted") -> Iterator[None]:
    """Install the handler for SIGINT, SIGTERM and SIGHUP (main thread only); restore the
    previous handlers on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler(quit_line)
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        if handler.count == 0:  # after an interrupt, a late signal must not kill the exit path
            for s, previous in saved.items():
                signal.signal(s, previous if previous is not None else signal.SIG_DFL)
