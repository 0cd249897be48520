"""Errors raised by the orchestrator (driver side).

Every user-facing error is a subclass of `OrchestratorError`; the CLI prints its one-line `str()`
and exits with the error's `exit_code`, never with a traceback. Exit codes: 1 some cells failed
(not an error class), 2 bad input (spec, arguments, address, locked job, missing results),
3 storage fault (StorageError), 130 interrupted.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class: a problem the user can fix, reported as one line."""

    exit_code = 1


class SpecError(OrchestratorError):
    """An invalid job spec or override: names where (file:line or the --set), the field and why.

    >>> str(SpecError("jobs/x.yaml:7", "grid.batch_size[1]", "must be a positive integer, got -3"))
    'jobs/x.yaml:7: grid.batch_size[1]: must be a positive integer, got -3'
    """

    exit_code = 2

    def __init__(self, where: str, path: str, message: str):
        self.where = where
        self.path = path
        self.message = message
        parts = [p for p in (where, path) if p]
        super().__init__(": ".join([*parts, message]))


class UsageError(OrchestratorError):
    """Bad command-line arguments (other than spec content)."""

    exit_code = 2


class ClusterError(OrchestratorError):
    """Ray could not be started or joined (e.g. --address unreachable)."""

    exit_code = 2


class ResultsLockedError(OrchestratorError):
    """Another submit of the same job holds the results directory."""

    exit_code = 2


class ResultsError(OrchestratorError):
    """The results directory cannot be read (missing, empty)."""

    exit_code = 2


class StorageError(OrchestratorError):
    """The results store cannot be written or read: a full disk, a read-only mount, a file
    where a directory belongs (or the reverse), a dangling symlink, a refused object-store
    request. Names the path and the cause; finished rows stay.

    >>> str(StorageError("results/sweep/_lock", "is a directory, expected a file"))
    'results/sweep/_lock: is a directory, expected a file'
    """

    exit_code = 3

    def __init__(self, path: str, cause: str, errno: int | None = None):
        self.path = path
        self.cause = cause
        self.errno = errno  # the OS error number behind it, when there is one
        super().__init__(f"{path}: {cause}")


class Interrupted(OrchestratorError):
    """The driver was interrupted (SIGINT/SIGTERM); finished rows are kept."""

    exit_code = 130


class QueryError(OrchestratorError):
    """A query, pivot, compare or plot request that names unknown columns or does not parse."""

    exit_code = 2


class MissingDependencyError(OrchestratorError):
    """An optional dependency (matplotlib for plots) is not installed."""

    exit_code = 2
