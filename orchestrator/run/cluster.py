"""Connecting to Ray: start a local instance or join a cluster, with Ray's own log lines kept
out of the terminal (they go to the job's `_ray/ray.log`).

    conn = connect(address, store.ray_log)   # None: a new local Ray; auto, HOST:PORT, ray://...
    ...
    conn.close()                            # shuts down only what it started

Ray is imported here, in dispatch.py and in workers/actor.py only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import ClusterError

log = logging.getLogger(__name__)

ADDRESS_TIMEOUT_S = 10.0


def import_ray():
    """The `ray` module, or ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise ClusterError("Ray is not installed: pip install 'ray>=2.9'") from None
    return ray


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Fail fast (ClusterError) when a host:port or ray://host:port address is unreachable."""
    if address == "auto" or address.startswith("local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ClusterError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(
            f"--address {address}: cannot reach {host}:{port} within "
            f"{timeout_s:g}s ({e.strerror or e})"
        ) from None


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 (and sys.stderr) to `path` while Ray starts, so its chatter lands in the log."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """`ray.init` replaces the SIGTERM handler with `sys.exit`; put back a handler the caller
    installed (the CLI's turns SIGTERM into Ctrl-C: finished cells kept, exit 130, resume hint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if saved not in (None, signal.SIG_DFL):
            signal.signal(signal.SIGTERM, saved)


@dataclass
class RayConnection:
    """A connection made by `connect`; `close()` shuts down only what it started."""

    started: bool
    log_file: Path | None
    handler: logging.Handler | None = None

    def close(self) -> None:
        if self.started:
            ray = import_ray()
            if self.log_file is not None:
                with _stderr_to(self.log_file):
                    ray.shutdown()
            else:
                ray.shutdown()
        if self.handler is not None:
            logging.getLogger("ray").removeHandler(self.handler)
            self.handler.close()


def connect(address: str | None, log_file: Path | None) -> RayConnection:
    """Join `address` (auto, HOST:PORT, ray://HOST:PORT; else $RAY_ADDRESS when set) or start a
    new local Ray without a dashboard; Ray's own log lines go to `log_file`. Reuses an already
    initialized Ray (and then leaves it running)."""
    ray = import_ray()
    if ray.is_initialized():
        return RayConnection(started=False, log_file=None)
    handler = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger = logging.getLogger("ray")
        ray_logger.addHandler(handler)
        ray_logger.propagate = False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        redirect = _stderr_to(log_file) if log_file is not None else contextlib.nullcontext()
        with redirect, _keep_sigterm_handler():
            if address:
                ray.init(address=address, **kwargs)
            elif os.environ.get("RAY_ADDRESS"):  # e.g. inside `ray job submit`: join that
                ray.init(**kwargs)
            else:  # "local": a new instance, never a stale cluster found in /tmp/ray
                ray.init(address="local", include_dashboard=False, **kwargs)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
        if handler is not None:
            logging.getLogger("ray").removeHandler(handler)
        where = f"--address {address}" if address else "local Ray"
        raise ClusterError(
            f"{where}: could not start or join Ray: {' '.join(str(e).split())[:300]}"
        ) from None
    return RayConnection(started=True, log_file=log_file, handler=handler)
