"""Run manifests: what each `submit` was asked to do, by whom, from which commit, and when.

One small JSON file per run, beside the dataset: `<results>/<job>/_manifests/<run_id>.json`
(the leading "_" keeps it out of `pyarrow.dataset.dataset(job_dir)`), on a local disk or an
object store alike (through `orchestrator.run.storage.Location`). It is written when the run
starts (status "running") and rewritten when it ends: "finished", "interrupted" (Ctrl-C,
SIGTERM), "storage_error" (the results store failed: disk full, read-only, ...) or "failed"
(any other error), each time atomically (temporary name, then the final one), so a reader never
sees half a file. On a local disk the "running" manifest ends in RESERVE_BYTES of spaces (JSON
ignores them), so that when the disk is full its final status still fits: it is then
overwritten in place. A driver that is SIGKILLed or crashes cannot say how it ended: the next submit
of the job, holding the job's lock, marks its still-"running" manifest "killed".

    manifest = RunManifest.start(job_dir, run_id, job, invocation, cells_to_run=12, skipped=0)
    ...
    manifest.finish("finished", {"ok": 12})

`manifest_table(job_dir)` reads them back as one Arrow table with `run_*` columns, which
`join_manifests` adds to result rows by `run_id` (`query --join-manifest`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shlex
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import StorageError
from orchestrator.run.lock import holder_alive
from orchestrator.run.storage import Location, resolve

MANIFEST_DIR = "_manifests"
MANIFEST_VERSION = 2  # 2: pid, error; statuses storage_error and killed
RUN_STATUSES = ("running", "finished", "interrupted", "storage_error", "failed", "killed")
RESERVE_BYTES = 4096
# manifest key -> column name and type in the joined table
COLUMNS: dict[str, tuple[str, pa.DataType]] = {
    "run_id": ("run_id", pa.string()),
    "status": ("run_status", pa.string()),
    "command": ("run_command", pa.string()),
    "spec_file": ("run_spec_file", pa.string()),
    "overrides": ("run_overrides", pa.string()),
    "started_at": ("run_started_at", pa.timestamp("ms", tz="UTC")),
    "finished_at": ("run_finished_at", pa.timestamp("ms", tz="UTC")),
    "git_commit": ("run_git_commit", pa.string()),
    "git_dirty": ("run_git_dirty", pa.bool_()),
    "hostname": ("run_hostname", pa.string()),
    "cells_to_run": ("run_cells_to_run", pa.int64()),
    "cells_skipped": ("run_cells_skipped", pa.int64()),
    "spec": ("run_spec", pa.string()),
    "error": ("run_error", pa.string()),
}

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Invocation:
    """How a submit was started: the command line, the spec file and its --set overrides."""

    argv: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))
    spec_file: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The command line as one shell-quoted string."""
        return shlex.join(self.argv)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def spec_to_dict(job: Any) -> dict:
    """A resolved JobSpec (overrides applied, checkpoints and steps resolved) as plain JSON data.

    >>> from orchestrator.spec.job import JobSpec, GridSpec, ModelSpec
    >>> spec_to_dict(JobSpec(name="j", models=(ModelSpec(tag="d[2]-h[64]"),), grid=GridSpec()))["name"]
    'j'
    """
    return _jsonable(job)


def _git_state(commit: str | None) -> tuple[str | None, bool | None]:
    if not commit:
        return None, None
    return commit.removesuffix("-dirty"), commit.endswith("-dirty")


