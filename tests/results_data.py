"""Small stored datasets for the result-side tests (query, pivot, compare, plot), written with the
store's own writer so they have exactly the columns and types a real run has."""

from __future__ import annotations

import statistics
from pathlib import Path

from orchestrator.run.store import ResultStore
from workers.record import SCHEMA_VERSION

MIB = 1024 * 1024
GRID = [(m, b, p) for b in (1, 4) for p in (32, 128) for m in ("naive", "cached")]


def decode_tok_s(method: str, batch: int, prompt: int) -> float:
    """A made-up but plausible throughput: cached gains more with longer prompts."""
    base = 100.0 * batch / (1 + prompt / 64)
    return base * (prompt / 16 if method == "cached" else 1.0)


def make_record(
    method: str,
    batch: int,
    prompt: int,
    *,
    run_id: str = "run-a",
    scale: float = 1.0,
    cv: float = 0.01,
    status: str = "ok",
    attempt: int = 1,
    minute: int = 0,
    **extra,
) -> dict:
    """One result row; `scale` multiplies decode throughput (1 / step time), `cv` is its spread."""
    tok_s = decode_tok_s(method, batch, prompt) * scale
    step_ms = 1000.0 * batch / tok_s
    steps = [step_ms * (1 + cv * (-1) ** i) for i in range(31)]
    row = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "job_name": "sweep",
        "cell_id": f"{method}-b{batch}-p{prompt}",
        "attempt": attempt,
        "status": status,
        "error": None if status == "ok" else "boom",
        "method": method,
        "batch_size": batch,
        "prompt_len": prompt,
        "max_tokens": 32,
        "temperature": 0.0,
        "top_k": None,
        "dtype": "float32",
        "warmup": 1,
        "repeats": 3,
        "seed": 42,
        "model_tag": "d[2]-h[64]",
        "model_checkpoint": "random",
        "model_seed": 0,
        "device": "cpu",
        "started_at": f"2026-01-01T00:{minute:02d}:00.000+00:00",
        "finished_at": f"2026-01-01T00:{minute:02d}:0{attempt}.000+00:00",
    }
    if status == "ok":
        row.update(
            decode_tok_s=tok_s,
            decode_tok_s_cv=cv,
            decode_step_ms=steps,
            decode_step_ms_mean=statistics.fmean(steps),
            decode_step_ms_cv=statistics.pstdev(steps) / statistics.fmean(steps),
            ttft_ms=0.05 * prompt * batch / scale,
            ttft_ms_cv=cv,
            prefill_tok_s=batch * prompt / (0.05 * prompt * batch / scale) * 1000,
            peak_rss_growth_bytes=(batch * prompt * 4096) + (2 * MIB if method == "naive" else MIB),
            kv_cache_bytes=batch * (prompt + 32) * 2048 if method == "cached" else 0,
            tokens_sha256="same",
        )
    row.update(extra)
    return row


def write_sweep(job_dir: Path, **kwargs) -> ResultStore:
    """The 8-cell GRID, all ok, after one failed first attempt of naive b=4 p=128 (9 rows)."""
    store = ResultStore(job_dir)
    store.write(make_record("naive", 4, 128, status="error", attempt=1, **kwargs))
    for method, batch, prompt in GRID:
        retried = (method, batch, prompt) == ("naive", 4, 128)
        store.write(make_record(method, batch, prompt, attempt=2 if retried else 1, **kwargs))
    return store
