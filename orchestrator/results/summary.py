"""Summary tables from result rows (plain dicts): one table per model.

Rows are (batch_size, prompt_len, max_tokens) plus any other parameter that varies; columns are
decode tokens/s per method, the cached/naive speedup, TTFT, peak memory, and whether the greedy
tokens of naive and cached matched. Only the latest attempt of each cell counts.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from tabulate import tabulate

from workers.record import Status

ROW_KEYS = ("batch_size", "prompt_len", "max_tokens")
EXTRA_KEYS = ("dtype", "temperature", "top_k")
METHOD_ORDER = ("naive", "cached", "cached_graph")
BASELINE = "naive"  # speedups and token matches are against the oracle
MIB = 1024 * 1024


def latest_rows(rows: list[dict]) -> list[dict]:
    """The most recent attempt of each cell (an ok row wins over a later failed one)."""
    best: dict[str, dict] = {}
    for row in rows:
        cid = row.get("cell_id")
        cur = best.get(cid)
        if cur is None or _rank(row) > _rank(cur):
            best[cid] = row
    return list(best.values())


def _rank(row: dict) -> tuple:
    return (
        row.get("status") == Status.OK.value,
        str(row.get("finished_at") or ""),
        row.get("attempt") or 0,
    )


def _model_label(row: dict) -> str:
    ckpt = row.get("model_checkpoint")
    if ckpt == "random":
        return f"{row.get('model_tag')} (random init, seed {row.get('model_seed')})"
    return f"{row.get('model_tag')} ({ckpt} step {row.get('model_step')})"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _peak_mib(row: dict) -> float | None:
    """Peak device memory allocated (GPU), else the process's peak RSS growth (CPU)."""
    for key in ("peak_allocated_bytes", "peak_rss_growth_bytes"):
        value = row.get(key)
        if value is not None:
            return value / MIB
    return None


def _match(by_method: dict, method: str = "cached") -> str:
    naive, cached = by_method.get(BASELINE), by_method.get(method)
    if not naive or not cached:
        return "-"
    if (naive.get("temperature") or 0) != 0:
        return "n/a (sampled)"
    a, b = naive.get("tokens_sha256"), cached.get("tokens_sha256")
    if a is None or b is None:
        return "-"
    if a == b:
        return "yes"
    pos = first_mismatch(naive.get("generated_ids"), cached.get("generated_ids"))
    return f"NO (from token {pos})" if pos is not None else "NO"


def first_mismatch(a: list | None, b: list | None) -> int | None:
    """First generated-token index where any row of two id matrices differ (None if unknown).

    >>> first_mismatch([[1, 2, 3]], [[1, 2, 4]])
    2
    """
    if not a or not b or len(a) != len(b):
        return None
    width = max(max(len(x), len(y)) for x, y in zip(a, b))
    for i in range(width):
        if any(i >= len(x) or i >= len(y) or x[i] != y[i] for x, y in zip(a, b)):
            return i
    return None


def model_tables(rows: list[dict]) -> list[tuple[str, str]]:
    """[(model label, table text)] for the ok rows."""
    ok = [r for r in latest_rows(rows) if r.get("status") == Status.OK.value]
    by_model: OrderedDict[str, list[dict]] = OrderedDict()
    for row in sorted(ok, key=lambda r: (_model_label(r), *(r.get(k) or 0 for k in ROW_KEYS))):
        by_model.setdefault(_model_label(row), []).append(row)
    out = []
    for label, model_rows in by_model.items():
        extras = [k for k in EXTRA_KEYS if len({repr(r.get(k)) for r in model_rows}) > 1]
        keys = (*ROW_KEYS, *extras)
        methods = [m for m in METHOD_ORDER if any(r.get("method") == m for r in model_rows)]
        methods += sorted({r.get("method") for r in model_rows} - set(methods))
        groups: OrderedDict[tuple, dict] = OrderedDict()
        for row in model_rows:
            groups.setdefault(tuple(row.get(k) for k in keys), {})[row.get("method")] = row
        headers = [*keys, *(f"decode tok/s {m}" for m in methods)]
        # Each cached method against the naive oracle: its speedup and whether its tokens match.
        versus = [m for m in methods if m != BASELINE] if BASELINE in methods else []
        suffix = (lambda m: "") if versus == ["cached"] else (lambda m: f" {m}")
        headers += [f"speedup{suffix(m)}" for m in versus]
        headers += [*(f"TTFT ms {m}" for m in methods), *(f"peak MiB {m}" for m in methods)]
        kv_method = next((m for m in methods if m != BASELINE), None)
        if kv_method:
            headers.append("KV MiB")
        headers += [f"tokens match{suffix(m)}" for m in versus]
        table = []
        for key, by_method in groups.items():
            line = list(key)
            line += [_fmt((by_method.get(m) or {}).get("decode_tok_s")) for m in methods]
            n = (by_method.get(BASELINE) or {}).get("decode_tok_s")
            for m in versus:
                c = (by_method.get(m) or {}).get("decode_tok_s")
                line.append(f"{c / n:.2f}x" if n and c else "-")
            line += [_fmt((by_method.get(m) or {}).get("ttft_ms"), 2) for m in methods]
            line += [_fmt(_peak_mib(by_method.get(m) or {})) for m in methods]
            if kv_method:
                kv = (by_method.get(kv_method) or {}).get("kv_cache_bytes")
                line.append(_fmt(None if kv is None else kv / MIB, 2))
            line += [_match(by_method, m) for m in versus]
            table.append(line)
        out.append(
            (label, tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
        )
    return out


def failure_table(rows: list[dict]) -> str | None:
    """A table of cells whose latest attempt did not succeed, or None."""
    failed = [r for r in latest_rows(rows) if r.get("status") != Status.OK.value]
    if not failed:
        return None
    table = [
        [
            r.get("cell_id"),
            r.get("model_tag"),
            r.get("method"),
            r.get("batch_size"),
            r.get("prompt_len"),
            r.get("max_tokens"),
            r.get("status"),
            r.get("attempt"),
            (r.get("error") or "")[:100],
        ]
        for r in failed
    ]
    headers = [
        "cell_id",
        "model",
        "method",
        "batch_size",
        "prompt_len",
        "max_tokens",
        "status",
        "attempt",
        "error",
    ]
    return tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True)


def status_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in latest_rows(rows):
        counts[row.get("status")] = counts.get(row.get("status"), 0) + 1
    return counts


def render(rows: list[dict], title: str | None = None) -> str:
    """All tables as one text block (for stdout)."""
    parts = []
    if title:
        parts.append(f"== {title} ==")
    for label, table in model_tables(rows):
        parts.append(f"\nmodel {label}\n{table}")
    failures = failure_table(rows)
    if failures:
        parts.append(f"\ncells that did not succeed\n{failures}")
    counts = status_counts(rows)
    parts.append("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " (cells)")
    return "\n".join(parts).lstrip("\n")
