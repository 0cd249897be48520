"""A real S3-protocol server on 127.0.0.1 for the storage-URI tests: moto's standalone
`moto_server` (pip install 'moto[server]') in its own process, on a free port, stopped by pid.

    with S3Server.start() as server:
        server.create_bucket("bench")
        uri = server.uri("bench", "results")   # s3://bench/results?endpoint_override=...&scheme=http
        env = server.env()                     # AWS_* variables a subprocess needs

The URI carries the endpoint in its query string (pyarrow's `endpoint_override` and `scheme`),
which is how a user points `--results` at MinIO, Ceph or moto; `server.env(endpoint=True)` sets
`AWS_ENDPOINT_URL` instead, the other documented way. Fixtures: `s3_server` and `s3_bucket` in
tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 30.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no 1-second probes of an instance-metadata service
}


def available() -> str | None:
    """None when moto's server can run here, else why not (for pytest.skip)."""
    for module in ("moto", "flask", "werkzeug"):
        if importlib.util.find_spec(module) is None:
            return f"needs moto[server] ({module} is not installed): pip install 'moto[server]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto_server process; `stop()` ends it by pid."""

    port: int
    process: subprocess.Popen
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, attempts: int = 3) -> S3Server:
        """Start moto_server on a free port and wait until it answers HTTP."""
        last = ""
        for _ in range(attempts):  # a free port can be taken between the probe and the bind
            port = _free_port()
            log_path = Path(tempfile.mkstemp(prefix="moto-server-", suffix=".log")[1])
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C of the test run does not reach it first
                )
            server = cls(port, process, log_path)
            if server._wait_ready():
                return server
            last = log_path.read_text(errors="replace")[-2000:]
            server.stop()
        raise RuntimeError(f"moto_server did not start: {last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        """Stop the server process (by its pid) and remove its log."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- using it -------------------------------------------------------------------------
    def env(self, *, endpoint: bool = False) -> dict[str, str]:
        """The AWS_* variables for a process that talks to this server (credentials moto
        accepts; `endpoint`: also AWS_ENDPOINT_URL, so plain `s3://` URIs reach it)."""
        env = dict(CREDENTIALS)
        if endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
        return env

    def query(self) -> str:
        return f"endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def uri(self, bucket: str, prefix: str = "") -> str:
        """`s3://bucket/prefix` with this server's endpoint in the query string."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?{self.query()}"

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            allow_bucket_creation=True,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        self.buckets.append(name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under bucket/prefix, relative to it, sorted."""
        import pyarrow.fs as pafs

        base = f"{bucket}/{prefix}".rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)
