"""Shared fixtures: tiny random models, the golden nanochat checkpoint, a session Ray."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "nanochat_unet"
GOLDEN_TAG = "d[2,2]-h[64,128]"
GOLDEN_DIR = FIXTURES / "golden_checkpoints" / GOLDEN_TAG

# Tiny models gain nothing from intra-op threads, and OpenMP threads spinning on a busy 2-core
# machine (Ray workers, a parallel test run) slow small ops down by 30x.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture()
def python_sigint():
    """Python's KeyboardInterrupt handler for a test that signals its own process. A runner
    started in the background inherits SIGINT ignored, and Python then installs none; only this
    test gets one (a global one would reach every driver the suite starts as a subprocess)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The reference's tiny checkpoint directory (tag directory with literal brackets)."""
    return GOLDEN_DIR


@pytest.fixture()
def nanochat_base(tmp_path) -> Path:
    """A NANOCHAT_BASE_DIR holding the golden checkpoint and tokenizer in nanochat's layout."""
    base = tmp_path / "nanochat"
    shutil.copytree(GOLDEN_DIR, base / "base_checkpoints" / GOLDEN_TAG)
    shutil.copytree(FIXTURES / "tokenizer", base / "tokenizer")
    return base


@pytest.fixture(scope="session")
def ray_session():
    """A local 2-CPU Ray (no dashboard) started once per session; yields the ray module.

    Workers inherit the repository root as their working directory, so they import `engine`,
    `workers` and `tests.*` like the test process does.
    """
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto_server) on 127.0.0.1, started once per session and
    stopped by pid; the AWS_* credentials it accepts are set for the session (and so inherited
    by subprocesses). See tests/s3server.py."""
    from tests import s3server

    reason = s3server.available()
    if reason:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3server.CREDENTIALS.items():
            mp.setenv(key, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        with s3server.S3Server.start() as server:
            yield server


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on `s3_server`; its name."""
    return s3_server.create_bucket()
