"""`python -m orchestrator ...` (see orchestrator/cli.py)."""

import shlex
import signal
import sys


def _early_interrupt(signum, frame):  # SIGTERM/SIGHUP during the imports: like Ctrl-C
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # once is enough: we are on the way out
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Importing the CLI takes seconds (pyarrow, torch-free but heavy): an interrupt meanwhile
    # ends like any other (exit 130, the command to run again), not with a bare exit 143/129.
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, _early_interrupt)
    try:
        from orchestrator.cli import main

        code = main()  # installs its own handlers (orchestrator/run/interrupts.py)
    except KeyboardInterrupt:
        line = shlex.join(["python", "-m", "orchestrator", *sys.argv[1:]])
        print(f"interrupted; nothing was lost; run again with: {line}", file=sys.stderr)
        code = 130
    for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, signal.SIG_IGN)  # the outcome is decided; a late signal changes nothing
    sys.exit(code)
