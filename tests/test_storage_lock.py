"""The job lock: flock on a local disk (emptied on release, never naming a dead pid), and the
heartbeat lock object on a real S3-protocol server (refusal, release, stale takeover, a dead
holder on this host, a race of two submits)."""

from __future__ import annotations

import fcntl
import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.errors import ResultsLockedError, StorageError
from orchestrator.run.lock import FlockLock, ObjectLock, acquire_job_lock
from orchestrator.run.storage import resolve


def test_local_lock_is_emptied_on_release(tmp_path):
    job = resolve(tmp_path / "sweep")
    lock = acquire_job_lock(job)
    text = (tmp_path / "sweep" / "_lock").read_text()
    assert text.startswith("pid ") and " on " in text
    with pytest.raises(ResultsLockedError, match=r"in use by another submit \(pid \d+ on "):
        acquire_job_lock(job)
    lock.release()
    assert (tmp_path / "sweep" / "_lock").read_text() == ""  # no dead pid left behind
    acquire_job_lock(job).release()


def test_a_dead_pid_in_the_lock_file_is_never_reported(tmp_path):
    """The file still names a dead pid (a SIGKILLed submit) while a new holder has the flock
    but has not written its line yet: the refusal does not name the dead pid."""
    job_dir = tmp_path / "sweep"
    job_dir.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (job_dir / "_lock").write_text(f"pid {dead_pid} on {socket.gethostname()} since then\n")
    with open(job_dir / "_lock", "a+") as held:  # flock'd, content untouched
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ResultsLockedError) as err:
            FlockLock(resolve(job_dir)).acquire()
    assert str(dead_pid) not in str(err.value)
    assert "a process that has not said who it is yet" in str(err.value)


def test_lock_path_that_is_a_directory_is_a_storage_error(tmp_path):
    (tmp_path / "sweep" / "_lock").mkdir(parents=True)
    with pytest.raises(StorageError) as err:
        acquire_job_lock(resolve(tmp_path / "sweep"))
    assert str(err.value) == f"{tmp_path}/sweep/_lock: is a directory where a file is expected"
    assert err.value.exit_code == 3


# -- object stores ------------------------------------------------------------------------
def _lock(s3_server, bucket, **kw) -> ObjectLock:
    kw.setdefault("settle_s", 0.2)
    return ObjectLock(resolve(s3_server.uri(bucket, "results/sweep")), **kw)


def test_object_lock_refuses_a_second_holder_and_frees_on_release(s3_server, s3_bucket):
    first = _lock(s3_server, s3_bucket)
    first.acquire()
    try:
        held = json.loads(
            s3_server.filesystem().open_input_stream(f"{s3_bucket}/results/sweep/_lock").read()
        )
        assert held["token"] == first.token and held["pid"] > 0
        second = _lock(s3_server, s3_bucket)
        second._is_free = lambda held: held is None  # as if the holder ran on another host
        with pytest.raises(ResultsLockedError) as err:
            second.acquire()
    finally:
        first.release()
    message = str(err.value)
    assert f"s3://{s3_bucket}/results/sweep is in use by another submit (pid " in message
    assert re.search(r"last heartbeat \d+s ago, taken over after 60s without one\)", message)
    assert s3_server.keys(s3_bucket, "results/sweep") == []
    second.acquire()
    second.release()


def test_object_lock_of_a_dead_local_pid_is_taken_over(s3_server, s3_bucket):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = _lock(s3_server, s3_bucket)
    gone.job.put(
        "_lock",
        json.dumps(
            {
                "token": "x",
                "pid": int(dead.stdout),
                "host": socket.gethostname(),
                "since": "then",
                "heartbeat_at": 9e12,
            }
        ).encode(),
    )
    lock = _lock(s3_server, s3_bucket)
    lock.acquire()  # heartbeat "in the future", but the pid is gone on this host
    lock.release()


def test_object_lock_stale_heartbeat_is_taken_over(s3_server, s3_bucket):
    other_host = _lock(s3_server, s3_bucket)
    other_host.job.put(
        "_lock",
        json.dumps(
            {"token": "x", "pid": 1, "host": "elsewhere", "since": "then", "heartbeat_at": 0}
        ).encode(),
    )
    fresh = _lock(s3_server, s3_bucket)
    fresh.acquire()  # heartbeat 0 is older than 60s
    fresh.release()
    other_host.job.put(
        "_lock",
        json.dumps(
            {
                "token": "x",
                "pid": 1,
                "host": "elsewhere",
                "since": "then",
                "heartbeat_at": time.time(),
            }
        ).encode(),
    )
    with pytest.raises(ResultsLockedError, match=r"pid 1 on elsewhere since then"):
        _lock(s3_server, s3_bucket).acquire()


def _heartbeat_at(lock: ObjectLock) -> float:
    return lock._read()["heartbeat_at"]  # re-reads an object caught mid-replacement


def test_object_lock_heartbeat_keeps_it_fresh_and_notices_a_takeover(s3_server, s3_bucket):
    lock = _lock(s3_server, s3_bucket, heartbeat_s=1.0)
    lock.acquire()
    try:
        first = _heartbeat_at(lock)
        deadline = time.monotonic() + 10
        while _heartbeat_at(lock) == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _heartbeat_at(lock) > first  # rewritten; the next beat is a second away
        thief = {"token": "thief", "pid": 1, "host": "elsewhere", "since": "now",
                 "heartbeat_at": 0}
        lock.job.put("_lock", json.dumps(thief).encode())
        deadline = time.monotonic() + 10
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.lost
    finally:
        lock.release()  # not ours any more: left alone
    assert json.loads(lock.job.read_bytes("_lock"))["token"] == "thief"


def test_two_racing_object_locks_one_wins(s3_server, s3_bucket):
    """Both read "free" before either writes: the read-back after the settle time lets one
    through (the last writer) and refuses the other."""
    a, b = _lock(s3_server, s3_bucket, settle_s=1.0), _lock(s3_server, s3_bucket, settle_s=1.0)
    both_read = threading.Barrier(2, timeout=30)
    for lock in (a, b):  # as if they ran on two hosts
        lock._is_free = lambda held, me=lock: held is None or held.get("token") == me.token
        first_write = lock._write

        def write(lock=lock, first_write=first_write):
            both_read.wait()  # each has read the lock as free: now both write
            lock._write = first_write  # heartbeats write at once
            first_write()

        lock._write = write
    results: dict[str, object] = {}

    def take(name, lock):
        try:
            lock.acquire()
            results[name] = "held"
        except ResultsLockedError as e:
            results[name] = str(e)

    threads = [threading.Thread(target=take, args=(n, lk)) for n, lk in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
        assert sorted(v == "held" for v in results.values()) == [False, True], results
        (loser,) = [v for v in results.values() if v != "held"]
        assert "is in use by another submit (pid " in loser
    finally:
        for lock in (a, b):
            lock.release()


@pytest.fixture(autouse=True)
def _no_heartbeat_left():
    """Every ObjectLock a test takes is released: no heartbeat thread outlives the test."""
    yield
    alive = [t for t in threading.enumerate() if t.name == "job-lock-heartbeat"]
    assert not alive, "a heartbeat thread outlived its test"
