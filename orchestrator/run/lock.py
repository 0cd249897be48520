"""The job lock: one submit of a job at a time, on a local disk or an object store.

    lock = acquire_job_lock(resolve("results") / "sweep")   # ResultsLockedError names the holder
    ...
    lock.release()

Local (and any POSIX filesystem with working `flock`, NFSv4 included): an exclusive `flock` on
`<job>/_lock`, held from before Ray starts until the submit ends. The kernel drops it when the
process dies, however it dies, so a killed driver never leaves the job locked. The file names
the holder while it is held and is emptied on a clean release (an empty `_lock` is a free lock;
removing the file instead would race with a submit that just opened it).

Object stores (s3://, gs://, ...) have no lock primitive that pyarrow exposes, so `_lock` is
an object holding the holder's host, pid, a random token and a heartbeat time, rewritten every
HEARTBEAT_S seconds. Taking it: read it; refuse if another holder's heartbeat is fresher than
STALE_S (or its pid is alive on this host); write ours; wait SETTLE_S; read it back and keep it
only if our token is still there. This keeps apart two submits unless one of them stalls for
more than SETTLE_S between its read and its write (both would then see their own token), and
a holder whose heartbeats stop for STALE_S (a paused VM, a network partition) can be taken
over while it still runs; a holder that sees another token in its heartbeat logs an error.
What it costs if it fails: both submits run the same cells and write separate attempt files
(duplicate rows, never a damaged file; `summarize` and `query --latest` pick one per cell).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime

from orchestrator.errors import ResultsLockedError
from orchestrator.run.storage import Location, storage_errors

log = logging.getLogger(__name__)

LOCK_NAME = "_lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this host."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def holder_alive(host: str | None, pid: int | None) -> bool | None:
    """True/False for a process on this host; None when it runs elsewhere (unknowable)."""
    if host != this_host():
        return None
    return pid_alive(pid)


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _beat_time(held: dict) -> float:
    """The holder's last heartbeat (epoch seconds; 0 when unreadable: a stale lock)."""
    try:
        return float(held.get("heartbeat_at") or 0)
    except (TypeError, ValueError):
        return 0.0


def _refused(job: Location, holder: str) -> ResultsLockedError:
    return ResultsLockedError(
        f"{job.uri} is in use by another submit ({holder}); "
        f"wait for it to finish or use another --results"
    )


class FlockLock:
    """`flock` on `<job>/_lock` (local filesystems)."""

    def __init__(self, job: Location):
        self.job = job
        self.path = f"{job.path}/{LOCK_NAME}"
        self._file = None

    def acquire(self) -> None:
        self.job.makedirs()
        with storage_errors(self.path):
            f = open(self.path, "a+")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(f)
            f.close()
            raise _refused(self.job, holder) from None
        try:
            with storage_errors(self.path):
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {this_host()} since {_stamp()}\n")
                f.flush()
        except BaseException:
            f.close()  # releases the flock
            raise
        self._file = f

    def _holder(self, f) -> str:
        """The holder's line, re-read briefly while it still names a process that is gone (a
        submit that has just taken the lock has not written its own line yet)."""
        line = ""
        for _ in range(20):
            f.seek(0)
            line = f.read().strip()
            words = line.split()
            named = len(words) >= 4 and words[0] == "pid" and words[1].isdigit()
            if named and holder_alive(words[3], int(words[1])) is not False:
                return line
            time.sleep(0.05)
        return "a process that has not said who it is yet"

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):  # a full disk cannot stop a truncate to 0
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None


class ObjectLock:
    """A lock object with holder, token and heartbeat (object stores; see the module doc)."""

    def __init__(
        self,
        job: Location,
        *,
        stale_s: float = STALE_S,
        heartbeat_s: float = HEARTBEAT_S,
        settle_s: float = SETTLE_S,
    ):
        self.job = job
        self.stale_s, self.heartbeat_s, self.settle_s = stale_s, heartbeat_s, settle_s
        self.token = uuid.uuid4().hex
        self.since = _stamp()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        for _ in range(5):
            try:
                data = json.loads(self.job.read_bytes(LOCK_NAME))
            except FileNotFoundError:
                return None
            except ValueError:  # read while being replaced (some S3 servers serve torn
                time.sleep(0.1)  # objects then), or not ours: read again
                continue
            return data if isinstance(data, dict) else None
        return None  # still not JSON: an empty or foreign object is a free lock

    def _write(self) -> None:
        body = {
            "token": self.token,
            "pid": os.getpid(),
            "host": this_host(),
            "since": self.since,
            "heartbeat_at": time.time(),
            "stale_after_s": self.stale_s,
        }
        self.job.put(LOCK_NAME, json.dumps(body).encode())

    def _describe(self, held: dict) -> str:
        if not held.get("pid"):
            return "another submit that took the lock at the same moment"
        age = time.time() - _beat_time(held)
        return (
            f"pid {held.get('pid')} on {held.get('host')} since {held.get('since')}; "
            f"last heartbeat {age:.0f}s ago, taken over after {self.stale_s:.0f}s without one"
        )

    def _is_free(self, held: dict | None) -> bool:
        if held is None or held.get("token") == self.token:
            return True
        alive = holder_alive(held.get("host"), held.get("pid"))
        if alive is not None:  # on this host the pid says it exactly
            return not alive
        return time.time() - _beat_time(held) > self.stale_s

    def acquire(self) -> None:
        held = self._read()
        if not self._is_free(held):
            raise _refused(self.job, self._describe(held))
        if held is not None:
            log.warning(
                "%s: taking over the lock of a submit that is gone (%s)",
                self.job.uri,
                self._describe(held),
            )
        self._write()
        time.sleep(self.settle_s)
        held = self._read()
        if held is None or held.get("token") != self.token:
            raise _refused(self.job, self._describe(held or {}))
        self._thread = threading.Thread(target=self._beat, name="job-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._read()
                if held is None or held.get("token") != self.token:
                    self.lost = True
                    log.error(
                        "%s: the job lock was taken over (%s); another submit may run "
                        "the same cells",
                        self.job.uri,
                        self._describe(held or {}),
                    )
                    return
                self._write()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried
                log.warning("%s: job lock heartbeat failed: %s", self.job.uri, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            held = self._read()
            if held is not None and held.get("token") == self.token:
                self.job.delete_file(LOCK_NAME, missing_ok=True)
        except Exception as e:  # noqa: BLE001 - it goes stale on its own
            log.warning(
                "%s: could not remove the job lock (it expires after %.0fs): %s",
                self.job.uri,
                self.stale_s,
                e,
            )


def acquire_job_lock(job: Location) -> FlockLock | ObjectLock:
    """Take the job's lock (flock locally, a heartbeat object on object stores) or raise
    ResultsLockedError naming the holder; StorageError when `_lock` cannot be made."""
    lock = FlockLock(job) if job.is_local else ObjectLock(job)
    lock.acquire()
    return lock
