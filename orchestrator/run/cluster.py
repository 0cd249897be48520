"""Connecting to Ray: start a local instance or join a cluster, always with an answer in bounded
time, and with Ray's own log lines kept out of the terminal.

    log_file = ray_log_file("sweep")          # <system temp>/unet-bench-ray/sweep-<time>-<pid>.log
    conn = connect(address, log_file)         # None: $RAY_ADDRESS if set, else a new local Ray
    ...
    conn.close()                              # shuts down only what it started

Every address, however it arrives (`--address`, `$RAY_ADDRESS`, `auto`), gets the same check
before this process touches Ray: a TCP connect, a one-request sniff that recognises an HTTP server
(a dashboard port, any web server), then a trial `ray.init` in a child process that is killed
after `JOIN_TIMEOUT_S` or as soon as its log shows a token or version refusal. A hanging join
therefore never blocks this process: Ctrl-C and SIGTERM are answered while it runs. Failures are
one ClusterError line naming the cause, what to do, and the Ray log (kept in the system temp dir,
so deleting a results directory never deletes it).

Ray is imported here, in dispatch.py and in workers/actor.py only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import ClusterError, UsageError
from orchestrator.run.reaper import Watchdog, start_watchdog

log = logging.getLogger(__name__)

ADDRESS_TIMEOUT_S = 10.0  # TCP connect
JOIN_TIMEOUT_S = 20.0  # the whole check, TCP connect and trial join included (< 30 s)
SNIFF_TIMEOUT_S = 2.0
LOG_DIR_NAME = "unet-bench-ray"
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# The trial join, run as `python -c PROBE ADDRESS` with stderr going to the Ray log.
PROBE = """\
import json, sys
try:
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    out = {"ok": True, "ray": ray.__version__, "nodes": len(alive)}
    ray.shutdown()
except Exception as e:
    out = {"ok": False, "error": type(e).__name__ + ": " + " ".join(str(e).split())}
print(json.dumps(out), flush=True)
"""
_TOKEN_MARKS = ("InvalidAuthToken", "Unauthenticated", "AuthenticationError")
_VERSION_MARK = "Version mismatch"


def import_ray():
    """The `ray` module, or ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        raise ClusterError("Ray is not installed: pip install 'ray>=2.9'") from None
    return ray


