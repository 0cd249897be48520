"""Run manifests: what each `submit` was asked to do, by whom, from which commit, and when.

One small JSON file per run, beside the dataset: `<results>/<job>/_manifests/<run_id>.json`
(the leading "_" keeps it out of `pyarrow.dataset.dataset(job_dir)`). It is written when the run
starts (status "running") and rewritten when it ends ("finished", "interrupted" or "failed"),
each time to a temporary name and renamed, so a reader never sees half a file.

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

MANIFEST_DIR = "_manifests"
MANIFEST_VERSION = 1
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


def atomic_write_json(path: Path, data: dict) -> None:
    """Write JSON to `path` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunManifest:
    """The manifest of one run; `start` writes it, `finish` completes it."""

    path: Path
    data: dict

    @classmethod
    def start(
        cls,
        job_dir: Path,
        run_id: str,
        job: Any,
        invocation: Invocation | None = None,
        *,
        cells_to_run: int,
        skipped: int,
        git_commit: str | None = None,
        address: str | None = None,
    ) -> RunManifest:
        """Write `<job_dir>/_manifests/<run_id>.json` with status "running" and return it."""
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
            "python_version": platform.python_version(),
            "ray_address": address,
            "cells_to_run": cells_to_run,
            "cells_skipped": skipped,
            "statuses": {},
            "spec": spec_to_dict(job),
        }
        manifest = cls(Path(job_dir) / MANIFEST_DIR / f"{run_id}.json", data)
        manifest._write()
        return manifest

    def finish(self, status: str, statuses: dict[str, int]) -> None:
        """Record the end time, the final status and the count of cells per outcome."""
        self.data.update(status=status, finished_at=_now(), statuses=dict(statuses))
        self._write()

    def _write(self) -> None:
        try:
            atomic_write_json(self.path, self.data)
        except OSError as e:  # the results matter more than their manifest
            log.warning("could not write the run manifest %s: %s", self.path, e)


def read_manifests(job_dir: Path) -> list[dict]:
    """The manifests in a job directory, oldest first (unreadable files are skipped)."""
    out = []
    for path in sorted((Path(job_dir) / MANIFEST_DIR).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable manifest %s: %s", path, e)
    return out


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
