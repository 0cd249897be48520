"""Every interrupt, at every moment, ends the same way: exit 130, the command that resumes,
finished rows kept, no traceback from Ray's shutdown, and none of the driver's Ray processes
left running. Real signals to the real CLI in a subprocess (its own session), a local Ray:
SIGTERM while Ray starts, SIGHUP (a closed terminal) mid-run, Ctrl-C twice and three times,
SIGKILL (its Ray helpers end with it); then the resume completes with one ok row per cell."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

JOB = """\
name: sig
model: {tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 96,
        head_dim: 32}
grid: {method: [naive, cached], batch_size: [1, 2, 3, 4, 5, 6], prompt_len: [8], max_tokens: [64]}
measure: {warmup: 1, repeats: 1}
"""
CELLS = 12


class Driver:
    """`python -m orchestrator submit` in its own session; stderr collected by a thread."""

    def __init__(self, argv: list[str]):
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"the driver ended before {what}: {self.err}"
            assert time.monotonic() < deadline, f"no {what} within {timeout}s: {self.err}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.reader.join(timeout=10)
        return code

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def group_alive(self, timeout: float = 20) -> list[int]:
        """Processes of the driver's session still running after up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            alive = _in_group(self.proc.pid)
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


def _in_group(pgid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


@pytest.fixture()
def job(tmp_path):
    spec = tmp_path / "sig.yaml"
    spec.write_text(JOB)
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results",
            str(tmp_path / "results"), "--progress", "lines"]
    return argv, tmp_path / "results" / "sig"


def parts(job_dir: Path) -> list[Path]:
    return sorted(job_dir.glob("part-*.parquet"))


def ok_rows(job_dir: Path) -> list[dict]:
    for part in parts(job_dir):
        pq.read_table(part)  # every committed file is whole
    rows = ds.dataset(job_dir, format="parquet").to_table().to_pylist() if parts(job_dir) else []
    ids = [r["cell_id"] for r in rows if r["status"] == "ok"]
    assert len(ids) == len(set(ids))  # never two ok rows for a cell
    return rows


def resume_line(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "orchestrator", *argv[3:]])


def assert_interrupted(driver: Driver, argv: list[str]) -> None:
    code = driver.finish()
    assert code == 130, driver.err[-3000:]
    assert "Traceback" not in driver.err and "Exception ignored" not in driver.err
    assert driver.err.rstrip().endswith(f"resume with: {resume_line(argv)}"), driver.err[-2000:]
    assert driver.group_alive() == [], "Ray processes outlived the driver"


def test_every_interrupt_ends_with_130_the_resume_command_and_rows_kept(job):
    argv, job_dir = job

    # SIGTERM while Ray is starting: the job line is the last one before Ray starts.
    driver = Driver(argv)
    driver.wait_for(lambda: any(" to run; results in " in line for line in driver.lines),
                    "the job line")
    time.sleep(0.3)
    os.kill(driver.proc.pid, signal.SIGTERM)
    assert_interrupted(driver, argv)
    assert "Ray logs:" not in driver.err  # it landed while Ray was starting
    assert "nothing was lost" in driver.err
    assert not job_dir.exists()  # nothing had run: nothing left

    # SIGHUP (the terminal closed) mid-run, then Ctrl-C twice: finished rows kept each time.
    seen = 0
    for signals in ([signal.SIGHUP], [signal.SIGINT, signal.SIGINT]):
        driver = Driver(argv)
        driver.wait_for(lambda: len(parts(job_dir)) > seen, "a finished cell")  # noqa: B023
        for signum in signals:
            os.kill(driver.proc.pid, signum)
            time.sleep(0.2)
        assert_interrupted(driver, argv)
        assert "cell(s) finished in this run are saved" in driver.err
        rows = ok_rows(job_dir)
        assert seen < len(rows) < CELLS
        seen = len(rows)

    # Ctrl-C three times: the third quits at once, Ray's processes with it.
    driver = Driver(argv)
    driver.wait_for(lambda: any(line.startswith("[") for line in driver.lines), "a cell")
    for _ in range(3):
        os.kill(driver.proc.pid, signal.SIGINT)
        time.sleep(0.1)
    assert_interrupted(driver, argv)
    seen = len(ok_rows(job_dir))

    # SIGKILL: no cleanup in the driver, yet its Ray helpers do not outlive it.
    driver = Driver(argv)
    driver.wait_for(lambda: "Ray logs:" in driver.err, "Ray's start")
    os.kill(driver.proc.pid, signal.SIGKILL)
    driver.finish()
    assert driver.group_alive() == [], "Ray processes outlived a SIGKILLed driver"

    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ok_rows(job_dir)
    assert len({r["cell_id"] for r in rows if r["status"] == "ok"}) == CELLS
