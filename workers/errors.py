"""Errors of the workers package.

A failing cell never raises out of `CellWorker.run`: it comes back as a record whose `status`
says what happened (see `record.Status`). These exceptions are for setup problems.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class for worker-side problems."""


class BadCellError(WorkerError, ValueError):
    """A cell dict is missing fields or has wrong values (a driver/worker contract bug)."""


class ModelLoadError(WorkerError):
    """A model could not be built or loaded for a cell."""
