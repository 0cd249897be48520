"""`Location` on a real S3-protocol server (moto_server on 127.0.0.1, tests/s3server.py):
atomic writes through a temporary key, listings, the endpoint given in the URI or in
AWS_ENDPOINT_URL, and one-line errors for a missing bucket."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import ResultsError, StorageError
from orchestrator.run.storage import resolve


def _parquet(n: int) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": list(range(n))}), sink)
    return sink.getvalue().to_pybytes()


def test_write_list_read_through_the_uri(s3_server, s3_bucket):
    root = resolve(s3_server.uri(s3_bucket, "results/"))
    assert root.uri == f"s3://{s3_bucket}/results"  # what messages show: no query string
    assert "endpoint_override" in root.full_uri
    job = root / "sweep"
    assert job.uri == f"s3://{s3_bucket}/results/sweep" and job.query == root.query
    job.write_atomic("part-a.parquet", _parquet(3))
    job.write_atomic("part-b.parquet", _parquet(2))
    job.write_atomic("_manifests/r1.json", b"{}")
    assert s3_server.keys(s3_bucket, "results") == [
        "sweep/_manifests/r1.json",
        "sweep/part-a.parquet",
        "sweep/part-b.parquet",
    ]  # no temporary key left behind
    assert [i.base_name for i in job.list_files()] == ["part-a.parquet", "part-b.parquet"]
    assert [d.name for d in root.list_dirs()] == ["sweep"]
    assert job.read_bytes("_manifests/r1.json") == b"{}"
    # a plain pyarrow dataset reader of the prefix sees only the parts
    table = ds.dataset(job.path, filesystem=job.fs, format="parquet").to_table()
    assert table.num_rows == 5
    with pytest.raises(FileNotFoundError):
        job.read_bytes("part-c.parquet")


def test_readers_ignore_temporary_keys(s3_server, s3_bucket):
    job = resolve(s3_server.uri(s3_bucket, "r/job"))
    job.write_atomic("part-a.parquet", _parquet(1))
    fs = s3_server.filesystem()
    with fs.open_output_stream(f"{s3_bucket}/r/job/.tmp-1234-part-b.parquet") as f:
        f.write(b"half a file")  # what a writer killed between the two steps leaves
    table = ds.dataset(job.path, filesystem=job.fs, format="parquet").to_table()
    assert table.num_rows == 1
    assert job.remove_temporaries() == [".tmp-1234-part-b.parquet"]
    assert s3_server.keys(s3_bucket, "r/job") == ["part-a.parquet"]


def test_endpoint_from_aws_endpoint_url(s3_server, s3_bucket, tmp_path):
    """A plain s3:// URI reaches the server through AWS_ENDPOINT_URL (in a fresh process, as a
    user's shell would set it)."""
    resolve(s3_server.uri(s3_bucket, "env")).write_atomic("hello.txt", b"hi")
    code = (
        "from orchestrator.run.storage import resolve\n"
        f"print(resolve('s3://{s3_bucket}/env').read_bytes('hello.txt').decode())\n"
    )
    env = {**os.environ, **s3_server.env(endpoint=True)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hi"


def test_missing_bucket_is_one_line(s3_server):
    job = resolve(s3_server.uri("no-such-bucket-h6", "results/sweep"))
    with pytest.raises(StorageError) as err:
        job.write_atomic("part-a.parquet", b"x")
    message = str(err.value)
    assert message.startswith("s3://no-such-bucket-h6/results/sweep")
    assert "\n" not in message and "endpoint_override" not in message


def test_unknown_scheme_is_a_results_error():
    with pytest.raises(ResultsError, match=r"^nope://x/y: cannot open this storage URI"):
        resolve("nope://x/y?secret_key=hidden")
