"""The record a worker returns for one cell attempt, and the vocabulary shared with the driver.

A record is a flat dict of scalars (plus the raw lists of floats `decode_step_ms`,
`ttft_ms_repeats` and `decode_tok_s_repeats`, and `trace_json`, bytes or None) so that it maps
directly onto one Parquet row.
"""

from __future__ import annotations

from enum import Enum

SCHEMA_VERSION = 1


class Status(str, Enum):
    """Outcome of one cell attempt."""

    OK = "ok"
    ERROR = "error"  # the cell raised, or its worker died and retries ran out
    OOM = "oom"  # out of device memory; the worker freed memory and carried on
    TIMEOUT = "timeout"  # exceeded workers.cell_timeout_s; its worker was replaced
    SKIPPED_OOM = "skipped_oom"  # not run: dominated by a cell that ran out of memory


PARAM_KEYS = (
    "method",
    "batch_size",
    "prompt_len",
    "max_tokens",
    "temperature",
    "top_k",
    "dtype",
    "warmup",
    "repeats",
    "seed",
    "prompt",
    "profile",
    "memory_budget_bytes",
)
MODEL_KEYS = (
    "tag",
    "checkpoint",
    "step",
    "vocab_size",
    "sequence_len",
    "head_dim",
    "dtype",
    "seed",
)


def dominates(failed: dict, other: dict) -> bool:
    """Whether cell `other` needs at least the memory of cell `failed` (same model, method and
    dtype, no smaller in batch, prompt or new tokens), so it is not run once `failed` ran out of
    memory. (orchestrator/run/dispatch.py applies the same rule to queued CellSpecs.)

    >>> a = {"model": {"tag": "t"}, "method": "cached", "dtype": "float32", "batch_size": 2,
    ...      "prompt_len": 8, "max_tokens": 4}
    >>> dominates(a, {**a, "batch_size": 4}), dominates(a, {**a, "method": "naive"})
    (True, False)
    """
    return (
        failed.get("model") == other.get("model")
        and failed.get("method") == other.get("method")
        and failed.get("dtype") == other.get("dtype")
        and all(
            (other.get(k) or 0) >= (failed.get(k) or 0)
            for k in ("batch_size", "prompt_len", "max_tokens")
        )
    )


def params_of(cell: dict) -> dict:
    """The flat parameter columns of a cell dict: its params plus `model_<field>` columns.

    >>> params_of({"method": "naive", "model": {"tag": "d[2]-h[64]"}, "cell_id": "ab"})["model_tag"]
    'd[2]-h[64]'
    """
    out = {"cell_id": cell.get("cell_id")}
    out.update({k: cell.get(k) for k in PARAM_KEYS})
    model = cell.get("model") or {}
    out.update({f"model_{k}": model.get(k) for k in MODEL_KEYS})
    return out