def _encode(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


@dataclass
class RunManifest:
    """The manifest of one run; `start` writes it, `finish` completes it."""

    location: Location  # the job's _manifests directory
    name: str  # <run_id>.json
    data: dict

    @property
    def uri(self) -> str:
        return f"{self.location.uri}/{self.name}"

    @classmethod
    def start(
        cls,
        job_dir: Location | Path | str,
        run_id: str,
        job: Any,
        invocation: Invocation | None = None,
        *,
        cells_to_run: int,
        skipped: int,
        git_commit: str | None = None,
        address: str | None = None,
    ) -> RunManifest:
        """Write `<job_dir>/_manifests/<run_id>.json` with status "running" and return it;
        StorageError when it cannot be written (nothing has run yet)."""
        invocation = invocation or Invocation()
        commit, dirty = _git_state(git_commit)
        data = {
            "manifest_version": MANIFEST_VERSION,
            "run_id": run_id,
            "job_name": getattr(job, "name", None),
            "status": "running",
            "command": invocation.command,
            "argv": list(invocation.argv),
            "cwd": os.getcwd(),
            "spec_file": invocation.spec_file or getattr(job, "source", None),
            "overrides": list(invocation.overrides),
            "started_at": _now(),
            "finished_at": None,
            "git_commit": commit,
            "git_dirty": dirty,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "python_version": platform.python_version(),
            "ray_address": address,
            "cells_to_run": cells_to_run,
            "cells_skipped": skipped,
            "statuses": {},
            "error": None,
            "spec": spec_to_dict(job),
        }
        manifest = cls(resolve(job_dir) / MANIFEST_DIR, f"{run_id}.json", data)
        reserve = b" " * RESERVE_BYTES if manifest.location.is_local else b""
        manifest.location.write_atomic(manifest.name, _encode(data) + reserve)
        return manifest

    def finish(self, status: str, statuses: dict[str, int], error: str | None = None) -> None:
        """Record the end time, how the run ended (one of RUN_STATUSES), the count of cells per
        outcome and, for storage_error/failed, the one-line reason."""
        self.data.update(status=status, finished_at=_now(), statuses=dict(statuses), error=error)
        body = _encode(self.data)
        try:
            self.location.write_atomic(self.name, body)
        except StorageError as e:  # the results (and the exit code) matter more
            if not self._overwrite_in_place(body):
                log.warning("could not write the run manifest %s: %s", self.uri, e.cause)

    def _overwrite_in_place(self, body: bytes) -> bool:
        """The full-disk fallback: rewrite the local file within the space it already has."""
        if not self.location.is_local:
            return False
        path = Path(self.location.path) / self.name
        try:
            size = path.stat().st_size
            if len(body) > size:
                return False
            with open(path, "r+b") as f:
                f.write(body + b" " * (size - len(body)))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return False
        return True


def read_manifests(job_dir: Location | Path | str) -> list[dict]:
    """The manifests in a job directory, oldest first (unreadable files are skipped)."""
    return [data for _, data in _manifests(resolve(job_dir) / MANIFEST_DIR)]


def _manifests(location: Location) -> list[tuple[str, dict]]:
    out = []
    for info in location.list_files():
        name = info.base_name
        if name.startswith((".", "_")) or not name.endswith(".json"):
            continue
        try:
            data = json.loads(location.read_bytes(name))
        except (OSError, StorageError, ValueError) as e:
            log.warning("skipping unreadable manifest %s/%s: %s", location.uri, name, e)
            continue
        if isinstance(data, dict):
            out.append((name, data))
    return out


def mark_dead_runs(job_dir: Location | Path | str, current_run_id: str | None = None) -> list[str]:
    """Mark "killed" every manifest of the job still saying "running" whose driver is gone;
    call it holding the job's lock (which a live submit of the job would hold). A driver on
    this host is gone when its pid is; one elsewhere, when it no longer holds the lock.
    Also removes the temporary files (`.tmp-*`) a killed writer left in the job and manifest
    directories. Returns the run ids marked."""
    job = resolve(job_dir)
    location = job / MANIFEST_DIR
    for where in (job, location):
        for name in where.remove_temporaries():
            log.info("removed %s/%s (left by a killed writer)", where.uri, name)
    marked = []
    for name, data in _manifests(location):
        if data.get("status") != "running" or data.get("run_id") == current_run_id:
            continue
        host, pid = data.get("hostname"), data.get("pid")
        if holder_alive(host, pid):
            continue
        gone = (
            f"pid {pid} on this host is not running"
            if host == socket.gethostname()
            else (f"its driver on {host} no longer holds the job lock")
        )
        data.update(
            status="killed", error=f"the driver stopped without a word ({gone}); marked at {_now()}"
        )
        try:
            location.write_atomic(name, _encode(data))
        except StorageError as e:
            log.warning("could not mark run %s as killed: %s", data.get("run_id"), e)
            continue
        marked.append(str(data.get("run_id")))
    if marked:
        log.info(
            "earlier run(s) %s ended without finishing (driver killed); marked killed",
            ", ".join(marked),
        )
    return marked


def _cell(key: str, value: Any) -> Any:
    if key == "overrides":
        return " ".join(value or []) or None
    if key == "spec":
        return json.dumps(value, sort_keys=True)
    if key in ("started_at", "finished_at") and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def manifest_table(manifests: list[dict]) -> pa.Table:
    """Manifests as an Arrow table, one row per run, with the `run_*` columns of COLUMNS."""
    arrays = {
        name: pa.array([_cell(key, m.get(key)) for m in manifests], type=typ)
        for key, (name, typ) in COLUMNS.items()
    }
    return pa.table(arrays)


def join_manifests(table: pa.Table, manifests: pa.Table) -> pa.Table:
    """Add the manifest columns to result rows by run_id (null where a run has no manifest).

    A left join done with `index_in` + `take`, which (unlike `Table.join`) keeps list columns.
    """
    if "run_id" not in table.column_names:
        return table
    index = pc.index_in(table["run_id"], value_set=manifests["run_id"])
    for name in manifests.column_names:
        if name == "run_id" or name in table.column_names:
            continue
        table = table.append_column(name, manifests[name].take(index))
    return table