def ray_log_file(name: str) -> Path:
    """A new file for Ray's driver-side log, in the system temp dir (it outlives the results).

    >>> ray_log_file("sweep").parent.name
    'unet-bench-ray'
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "job"
    return Path(tempfile.gettempdir()) / LOG_DIR_NAME / f"{safe}-{stamp}-{os.getpid()}.log"


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """The address to join (None: start a local Ray) and how to name it in messages.

    >>> resolve_address("auto")
    ('auto', '--address auto')
    """
    if address:
        return address, f"--address {address}"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env, f"RAY_ADDRESS={env}"
    return None, "local Ray"


def check_results_target(results: str) -> None:
    """Inside `ray job submit --working-dir`, refuse a relative --results (UsageError): it would
    land in Ray's temporary copy of the working dir, deleted with the session and different for
    every upload (so nothing could be found or resumed)."""
    if "://" in results or os.path.isabs(os.path.expanduser(results)):
        return
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return
    if not (job_config.get("runtime_env") or {}).get("working_dir"):
        return
    raise UsageError(
        f"--results {results}: relative to Ray's temporary copy of the working dir ({os.getcwd()}"
        "), deleted with the Ray session and new for every upload: give an absolute path on the "
        "head node (e.g. --results /data/unet-bench) or a storage URI (s3://bucket/prefix)"
    )


def _host_port(address: str, label: str) -> tuple[str, int] | None:
    if address == "auto" or address.startswith("local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ClusterError(f"{label}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, port


def check_address(
    address: str, timeout_s: float = ADDRESS_TIMEOUT_S, label: str | None = None
) -> None:
    """Fail fast (ClusterError) when HOST:PORT is unreachable or answers like an HTTP server.

    Quick checks only (no Ray); `connect` adds the bounded trial join."""
    label = label or f"--address {address}"
    target = _host_port(address, label)
    if target is None:
        return
    host, port = target
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise ClusterError(
            f"{label}: cannot reach {host}:{port} within {timeout_s:g}s "
            f"({e.strerror or e}): is the head node up (ray start --head) and the port right?"
        ) from None
    with sock:
        if _speaks_http(sock):
            raise ClusterError(
                f"{label}: an HTTP server answers at {host}:{port}, not a Ray cluster: give the "
                "head's GCS address (HEAD_IP:6379, printed by `ray start --head`) or auto on a "
                "cluster node (the dashboard's http://HEAD_IP:8265 is for `ray job submit`)"
            )


def _speaks_http(sock: socket.socket) -> bool:
    """Send one HTTP/1.0 request: an HTTP server answers `HTTP/`, Ray's gRPC ports answer with an
    HTTP/2 frame or nothing."""
    try:
        sock.settimeout(SNIFF_TIMEOUT_S)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: ray\r\n\r\n")
        return sock.recv(5).startswith(b"HTTP/")
    except OSError:
        return False


def _probe(address: str, label: str, log_file: Path, deadline: float) -> dict:
    """Join `address` in a child process (killed at `deadline`, on a refusal in its log, or when
    this process is interrupted); return its report or raise ClusterError naming the cause."""
    start = log_file.stat().st_size if log_file.is_file() else 0
    with open(log_file, "ab") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", PROBE, address],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: killed as a whole, no terminal signals
        )
    try:
        while child.poll() is None and time.monotonic() < deadline:
            text = _read_from(log_file, start)
            if any(m in text for m in (*_TOKEN_MARKS, _VERSION_MARK)):
                break
            time.sleep(0.1)
        timed_out = child.poll() is None
        if not timed_out:
            out = child.stdout.read().decode(errors="replace").strip().splitlines()
            report = json.loads(out[-1]) if out else {"ok": False, "error": "no report"}
            if report.get("ok"):
                return report
        else:
            report = {"ok": False, "error": ""}
    finally:
        _kill_group(child)
    raise ClusterError(_explain(label, address, report["error"], _read_from(log_file, start),
                                timed_out, log_file))


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20).decode(errors="replace")
    except OSError:
        return ""


def _kill_group(child: subprocess.Popen) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _explain(
    label: str, address: str, error: str, log_text: str, timed_out: bool, log_file: Path
) -> str:
    """One line: what refused the join, and what to do about it."""
    seen = f"{error}\n{log_text}"
    where = f"; Ray log: {log_file}"
    if any(m in seen for m in _TOKEN_MARKS):
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return (
                f"{label}: the cluster requires token authentication and this process sent no "
                "token: export RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, "
                f"$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH){where}"
            )
        return (
            f"{label}: the cluster refused this process's token: give it the cluster's token "
            "(copy the head's ~/.ray/auth_token, or set $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH)"
            f"{where}"
        )
    if _VERSION_MARK in seen:
        return f"{label}: {_version_text(seen)}{where}"
    if "Could not find any running Ray instance" in seen:
        return (
            f"{label}: no running Ray cluster found from this machine: start one with "
            f"`ray start --head`, or give --address HEAD_IP:6379{where}"
        )
    if timed_out:
        return (
            f"{label}: no Ray cluster answered at {address} within {JOIN_TIMEOUT_S:g}s "
            "(something else listens there, or the cluster is unreachable from this machine): "
            f"give the address printed by `ray start --head` (HEAD_IP:6379){where}"
        )
    return f"{label}: could not join Ray: {error[:300] or 'no report from the trial join'}{where}"


def _version_text(text: str) -> str:
    """'the cluster runs Ray A (Python X), this process Ray B (Python Y): ...' when parseable."""
    rays = re.findall(r"Ray: ([0-9][^\s,]*)", text)
    pys = re.findall(r"Python: ([0-9][^\s,]*)", text)
    if len(rays) >= 2 and len(pys) >= 2:
        return (
            f"version mismatch: the cluster runs Ray {rays[0]} (Python {pys[0]}), this process "
            f"Ray {rays[1]} (Python {pys[1]}): install the cluster's versions here "
            f"(pip install 'ray[default]=={rays[0]}' with Python {pys[0]})"
        )
    return (
        "Ray or Python version mismatch between this process and the cluster: install the "
        "cluster's Ray and Python versions here"
    )


@contextlib.contextmanager
def held_signals(*, raise_after: bool = True) -> Iterator[list[int]]:
    """Hold SIGINT, SIGTERM and SIGHUP while Ray starts or stops: an exception raised inside
    Ray's start-up or shutdown leaves helper processes behind or prints Ray's traceback, and
    `ray.init` would install its own SIGTERM handler (a bare exit 15). A held signal is raised as
    KeyboardInterrupt afterwards (`raise_after`), so the caller ends the run like on Ctrl-C."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    saved = {s: signal.getsignal(s) for s in _HELD_SIGNALS}
    for s in _HELD_SIGNALS:
        signal.signal(s, lambda signum, frame: got.append(signum))
    utils = _ray_utils()
    install = getattr(utils, "set_sigterm_handler", None)
    if install is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield got
    finally:
        if install is not None:
            utils.set_sigterm_handler = install
        for s, handler in saved.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    if got and raise_after:
        first = saved.get(got[0])
        if callable(first):  # the caller's handler (it counts interrupts), raising in turn
            first(got[0], None)
        raise KeyboardInterrupt


