"""A real multi-node Ray cluster on this machine: a head and a worker started with the README's
own `ray start` commands (HEAD_IP = 127.0.0.1, free ports, their own temp dirs, a token of the
test's own, stopped by pid), then the README's `ray job submit` as written: results at an
absolute path (and in a bucket on a local S3 server), read from outside the job, the code
version recorded without `.git`, resume after an edited upload, cells on both nodes, joins
refused for token and version reasons, and a node killed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.dataset as ds
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RAY = Path(sys.executable).parent / "ray"
pytestmark = pytest.mark.slow

# The job the README's `jobs/cluster.yaml` stands for here: tiny, CPU only, two workers.
TINY = """\
name: cluster
model: {tag: "d[2,2]-h[64,128]", checkpoint: random, vocab_size: 256, sequence_len: 64,
        head_dim: 32}
grid: {method: [naive, cached], batch_size: [1, 2, 3, 4], prompt_len: [8, 16], max_tokens: [64]}
measure: {warmup: 1, repeats: 2}
workers: {cpu_workers: 2}
"""  # 16 cells: enough work that the second worker (on the other node) comes up in time


def readme_commands() -> list[str]:
    """The shell commands of the README's cluster block, continuation lines joined."""
    text = README.read_text()
    block = text.split("### A multi-node cluster, step by step", 1)[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def command(prefix: str) -> str:
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert len(found) == 1, f"README cluster block: one command starting with {prefix!r}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """`ray start` processes (each in its own session, stopped by pid) and their settings."""

    root: Path
    env: dict
    gcs_port: int
    dashboard_port: int
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self, name: str, line: str) -> None:
        temp = self.root / name
        args = [*shlex.split(line), f"--temp-dir={temp}", "--num-cpus=1", "--block",
                "--object-store-memory=200000000",  # not 30% of RAM per node
                f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
        if "--head" in args:
            args.append(f"--ray-client-server-port={free_port()}")
        args[0] = str(RAY)
        with open(self.root / f"{name}.out", "wb") as out:
            self.nodes[name] = subprocess.Popen(args, env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for_nodes(self, count: int) -> None:
        """Until `count` nodes are alive (a trial driver polls the GCS)."""
        code = ("import ray, sys, time\n"
                "ray.init(address=sys.argv[1], log_to_driver=False)\n"
                "while len([n for n in ray.nodes() if n['Alive']]) < int(sys.argv[2]):\n"
                "    time.sleep(0.5)\n")
        deadline = time.monotonic() + 300  # a loaded 2-core machine starts nodes slowly
        while True:
            try:
                probe = subprocess.run([sys.executable, "-c", code, self.address, str(count)],
                                       env=self.env, capture_output=True, text=True,
                                       timeout=120, check=False)
                if probe.returncode == 0:
                    return
                why = probe.stderr[-1500:]
            except subprocess.TimeoutExpired:
                why = "a trial driver hung for 120 s"
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-1500:] for p in self.root.glob("*.out")}
                raise AssertionError(f"{count} nodes not up: {why}\n{logs}")
            time.sleep(1)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> the name of its node here (head, w1, ...), from its socket paths."""
        code = ("import json, ray, sys\n"
                "ray.init(address=sys.argv[1], log_to_driver=False)\n"
                "print(json.dumps({n['NodeID']: n['ObjectStoreSocketName'] for n in ray.nodes()"
                " if n['Alive']}))")
        out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env,
                             capture_output=True, text=True, timeout=120, check=True).stdout
        sockets = json.loads(out.strip().splitlines()[-1])
        return {nid: Path(path).relative_to(self.root).parts[0] for nid, path in sockets.items()}

    def kill(self, name: str) -> None:
        """SIGKILL a node's processes, its workers included (they may sit in process groups of
        their own): the node dies at once, as a machine would."""
        root = self.nodes[name].pid
        for pid in [root, *_descendants(root)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(root, signal.SIGKILL)
        self.nodes[name].wait()

    def stop(self) -> None:
        for proc in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its processes
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever outlived it
            proc.wait()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, started with the README's commands."""
    if not RAY.exists():
        pytest.skip("the `ray` command is missing")
    try:
        import aiohttp  # noqa: F401 - part of ray[default]: the jobs CLI and dashboard
    except ImportError:
        pytest.skip("needs the cluster extra: pip install -e '.[cluster]'")
    pytest.importorskip("engine.bench")
    root = Path(tempfile.mkdtemp(prefix="ucl-", dir="/tmp"))  # short: Ray's socket paths
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "UNET_BENCH_"))}
    exports = [c.split(None, 1)[1] for c in readme_commands() if c.startswith("export ")]
    env.update(dict(e.split("=", 1) for e in exports))  # RAY_AUTH_MODE=token
    env.update(RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM stops a node at once
               PATH=f"{RAY.parent}{os.pathsep}{env.get('PATH', '')}")
    env.pop("PYTHONPATH", None)  # the job imports the project from its uploaded working dir
    c = Cluster(root, env, free_port(), free_port())
    try:
        head = command("ray start --head").replace("--port=6379", f"--port={c.gcs_port}")
        c.start("head", head.replace("--dashboard-port=8265", f"--dashboard-port={c.dashboard_port}"))
        c.start("w1", command("ray start --address=").replace("HEAD_IP:6379", c.address))
        c.wait_for_nodes(2)
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def working_dir(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the project's tracked files as its own git repository (the README's commands
    run from it), with jobs/cluster.yaml replaced by the tiny job; returns (dir, commit)."""
    wd = tmp_path / "wd"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (wd / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, wd / name)
    (wd / "jobs" / "cluster.yaml").write_text(TINY)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=wd, check=True)
    subprocess.run([*git, "add", "-A"], cwd=wd, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=wd, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wd, capture_output=True, text=True,
                            check=True).stdout.strip()
    return wd, commit


def job_submit(cluster: Cluster, wd: Path, results: str, extra_env: dict | None = None,
               extra_args: str = ""):
    line = command("ray job submit").replace("HEAD_IP:8265", f"127.0.0.1:{cluster.dashboard_port}")
    line = line.replace("/data/unet-bench", shlex.quote(results)) + extra_args
    if extra_env:  # more variables for the job, in the same --runtime-env-json
        runtime = {"env_vars": {"UNET_BENCH_GIT_COMMIT": "$COMMIT", **extra_env}}
        start = line.index("--runtime-env-json ")
        end = line.index('}}"', start) + 3
        line = f"{line[:start]}--runtime-env-json {shlex.quote(json.dumps(runtime))}{line[end:]}"
        line = line.replace("$COMMIT", subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=wd, capture_output=True, text=True,
            check=True).stdout.strip())
    return subprocess.run(["bash", "-c", line], cwd=wd, env=cluster.env, capture_output=True,
                          text=True, timeout=600, check=False)


def summarize(cluster: Cluster, results: str):
    line = command("python -m orchestrator summarize").replace("/data/unet-bench", results)
    return subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=ROOT,
                          env={**cluster.env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_readme_ray_job_submit_end_to_end_and_resume_after_an_edit(cluster, tmp_path):
    wd, commit = working_dir(tmp_path)
    results = tmp_path / "results"
    done = job_submit(cluster, wd, str(results))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "16 cells: 16 run, 0 skipped (already ok), 0 failed" in out, out[-3000:]
    assert f"results in {results / 'cluster'}" in out  # absolute, where the user finds it
    assert "Traceback" not in out
    rows = ds.dataset(results / "cluster", format="parquet").to_table().to_pylist()
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    assert len({r["ray_node_id"] for r in rows}) == 2, out[-3000:]  # the cells ran on both nodes
    assert {r["git_commit"] for r in rows} == {commit}  # though .git is not uploaded
    manifests = [json.loads(p.read_text()) for p in (results / "cluster" / "_manifests").glob("*")]
    assert [m["git_commit"] for m in manifests] == [commit]

    table = summarize(cluster, str(results))  # from outside the job
    assert table.returncode == 0, table.stderr[-2000:]
    assert "cluster" in table.stdout and "speedup" in table.stdout

    (wd / "README.md").write_text((wd / "README.md").read_text() + "\nedited\n")  # a new upload
    again = job_submit(cluster, wd, str(results))
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "16 cells: 0 run, 16 skipped (already ok), 0 failed" in out, out[-3000:]


def test_ray_job_submit_with_results_in_a_bucket(cluster, tmp_path, s3_server, s3_bucket):
    wd, _ = working_dir(tmp_path)
    uri = s3_server.uri(s3_bucket, "results")
    credentials = {k: v for k, v in s3_server.env().items() if k.startswith("AWS_")}
    done = job_submit(cluster, wd, uri, extra_env=credentials,
                      extra_args=" --set 'grid.prompt_len=[8]' --set 'grid.batch_size=[1,2]'")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "4 cells: 4 run" in out and f"results in {uri.split('?')[0]}" in out, out[-3000:]
    table = subprocess.run(
        [sys.executable, "-m", "orchestrator", "summarize", uri.replace("/results?", "/results/cluster?")],
        cwd=ROOT, env={**os.environ, **s3_server.env()}, capture_output=True, text=True,
        timeout=120, check=False)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "speedup" in table.stdout


def submit_cli(cluster: Cluster, tmp_path: Path, env: dict, *extra: str):
    spec = tmp_path / "job.yaml"
    spec.write_text(TINY)
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results", str(results),
            "--address", cluster.address, *extra]
    proc = subprocess.run(argv, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    return proc, results


@pytest.mark.parametrize("case", ["no token", "wrong token"])
def test_join_refused_for_the_token_in_one_line(cluster, tmp_path, case):
    env = dict(cluster.env)
    if case == "no token":
        env.pop("RAY_AUTH_MODE")
        want = "requires token authentication and this process sent no token: export RAY_AUTH_MODE=token"
    else:
        env.pop("RAY_AUTH_TOKEN_PATH")
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        want = "the cluster refused this process's token"
    proc, results = submit_cli(cluster, tmp_path, env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and want in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "gcs_client" not in proc.stderr
    log = Path(errors[0].rsplit("Ray log: ", 1)[1])
    assert log.is_file() and "InvalidAuthToken" in log.read_text()  # the real log, kept
    assert not results.exists()  # no _lock, no job dir: nothing left


def test_join_refused_on_a_version_mismatch(cluster, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import ray\nray.__version__ = '2.0.0'\n")
    env = {**cluster.env, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    spec = tmp_path / "job.yaml"
    spec.write_text(TINY)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(spec), "--results",
                           str(tmp_path / "results"), "--address", cluster.address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "version mismatch: the cluster runs Ray 2.6" in proc.stderr, proc.stderr[-3000:]
    assert "this process Ray 2.0.0" in proc.stderr and "pip install 'ray[default]==" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_node_killed_mid_run_has_its_cell_retried_elsewhere(cluster, tmp_path):
    """Runs last in the module: it kills the worker node (its worker cannot come back: the head's
    one CPU is taken), so the head's worker finishes what the dead one held."""
    spec = tmp_path / "kill.yaml"
    spec.write_text(TINY.replace("name: cluster", "name: kill").replace(
        "prompt_len: [8, 16]", "prompt_len: [8]").replace(
        "batch_size: [1, 2, 3, 4]", "batch_size: [1, 2, 3, 4, 5, 6]").replace(
        "max_tokens: [64]", "max_tokens: [128]"))  # 12 cells, a second or more each
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "orchestrator", "submit", str(spec), "--results", str(results),
            "--address", cluster.address, "--progress", "lines"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**cluster.env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    names = cluster.node_names()
    try:
        job_dir, victim = results / "kill", None
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            for part in job_dir.glob("part-*.parquet"):
                with contextlib.suppress(OSError, ValueError):  # one being renamed
                    node = ds.dataset(part, format="parquet").to_table().to_pylist()[0]
                    if names.get(node["ray_node_id"], "head") != "head":
                        victim = names[node["ray_node_id"]]  # a worker node with a worker
            time.sleep(0.1)
        assert victim is not None and proc.poll() is None, "no worker node could be killed mid-run"
        cluster.kill(victim)
        killed_at = datetime.now(timezone.utc)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    rows = ds.dataset(results / "kill", format="parquet").to_table().to_pylist()
    ok = [r["cell_id"] for r in rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 12, err[-4000:]  # exactly one ok row per cell
    assert [line for line in err.splitlines() if line.startswith("worker ") and " died" in line]
    dead = {nid for nid, name in names.items() if name == victim}
    late = [r for r in rows if r["ray_node_id"] in dead and r["finished_at"] > killed_at]
    assert not late  # what the dead node held was finished by the others
    terminal = out + err
    assert "(raylet" not in terminal and "Traceback" not in terminal
    assert not [line for line in terminal.splitlines() if re.match(r"\[\d{4}-\d\d-\d\d ", line)]
