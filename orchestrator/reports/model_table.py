"""One model's summary table, built from its ok rows (plain dicts): key columns, decode tok/s
per method, speedups over naive (only within one hardware identity), token matches, TTFT, peak
memory and KV-cache size. `orchestrator.reports.summary` groups rows by model and prints these.

    table = build("d[2,4]-h[128,256] (random init, seed 0)", rows, fetch_ids=None)
    table.columns   # layout.Column list; table.notes: lines printed under the table
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.reports.hardware import hardware_id, legend, letters
from orchestrator.reports.layout import Column

ROW_KEYS = ("batch_size", "prompt_len", "max_tokens")
EXTRA_KEYS = ("dtype", "temperature", "top_k")
# two-line names of the key columns in the terminal form ("batch" over "size")
SHORT_KEYS = {
    "batch_size": ("batch", "size"),
    "prompt_len": ("prompt", "len"),
    "max_tokens": ("max", "tokens"),
    "temperature": ("temp", ""),
}
METHOD_ORDER = ("naive", "cached", "cached_graph")
BASELINE = "naive"  # speedups and token matches are against the oracle
MIB = 1024 * 1024
MIXED = "mixed hw"
NOTE_EXAMPLES = 3  # rows named in a note before "and N more"
# cell_ids -> {cell_id: generated_ids}: fetches the ids of mismatching cells only
FetchIds = Callable[[list[str]], dict[str, Any]]


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


def tokens_differ(a: dict, b: dict) -> bool | None:
    """Whether two rows generated different ids (None when a fingerprint is missing).

    >>> tokens_differ({"tokens_sha256": "x", "n_generated": 8}, {"tokens_sha256": "x"})
    False
    """
    if a.get("tokens_sha256") is None or b.get("tokens_sha256") is None:
        return None
    na, nb = a.get("n_generated"), b.get("n_generated")
    return a["tokens_sha256"] != b["tokens_sha256"] or (None not in (na, nb) and na != nb)


def _match(naive: dict | None, other: dict | None, ids: dict[str, Any]) -> str:
    if not naive or not other:
        return "-"
    if (naive.get("temperature") or 0) != 0:
        return "n/a (sampled)"
    differ = tokens_differ(naive, other)
    if differ is None:
        return "-"
    if not differ:
        return "yes"
    pos = first_mismatch(_ids(naive, ids), _ids(other, ids))
    return f"NO (from token {pos})" if pos is not None else "NO"


def _ids(row: dict, fetched: dict[str, Any]) -> Any:
    return fetched.get(row.get("cell_id")) or row.get("generated_ids")


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


@dataclass(frozen=True, kw_only=True)
class ModelTable:
    """One model's table: its columns (key columns first) and the lines printed under it."""

    label: str
    columns: list[Column]
    hardware: str | None  # the one identity of every row, or None when rows differ
    row_hardware: list[str]  # per row: its identity, or "naive: X; cached: Y" when mixed
    notes: list[str]


def _methods(rows: list[dict]) -> list[str]:
    methods = [m for m in METHOD_ORDER if any(r.get("method") == m for r in rows)]
    return methods + sorted({str(r.get("method")) for r in rows} - set(methods))


def _mismatched_ids(groups: Iterable[dict], versus: list[str], fetch: FetchIds | None) -> dict:
    """The generated ids of the cells whose tokens differ from naive's (fetched once)."""
    if fetch is None:
        return {}
    wanted: list[str] = []
    for by_method in groups:
        naive = by_method.get(BASELINE)
        for m in versus:
            other = by_method.get(m)
            if naive and other and tokens_differ(naive, other):
                wanted += [r["cell_id"] for r in (naive, other) if not r.get("generated_ids")]
    return fetch(sorted(set(wanted))) if wanted else {}


def where_text(key: tuple, names: tuple[str, ...]) -> str:
    short = {"batch_size": "b", "prompt_len": "p", "max_tokens": "n"}
    return " ".join(f"{short.get(n, n)}={v}" for n, v in zip(names, key))


@dataclass
class _Groups:
    """One model's rows grouped by their key columns: {key: {method: row}}, and hardware."""

    keys: tuple[str, ...]
    groups: OrderedDict[tuple, dict]
    methods: list[str]
    hw: dict[int, str]  # id(row) -> hardware_id(row)
    names: dict[str, str]  # hardware_id -> letter

    def column(self, method: str, get: Callable[[dict], Any]) -> list:
        return [None if g.get(method) is None else get(g[method]) for g in self.groups.values()]

    def versus(self) -> list[str]:
        """The methods compared with the naive oracle (none when naive did not run)."""
        return [m for m in self.methods if m != BASELINE] if BASELINE in self.methods else []


