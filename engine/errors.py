"""Errors the engine raises for bad configurations, checkpoints and requests.

Each is a ValueError subclass whose message is one line that names the offending value or path,
so callers (the CLI, the workers) can show it as is.
"""


class EngineError(ValueError):
    """Base class of the engine's user-facing errors."""


class ConfigError(EngineError):
    """An invalid model configuration or model tag."""


class CheckpointError(EngineError):
    """A checkpoint directory or file that cannot be loaded."""


class GenerationError(EngineError):
    """A generation request the model cannot serve (too long, bad shape, bad sampling args)."""


class DataError(EngineError):
    """Training data that cannot be used (missing, empty, too short, not UTF-8)."""


class BenchSpecError(EngineError):
    """An invalid cell spec, or a model that does not match it."""


class TrainError(EngineError):
    """A training request that cannot run; the message is one line that says what to change."""
