"""Where results live: a local directory or a pyarrow filesystem URI (`s3://bucket/prefix`,
`gs://...`, `hdfs://...`), the same convention as Ray Train/Tune's `storage_path`.

    root = resolve("results")                 # local: an absolute path
    root = resolve("s3://bench/results")      # object store: fs + "bench/results"
    job = root / "sweep"
    job.write_atomic("part-x.parquet", data)  # temp name, then the final name
    [info.base_name for info in job.list_files()]

Every read and write of the results store goes through a `Location`, so the store, manifests
and readers work the same on a laptop and on a bucket. Writes are atomic per file: local files
are written to a temporary name, fsynced and renamed; on an object store the temporary key is
written, then moved to the final key (a PUT is atomic, so readers see the whole object or
nothing). Names starting with "." or "_" are never part of the dataset.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.errors import ResultsError

TEMP_PREFIX = ".tmp-"


def is_uri(target: str | os.PathLike) -> bool:
    """True for `scheme://...` targets other than `file://`.

    >>> is_uri("s3://bucket/x"), is_uri("results/sweep"), is_uri("file:///tmp/x")
    (True, False, False)
    """
    text = os.fspath(target)
    return "://" in text and not text.startswith("file://")


@dataclass(frozen=True)
class Location:
    """A directory on some filesystem: `fs` and the filesystem's own path to it; `uri` is what
    users see (an absolute local path, or the URI)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, part: str) -> Location:
        return Location(self.fs, f"{self.path.rstrip('/')}/{part}", f"{self.uri.rstrip('/')}/{part}")

    def __str__(self) -> str:
        return self.uri

    def local_path(self) -> Path:
        """The local directory (only for local locations)."""
        if not self.is_local:
            raise ResultsError(f"{self.uri}: not a local directory")
        return Path(self.path)

    # -- inspecting -----------------------------------------------------------------------
    def info(self, name: str | None = None) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path if name is None else f"{self.path}/{name}")

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list(self) -> list[pafs.FileInfo]:
        """Entries directly in this directory (none when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(self.fs.get_file_info(selector), key=lambda i: i.base_name)

    def list_files(self) -> list[pafs.FileInfo]:
        return [i for i in self.list() if i.type == pafs.FileType.File]

    def list_dirs(self) -> list[Location]:
        return [self / i.base_name for i in self.list() if i.type == pafs.FileType.Directory]

    # -- reading and writing --------------------------------------------------------------
    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.path}/{name}") as f:
            return f.read()

    def write_atomic(self, name: str, data: bytes) -> str:
        """Write `data` to `name` so that readers see all of it or nothing; returns the path."""
        self.makedirs()
        final = f"{self.path}/{name}"
        if self.is_local:
            _write_local_atomic(Path(final), data)
            return final
        tmp = f"{self.path}/{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, final)
        return final

    def delete_file(self, name: str) -> None:
        self.fs.delete_file(f"{self.path}/{name}")


def resolve(target: str | os.PathLike | Location) -> Location:
    """A local path (made absolute) or a filesystem URI -> Location; ResultsError when the URI's
    filesystem cannot be opened (unknown scheme, missing credentials, unsupported build)."""
    if isinstance(target, Location):
        return target
    text = os.fspath(target)
    if not is_uri(text):
        text = text.removeprefix("file://")
        path = Path(text).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), str(path), str(path))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ResultsError(f"{text}: cannot open this storage URI: {' '.join(str(e).split())[:200]}")
    return Location(fs, path.rstrip("/"), text.rstrip("/"))


def _write_local_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
