"""A watchdog that ends the local Ray processes a driver started once the driver is gone, even
when it was SIGKILLed (Ray's own agents otherwise linger for up to a minute).

    watch = start_watchdog()   # before a local ray.init; a child process in its own session
    ...
    watch.stop()               # after ray.shutdown: it kills whatever is left, then exits

The watchdog notes the driver's new descendants (pid and start time, from /proc; children from
before it started, and theirs, are left alone) every `SNAPSHOT_S` seconds and waits on a pipe
from the driver; at end of file (the driver exited, in any way) it SIGKILLs the noted processes
that still run with the same start time, so a reused pid is never hit. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

SNAPSHOT_S = 1.0

WATCHDOG = """\
import os, select, signal, sys
driver, me, every = int(sys.argv[1]), os.getpid(), float(sys.argv[2])

def table():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append((int(name), fields[19]))
    return kids

def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None

def walk(skip):
    kids, todo, found = table(), [driver], {}
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid != me and pid not in found and (pid, start) not in skip:
                found[pid] = start
                todo.append(pid)
    return found

old = set(walk(set()).items())  # the driver's children from before: never touched
print("ready", flush=True)
seen = {}
while True:
    seen.update(walk(old))
    ready, _, _ = select.select([0], [], [], every)
    if ready and not os.read(0, 4096):
        break
for pid, start in seen.items():
    if start_time(pid) == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


@dataclass
class Watchdog:
    """A running watchdog; `stop()` closes the pipe (it then reaps and exits)."""

    process: subprocess.Popen | None

    def stop(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if self.process is None or self.process.stdin is None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start_watchdog() -> Watchdog:
    """Start watching this process's descendants (no-op where /proc is missing)."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return Watchdog(None)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(SNAPSHOT_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not in the driver's group: survives a kill of the group
        )
        process.stdout.readline()  # it has noted the children from before (left alone)
        process.stdout.close()
    except OSError:
        return Watchdog(None)
    watch = Watchdog(process)
    _LIVE.append(watch)  # never closed by garbage collection: only by stop() or our exit
    return watch


_LIVE: list[Watchdog] = []
