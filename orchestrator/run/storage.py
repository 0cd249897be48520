"""Where results live: a local directory or a pyarrow filesystem URI (`s3://bucket/prefix`,
`gs://...`, `hdfs://...`), the same convention as Ray Train/Tune's `storage_path`.

    root = resolve("results")                 # local: an absolute path
    root = resolve("s3://bench/results")      # object store: fs + "bench/results"
    root = resolve("s3://bench/results?endpoint_override=http://127.0.0.1:9000")  # e.g. MinIO
    job = root / "sweep"
    job.write_atomic("part-x.parquet", data)  # temp name, then the final name
    [info.base_name for info in job.list_files()]

Every read and write of the results store goes through a `Location`, so the store, manifests
and readers work the same on a laptop and on a bucket. Writes are atomic per file: local files
are written to a temporary name, fsynced and renamed; on an object store the temporary key is
written, then moved to the final key (a PUT is atomic, so readers see the whole object or
nothing). Names starting with "." or "_" are never part of the dataset.

A URI's query string configures its filesystem (pyarrow's `FileSystem.from_uri` options, e.g.
`endpoint_override`, `scheme`, `region`); it is kept out of `Location.uri`, which is what
messages show. `AWS_ENDPOINT_URL` (and the other AWS_* variables) work too.

Any OSError from the filesystem (a full disk, a read-only mount, a file where a directory
belongs, a refused request) becomes a one-line `StorageError` naming the path and the cause
(exit code 3); `FileNotFoundError` from a read stays itself, so callers can tell "absent".
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.errors import ResultsError, StorageError

TEMP_PREFIX = ".tmp-"
_FLAT_STORES = ("s3", "gcs")  # object stores: a key needs no parent "directory" first

# errno -> what it means for a results store (the OS's own words are terse or misleading)
_CAUSES = {
    errno.ENOSPC: "no space left on device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory where a file is expected",
    errno.ENOTDIR: "is a file where a directory is expected",
    errno.EEXIST: "exists and is not a directory",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error",
}


def is_uri(target: str | os.PathLike) -> bool:
    """True for `scheme://...` targets other than `file://`.

    >>> is_uri("s3://bucket/x"), is_uri("results/sweep"), is_uri("file:///tmp/x")
    (True, False, False)
    """
    text = os.fspath(target)
    return "://" in text and not text.startswith("file://")


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _local_culprit(path: str, code: int | None) -> tuple[str, str | None]:
    """For a local "not a directory" or "exists" failure, the component at fault (the first,
    from the root down, that is not a directory) and a sharper cause."""
    if code not in (errno.ENOTDIR, errno.EEXIST):
        return path, None
    p = Path(path)
    for part in reversed([p, *p.parents]):
        if part.is_symlink() and not part.exists():
            return str(part), f"is a dangling symlink (to {os.readlink(part)})"
        if part.exists() and not part.is_dir():
            return str(part), "is a file where a directory is expected"
    return path, None


def describe(exc: OSError, path: str, *, local: bool) -> StorageError:
    """An OSError from the filesystem as a StorageError naming the path at fault and the cause.

    >>> import errno
    >>> str(describe(OSError(errno.ENOSPC, "x"), "/r/sweep/part-1.parquet", local=False))
    '/r/sweep/part-1.parquet: no space left on device (the disk is full)'
    """
    code = exc.errno
    where, sharper = _local_culprit(path, code) if local else (path, None)
    cause = sharper or _CAUSES.get(code) or _one_line(exc.strerror or exc)
    return StorageError(where, cause, code)


def os_error_line(exc: OSError) -> str:
    """An OSError that no layer named, as one line (the CLI's last resort, exit 3).

    >>> import errno
    >>> os_error_line(OSError(errno.EROFS, "Read-only file system", "/r/x"))
    '/r/x: read-only file system'
    """
    if exc.filename:
        return str(describe(exc, os.fsdecode(exc.filename), local=True))
    return _one_line(exc, 300)


@contextlib.contextmanager
def storage_errors(path: str, *, local: bool = True) -> Iterator[None]:
    """Turn an OSError raised inside into a StorageError about `path` (FileNotFoundError on a
    read passes through; StorageError passes through)."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except OSError as e:
        raise describe(e, path, local=local) from None


@dataclass(frozen=True)
class Location:
    """A directory on some filesystem: `fs` and the filesystem's own path to it; `uri` is what
    users see (an absolute local path, or the URI without its query string); `query` is the
    URI's query (filesystem options), kept so that `full_uri` can rebuild it."""

    fs: pafs.FileSystem = field(compare=False)  # equal and hashed by where it points
    path: str
    uri: str
    query: str = ""

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def full_uri(self) -> str:
        """The URI with its query string: what another process needs to open the same place."""
        return f"{self.uri}?{self.query}" if self.query else self.uri

    def __truediv__(self, part: str) -> Location:
        return Location(
            self.fs,
            f"{self.path.rstrip('/')}/{part}",
            f"{self.uri.rstrip('/')}/{part}",
            self.query,
        )

    def __str__(self) -> str:
        return self.uri

    def local_path(self) -> Path:
        """The local directory (only for local locations)."""
        if not self.is_local:
            raise ResultsError(f"{self.uri}: not a local directory")
        return Path(self.path)

    def local_dir(self) -> Path:
        """A local directory for this location's side files that cannot live on an object
        store (Ray's driver log): the directory itself when local, else a fixed place under
        the temp dir named after the URI (/tmp/unet-bench/s3/bucket/prefix/...)."""
        if self.is_local:
            return Path(self.path)
        scheme = self.uri.split("://", 1)[0]
        return Path(tempfile.gettempdir()) / "unet-bench" / scheme / self.path.lstrip("/")

    def _errors(self, name: str | None = None) -> contextlib.AbstractContextManager:
        where = self.path if self.is_local else self.uri
        if name:
            where = f"{where.rstrip('/')}/{name}"
        return storage_errors(where, local=self.is_local)

    def _full(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    # -- inspecting -----------------------------------------------------------------------
    def info(self, name: str | None = None) -> pafs.FileInfo:
        with self._errors(name):
            return self.fs.get_file_info(self.path if name is None else self._full(name))

    def exists(self, name: str | None = None) -> bool:
        return self.info(name).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list(self) -> list[pafs.FileInfo]:
        """Entries directly in this directory (none when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        with self._errors():
            return sorted(self.fs.get_file_info(selector), key=lambda i: i.base_name)

    def list_files(self) -> list[pafs.FileInfo]:
        return [i for i in self.list() if i.type == pafs.FileType.File]

    def list_dirs(self) -> list[Location]:
        return [self / i.base_name for i in self.list() if i.type == pafs.FileType.Directory]

    # -- reading and writing --------------------------------------------------------------
    def makedirs(self) -> None:
        with self._errors():
            self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self, name: str) -> bytes:
        """The whole file; FileNotFoundError when it is absent."""
        with self._errors(name), self.fs.open_input_stream(self._full(name)) as f:
            return f.read()

    def write_atomic(self, name: str, data: bytes) -> str:
        """Write `data` to `name` so that readers see all of it or nothing; returns the path.
        A failed write leaves no temporary file behind (it would hold the space a full disk
        needs for the manifest that records the failure)."""
        if not self.is_local and self.fs.type_name not in _FLAT_STORES:
            self.makedirs()  # local: made below; S3/GCS keys need no directories (saves requests)
        final = self._full(name)
        with self._errors(name):
            if self.is_local:
                _write_local_atomic(Path(final), data)
                return final
            folder, _, base = final.rpartition("/")
            tmp = f"{folder}/{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{base}"
            try:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                self.fs.move(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(tmp)
                raise
        return final

    def put(self, name: str, data: bytes) -> None:
        """One plain write of `name` (a single PUT on an object store, which replaces the
        object atomically; locally a plain overwrite). For small control objects like the lock."""
        with self._errors(name), self.fs.open_output_stream(self._full(name)) as f:
            f.write(data)

    def delete_file(self, name: str, *, missing_ok: bool = False) -> None:
        try:
            with self._errors(name):
                self.fs.delete_file(self._full(name))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_temporaries(self) -> list[str]:
        """Delete the temporary files a killed writer left here (`.tmp-*`); only safe while
        holding the job's lock. Returns their names."""
        names = [i.base_name for i in self.list_files() if i.base_name.startswith(TEMP_PREFIX)]
        for name in names:
            self.delete_file(name, missing_ok=True)
        return names


def resolve(target: str | os.PathLike | Location) -> Location:
    """A local path (made absolute) or a filesystem URI -> Location; ResultsError when the URI's
    filesystem cannot be opened (unknown scheme, missing credentials, unsupported build).

    >>> resolve("s3://bench/results/?region=us-east-1&scheme=http").uri
    's3://bench/results'
    """
    if isinstance(target, Location):
        return target
    text = os.fspath(target)
    if not is_uri(text):
        text = text.removeprefix("file://")
        path = Path(text).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), str(path), str(path))
    parts = urlsplit(text)
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, OSError, ValueError) as e:
        raise ResultsError(f"{shown}: cannot open this storage URI: {_one_line(e)}") from None
    return Location(fs, path.rstrip("/"), shown, parts.query)


def _write_local_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
