"""Joining that always answers: an address where something other than Ray listens, given as
`--address` or `RAY_ADDRESS`, ends with exit 2, one line naming the cause and what to do, and no
results directory; SIGTERM and SIGINT during a hanging join end it at once (exit 130, the
command to run again); a relative `--results` inside `ray job submit` is refused. Real servers
on 127.0.0.1 (http.server, a TCP port that never answers), the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

JOB = """\
name: join
model: {tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 64,
        head_dim: 32}
grid: {method: [cached], batch_size: [1], prompt_len: [8], max_tokens: [4]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server():
    """`python -m http.server` on a free 127.0.0.1 port; yields the port, stopped by pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def silent_port():
    """A port that accepts connections and never says a word (what a hung service looks like
    to Ray's client); a thread of the test process, closed at the end."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def submit(tmp_path: Path, *extra: str, env: dict | None = None) -> tuple[list, dict]:
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results",
            str(tmp_path / "results"), *extra]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return argv, {**base, "PYTHONPATH": str(ROOT), **(env or {})}


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_an_http_server_is_not_a_cluster(tmp_path, http_server, how):
    address = f"127.0.0.1:{http_server}"
    extra, env = (["--address", address], None) if how == "--address" else ([], {
        "RAY_ADDRESS": address})
    argv, env = submit(tmp_path, *extra, env=env)
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error(proc.stderr)
    label = f"--address {address}" if how == "--address" else f"RAY_ADDRESS={address}"
    assert line.startswith(f"error: {label}: an HTTP server answers at {address}, not a Ray")
    assert "HEAD_IP:6379" in line  # what to give instead
    assert not (tmp_path / "results").exists()


def test_a_port_where_no_ray_answers_is_refused_within_the_bound(tmp_path, silent_port):
    argv, env = submit(tmp_path, "--address", f"127.0.0.1:{silent_port}")
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error(proc.stderr)
    assert f"no Ray cluster answered at 127.0.0.1:{silent_port} within 20s" in line
    log = Path(line.rsplit("Ray log: ", 1)[1])
    assert log.is_file() and "unet-bench-ray" in str(log)  # the real log, outside the results
    assert not (tmp_path / "results").exists()


def _probe_running(port: int) -> bool:
    """A trial-join child process for `port` is running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"127.0.0.1:{port}".encode() in cmdline and b"-c" in cmdline[:3]:
            return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_hanging_join_ends_it_at_once(tmp_path, silent_port, signum):
    argv, env = submit(tmp_path, "--address", f"127.0.0.1:{silent_port}")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _probe_running(silent_port):  # the join is under way (and hangs)
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=10)  # far less than the 20 s the join could take
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    resume = err.strip().splitlines()[-1]
    assert resume == "interrupted; nothing was lost; resume with: " + shlex.join(
        ["python", "-m", "orchestrator", *argv[3:]])
    assert not _probe_running(silent_port)  # the trial join went with it
    assert not (tmp_path / "results").exists()


def test_relative_results_inside_ray_job_submit_are_refused(tmp_path):
    job_config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}
    spec = tmp_path / "job.yaml"
    spec.write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec),
                           "--results", "results"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error(proc.stderr)
    assert "--results results: relative to Ray's temporary copy of the working dir" in line
    assert "s3://bucket/prefix" in line
    assert not (tmp_path / "results").exists()