def _key_columns(t: _Groups) -> list[Column]:
    cols = []
    for i, k in enumerate(t.keys):
        top, bottom = SHORT_KEYS.get(k, (k, ""))
        vals = [key[i] for key in t.groups]
        cols.append(
            Column(
                group=top,
                name=bottom,
                wide=k,
                values=[_fmt_key(v) for v in vals],
                raw=vals,
                key=True,
            )
        )
    if len(t.names) > 1:  # the hardware of each row, as letters (a legend follows the table)
        per_row = [
            "/".join(dict.fromkeys(t.names[t.hw[id(g[m])]] for m in t.methods if m in g))
            for g in t.groups.values()
        ]
        cols.append(Column(group="hw", name="", wide="hw", values=per_row, key=True, align="left"))
    return cols


def _metric_columns(t: _Groups, group: str, get: Callable[[dict], Any], digits: int) -> list:
    cols = []
    for m in t.methods:
        vals = t.column(m, get)
        cols.append(
            Column(
                group=group,
                name=m,
                wide=f"{group} {m}",
                values=[_fmt(v, digits) for v in vals],
                raw=vals,
            )
        )
    return cols


def _speedup(t: _Groups, method: str, single: bool) -> tuple[Column, str | None]:
    """The speedup column of `method` over naive, and a note naming the mixed-hardware rows."""
    texts, raw, mixed = [], [], []
    for key, g in t.groups.items():
        n, c = g.get(BASELINE), g.get(method)
        if n and c and t.hw[id(n)] != t.hw[id(c)]:
            texts.append(MIXED)
            raw.append(None)
            where = where_text(key, t.keys)
            mixed.append(
                f"{where} ({BASELINE} on {t.names[t.hw[id(n)]]}, "
                f"{method} on {t.names[t.hw[id(c)]]})"
            )
            continue
        a, b = (n or {}).get("decode_tok_s"), (c or {}).get("decode_tok_s")
        ratio = b / a if a and b else None
        texts.append("-" if ratio is None else f"{ratio:.2f}x")
        raw.append(None if ratio is None else round(ratio, 4))
    if single:
        col = Column(group="", name="speedup", wide="speedup", values=texts, raw=raw)
    else:
        col = Column(
            group="speedup vs naive", name=method, wide=f"speedup {method}", values=texts, raw=raw
        )
    note = None
    if mixed:
        more = f" and {len(mixed) - NOTE_EXAMPLES} more" if len(mixed) > NOTE_EXAMPLES else ""
        note = (
            f"{MIXED}: no {method} speedup where the two methods ran on different "
            f"hardware: {'; '.join(mixed[:NOTE_EXAMPLES])}{more}"
        )
    return col, note


def build(label: str, rows: list[dict], fetch: FetchIds | None) -> ModelTable:
    extras = [k for k in EXTRA_KEYS if len({repr(r.get(k)) for r in rows}) > 1]
    keys = (*ROW_KEYS, *extras)
    groups: OrderedDict[tuple, dict] = OrderedDict()
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), {})[row.get("method")] = row
    hw = {id(r): hardware_id(r) for r in rows}
    t = _Groups(keys, groups, _methods(rows), hw, letters(hw[id(r)] for r in rows))
    versus = t.versus()
    single = versus == ["cached"]  # one method against naive: plain "speedup", "tokens match"
    ids = _mismatched_ids(groups.values(), versus, fetch)
    cols = [*_key_columns(t), *_metric_columns(t, "decode tok/s", _get("decode_tok_s"), 1)]
    notes = []
    for m in versus:
        col, note = _speedup(t, m, single)
        cols.append(col)
        notes += [note] if note else []
    for m in versus:
        texts = [_match(g.get(BASELINE), g.get(m), ids) for g in groups.values()]
        group, name = ("tokens", "match") if single else ("tokens match", m)
        wide = "tokens match" if single else f"tokens match {m}"
        cols.append(Column(group=group, name=name, wide=wide, values=texts, align="left"))
    cols += _metric_columns(t, "TTFT ms", _get("ttft_ms"), 2)
    cols += _metric_columns(t, "peak MiB", _peak_mib, 1)
    kv_method = next((m for m in t.methods if m != BASELINE), None)
    if kv_method:
        vals = t.column(kv_method, _get("kv_cache_bytes", MIB))
        cols.append(
            Column(
                group="KV", name="MiB", wide="KV MiB", values=[_fmt(v, 2) for v in vals], raw=vals
            )
        )
    if len(t.names) > 1:
        notes += legend(t.names)
    only = next(iter(t.names)) if len(t.names) == 1 else None
    return ModelTable(
        label=label, columns=cols, hardware=only, row_hardware=_row_hardware(t), notes=notes
    )


def _row_hardware(t: _Groups) -> list[str]:
    out = []
    for g in t.groups.values():
        ids = {m: t.hw[id(g[m])] for m in t.methods if m in g}
        distinct = set(ids.values())
        out.append(
            distinct.pop() if len(distinct) == 1 else "; ".join(f"{m}: {h}" for m, h in ids.items())
        )
    return out


def _get(field: str, scale: float = 1.0) -> Callable[[dict], Any]:
    def get(row: dict) -> Any:
        value = row.get(field)
        return None if value is None else value / scale if scale != 1.0 else value

    return get


def _fmt_key(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