def _ray_utils() -> Any:
    try:
        from ray._private import utils
    except ImportError:  # pragma: no cover - private module moved
        return None
    return utils


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 (and sys.stderr) to `path` while Ray starts or stops, so its chatter lands in
    the log."""
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


@dataclass
class RayConnection:
    """A connection made by `connect`; `close()` shuts down only what it started."""

    started: bool
    log_file: Path | None
    handler: logging.Handler | None = None
    restore: Any = None  # undoes the redirect of Ray's error printer
    watchdog: Watchdog | None = None  # ends a local Ray's processes if this process dies

    def close(self) -> None:
        """Shut Ray down (if this process started or joined it); signals that arrive meanwhile
        are held and dropped: the caller is already on its way out."""
        if self.started:
            ray = import_ray()
            with held_signals(raise_after=False), contextlib.ExitStack() as stack:
                if self.log_file is not None:
                    stack.enter_context(_stderr_to(self.log_file))
                try:
                    ray.shutdown()
                except Exception as e:  # noqa: BLE001 - nothing left to save; say where
                    log.debug("ray.shutdown: %s", e)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.restore is not None:
            self.restore()
        if self.handler is not None:
            logging.getLogger("ray").removeHandler(self.handler)
            self.handler.close()


def _log_ray_logger(log_file: Path) -> logging.Handler:
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    ray_logger.propagate = False
    return handler


def _redirect_error_printer(log_file: Path) -> Any:
    """Ray's driver prints cluster error messages (e.g. ~30 lines per task lost with a dead
    node) straight to sys.stderr from a background thread; send them to the log instead."""
    try:
        from ray._private import worker
    except ImportError:  # pragma: no cover - private module moved
        return None
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        return None

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        with open(log_file, "a") as f:
            f.writelines(f"{line}\n" for line in data.get("lines", []))

    worker.print_to_stdstream = to_log
    return lambda: setattr(worker, "print_to_stdstream", original)


def connect(address: str | None, log_file: Path | None) -> RayConnection:
    """Join `address` (auto, HOST:PORT, ray://HOST:PORT; else $RAY_ADDRESS when set) after the
    bounded check, or start a new local Ray without a dashboard; Ray's own log lines go to
    `log_file`. Reuses an already initialized Ray (and then leaves it running).

    Raises ClusterError (one line, exit 2) when the address is refused, KeyboardInterrupt when
    interrupted (nothing of Ray left running)."""
    ray = import_ray()
    if ray.is_initialized():
        return RayConnection(started=False, log_file=None)
    address, label = resolve_address(address)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.touch()
    if address is not None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        check_address(address, min(ADDRESS_TIMEOUT_S, JOIN_TIMEOUT_S), label)
        probe_log = log_file or Path(os.devnull)
        report = _probe(address, label, probe_log, deadline)
        log.debug("trial join of %s: %s", address, report)
    handler = _log_ray_logger(log_file) if log_file is not None else None
    watch = start_watchdog() if address is None else None  # a local Ray: ours to clean up
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    got: list[int] = []
    try:
        redirect = _stderr_to(log_file) if log_file is not None else contextlib.nullcontext()
        with held_signals() as got, redirect:
            try:
                if address is not None:
                    ray.init(address=address, **kwargs)
                else:  # "local": a new instance, never a stale cluster found in /tmp/ray
                    ray.init(address="local", include_dashboard=False, **kwargs)
            finally:
                if got and ray.is_initialized():
                    ray.shutdown()  # interrupted while starting: leave nothing running
    except KeyboardInterrupt:
        _drop_handler(handler, watch)
        raise
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
        _drop_handler(handler, watch)
        if got:  # interrupted, and Ray failed on the way: the interrupt is what counts
            raise KeyboardInterrupt from None
        where = f"; Ray log: {log_file}" if log_file is not None else ""
        raise ClusterError(
            f"{label}: could not start or join Ray: {' '.join(str(e).split())[:300]}{where}"
        ) from None
    restore = _redirect_error_printer(log_file) if log_file is not None else None
    return RayConnection(
        started=True, log_file=log_file, handler=handler, restore=restore, watchdog=watch
    )


def _drop_handler(handler: logging.Handler | None, watch: Watchdog | None = None) -> None:
    if watch is not None:
        watch.stop()
    if handler is not None:
        logging.getLogger("ray").removeHandler(handler)
        handler.close()
