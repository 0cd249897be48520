"""Summary tables: they fit an 80-column terminal (the wide form behind --wide and --format),
a speedup is never computed across two hardware identities, a summary mixing runs says so, and
token matches are decided from fingerprints (ids fetched only for mismatching cells).

Rows are written by the store's own writer and read back by `python -m orchestrator summarize`
in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.reports import summary
from orchestrator.run.store import ResultStore
from tests.results_data import GRID, decode_tok_s, make_record

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("naive", "cached", "cached_graph")


def summarize(*args, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "summarize", *map(str, args)],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def widest(text: str) -> int:
    """The longest line, apart from the title (it holds the results path)."""
    return max(len(line) for line in text.splitlines() if not line.startswith("== "))


def write_three_methods(job_dir: Path, **extra) -> ResultStore:
    """The GRID with cached_graph too (three methods: the widest table a job makes)."""
    store = ResultStore(job_dir)
    for method in METHODS:
        for batch in (1, 4, 8):
            for prompt in (32, 128):
                base = "cached" if method == "cached_graph" else method
                row = make_record(base, batch, prompt, **extra)
                row.update(method=method, cell_id=f"{method}-b{batch}-p{prompt}")
                store.write(row)
    return store


def test_fits_80_columns_and_wide_keeps_every_column(tmp_path):
    job = tmp_path / "sweep"
    write_three_methods(job)
    narrow = summarize(job)
    assert narrow.returncode == 0, narrow.stderr
    assert widest(narrow.stdout) <= 80, narrow.stdout
    for text in ("decode tok/s", "speedup vs naive", "tokens match", "TTFT ms", "peak MiB"):
        assert text in narrow.stdout
    assert "cached_graph" in narrow.stdout and "18 ok (cells)" in narrow.stdout
    wide = summarize(job, "--wide")
    assert wide.returncode == 0, wide.stderr
    header = next(line for line in wide.stdout.splitlines() if line.startswith("batch_size"))
    assert len(header) > 200  # one line per row, every column
    for name in ("decode tok/s cached_graph", "speedup cached_graph", "tokens match cached"):
        assert name in header
    # every number of the wide form is in the narrow form too (only the layout differs)
    numbers = {w for line in wide.stdout.splitlines()[5:] for w in line.split() if w[0].isdigit()}
    assert numbers <= set(narrow.stdout.split())
    # a narrower terminal gives more blocks, never a longer line
    tight = summarize(job, columns=60)
    assert widest(tight.stdout) <= 60, tight.stdout
    assert tight.stdout.count("-----  ------  ------") > narrow.stdout.count(
        "-----  ------  ------"
    )


def test_format_outputs_are_complete(tmp_path):
    job = tmp_path / "sweep"
    write_three_methods(job)
    out = summarize(job, "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 6
    first = rows[0]
    assert first["hardware"] == "cpu"
    assert first["speedup cached"] == first["speedup cached_graph"] > 1
    assert {"decode tok/s naive", "TTFT ms cached_graph", "KV MiB"} <= set(first)
    csv = summarize(job, "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("job,model,hardware,batch_size,prompt_len")
    assert len(csv.stdout.splitlines()) == 7


def test_a_cross_hardware_pair_never_prints_a_speedup(tmp_path):
    """naive of one cell ran on node A, cached on node B (another CPU model): no ratio."""
    job = tmp_path / "sweep"
    store = ResultStore(job)
    host_a = {"hostname": "node-a", "cpu_model": "AMD EPYC 7B13"}
    host_b = {"hostname": "node-b", "cpu_model": "Intel Xeon 8480"}
    for method, batch, prompt in GRID:
        where = host_b if (method, batch, prompt) == ("cached", 4, 128) else host_a
        store.write(make_record(method, batch, prompt, **where))
    out = summarize(job)
    assert out.returncode == 0, out.stderr
    table = [line.split() for line in out.stdout.splitlines()]
    mixed = next(w for w in table if w[:2] == ["4", "128"])
    same = next(w for w in table if w[:2] == ["4", "32"])
    assert "mixed" in mixed and not any(w.endswith("x") for w in mixed)
    assert any(w.endswith("x") for w in same)  # same hardware: the ratio is there
    assert "A/B" in mixed  # the hw column names both
    flat = " ".join(out.stdout.split())  # notes are folded to the terminal's width
    assert (
        "mixed hw: no cached speedup where the two methods ran on different hardware: "
        "b=4 p=128 n=32 (naive on A, cached on B)"
    ) in flat
    assert "hardware A: cpu AMD EPYC 7B13 @ node-a" in out.stdout
    assert "hardware B: cpu Intel Xeon 8480 @ node-b" in out.stdout
    wide = summarize(job, "--wide")
    assert "mixed hw" in wide.stdout and "b=4 p=128 n=32 (naive on A" in wide.stdout
    rows = json.loads(summarize(job, "--format", "json").stdout)
    row = next(r for r in rows if (r["batch_size"], r["prompt_len"]) == (4, 128))
    assert row["speedup"] is None
    assert (
        row["hardware"] == "naive: cpu AMD EPYC 7B13 @ node-a; cached: cpu Intel Xeon 8480 @ node-b"
    )


def test_identity_falls_back_for_rows_without_the_new_columns(tmp_path):
    """Rows written before cpu_model/node columns existed: gpu_name and hostname decide."""
    gpu = {"device": "cuda:0", "gpu_name": "NVIDIA H100 80GB HBM3", "hostname": "box"}
    rows = [make_record(m, b, p, **gpu) for m, b, p in GRID]
    rows[1] = {**rows[1], "gpu_name": "NVIDIA A100-SXM4-40GB"}  # cached b=1 p=32 on another GPU
    text = " ".join(summary.render(rows, width=80).split())
    assert "hardware A: cuda NVIDIA H100 80GB HBM3 @ box" in text
    assert "b=1 p=32 n=32 (naive on A, cached on B)" in text
    bare = [{k: v for k, v in make_record(m, b, p).items() if k != "device"} for m, b, p in GRID]
    text = summary.render(bare, width=80)
    assert "mixed" not in text and re.search(r" \d+\.\d\dx ", text) and "\non " not in text


def test_a_summary_mixing_runs_says_so(tmp_path):
    job = tmp_path / "sweep"
    store = ResultStore(job)
    for method, batch, prompt in GRID:
        store.write(make_record(method, batch, prompt, run_id="20260101T000000-old"))
    for method, batch, prompt in GRID[:3]:  # an interrupted --fresh: 3 cells measured again
        store.write(make_record(method, batch, prompt, run_id="20260102T000000-new", minute=5))
    out = summarize(job)
    assert out.returncode == 0, out.stderr
    assert (
        "note: these cells come from 2 runs: 20260101T000000-old (5 cells), "
        "20260102T000000-new (3 cells)"
    ) in " ".join(out.stdout.split())
    one_run = summarize(tmp_path / "sweep", "--wide")  # still mixed: the note stays
    assert "come from 2 runs" in one_run.stdout
    json_out = summarize(job, "--format", "json")
    assert "come from 2 runs" in json_out.stderr and json.loads(json_out.stdout)


def test_token_match_from_fingerprints_ids_fetched_only_for_mismatches():
    rows = [make_record(m, b, p, tokens_sha256="same", n_generated=32) for m, b, p in GRID]
    bad = next(
        r for r in rows if (r["method"], r["batch_size"], r["prompt_len"]) == ("cached", 4, 32)
    )
    bad["tokens_sha256"] = "other"
    asked: list[list[str]] = []

    def fetch(cell_ids):
        asked.append(cell_ids)
        return {
            cid: [[1, 2, 3, 4]] if cid.startswith("naive") else [[1, 2, 9, 4]] for cid in cell_ids
        }

    text = summary.render(rows, width=200, fetch_ids=fetch)
    assert asked == [["cached-b4-p32", "naive-b4-p32"]]  # only the mismatching pair
    assert "NO (from token 2)" in text and text.count("yes") == 3
    # without a fetcher, ids in the rows are used; without ids, a plain NO
    assert "NO (from token 2)" not in summary.render(rows, width=200)
    bad["generated_ids"] = [[1, 2, 9, 4]]
    next(r for r in rows if r["cell_id"] == "naive-b4-p32")["generated_ids"] = [[1, 2, 3, 4]]
    assert "NO (from token 2)" in summary.render(rows, width=200)
    # same fingerprint but another length is a mismatch too
    bad.update(tokens_sha256="same", n_generated=31)
    assert "NO" in summary.render(rows, width=200)


def test_failure_table_fits_the_width():
    rows = [make_record("naive", 1, 32, status="error", error="worker died: " + "x" * 300)]
    text = summary.render(rows, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "naive-b1-p32  naive b=1 p=32 n=32  error (attempt 1)\n    worker died: xxx" in text
    assert "xxx...\n" in text and "1 error (cells)" in text
    wide = summary.render(rows, wide=True)
    assert "worker died: xxx" in wide and "cell_id" in wide and "x" * 101 not in wide


def test_pivot_ratio_only_within_one_hardware(tmp_path):
    job = tmp_path / "sweep"
    store = ResultStore(job)
    for method, batch, prompt in GRID:
        host = "node-b" if (method, batch, prompt) == ("cached", 4, 128) else "node-a"
        store.write(make_record(method, batch, prompt, hostname=host))
    args = ("--pivot", "batch_size,prompt_len", "--columns", "method", "--ratio", "cached/naive")
    out = summarize(job, *args, "--format", "json")
    assert out.returncode == 0, out.stderr
    ratios = {(r["batch_size"], r["prompt_len"]): r["cached/naive"] for r in json.loads(out.stdout)}
    assert ratios[(4, 128)] is None and all(v > 1 for k, v in ratios.items() if k != (4, 128))
    assert "mixed hw: 1 ratio(s) left empty" in out.stderr
    assert "batch_size=4 prompt_len=128 (cached on cpu @ node-b; naive on cpu @ node-a)" in (
        out.stderr
    )
    table = summarize(job, *args)
    assert "mixed hw: 1 ratio(s) left empty" in table.stdout


def test_layout_splits_a_group_too_wide_for_one_block_and_repeats_the_keys():
    from orchestrator.reports.layout import Column, fit

    keys = [Column(group="batch", name="size", values=["1", "8"], key=True)]
    wide = [
        Column(group="decode tok/s", name=f"method{i}", values=["1,234.5", "9.0"]) for i in range(8)
    ]
    text = fit([*keys, *wide], width=40)
    blocks = text.split("\n\n")
    assert len(blocks) > 2 and all(b.splitlines()[1].lstrip().startswith("size") for b in blocks)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert all(f"method{i}" in text for i in range(8))  # nothing cut
    assert text.count("1,234.5") == 8


def test_hardware_identity_and_its_fallbacks():
    from orchestrator.reports.hardware import hardware_id

    new = {
        "device": "cuda:1",
        "accelerator_model": "NVIDIA H100",
        "gpu_name": "x",
        "cpu_model": "AMD",
        "node_ip": "10.0.0.5",
        "hostname": "n1",
    }
    assert hardware_id(new) == "cuda NVIDIA H100 @ 10.0.0.5"
    assert hardware_id({"device": "cuda:0", "gpu_name": "NVIDIA H100", "hostname": "n1"}) == (
        "cuda NVIDIA H100 @ n1"
    )
    assert hardware_id({"device": "cpu", "cpu_model": "AMD", "node_ip": "10.0.0.5"}) == (
        "cpu AMD @ 10.0.0.5"
    )
    assert hardware_id({"hostname": "n1"}) == "@ n1" and hardware_id({}) == "?"


def test_a_results_root_in_a_machine_format_is_one_document(tmp_path):
    write_three_methods(tmp_path / "sweep")
    store = ResultStore(tmp_path / "other")
    for method, batch, prompt in GRID:
        store.write(make_record(method, batch, prompt, job_name="other"))
    rows = json.loads(summarize(tmp_path, "--format", "json").stdout)
    assert {r["job"] for r in rows} == {"sweep", "other"} and len(rows) == 6 + 4
    text = summarize(tmp_path)
    assert text.stdout.count("model d[2]-h[64]") == 2 and "\n\n== " in text.stdout


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=64)),
        max_size=40,
    ),
    digits=st.integers(min_value=0, max_value=4),
)
def test_table_numbers_are_exactly_pythons_formatting(values, digits):
    """The Arrow formatting of table numbers (a decimal cast, thousands separators) writes
    what f"{v:,.{digits}f}" writes, for any float, ties, -0.0, NaN and huge values included."""
    from orchestrator.reports.numbers import fixed

    ties = [0.15, 2.675, 1.125, -0.0, -0.04, 999.95, 1e16 + 0.5, 123456789.125]
    values = values + ties
    want = ["-" if v is None else f"{v:,.{digits}f}" for v in values]
    assert fixed(values, digits) == want


def test_a_summary_of_an_arrow_table_equals_that_of_its_rows_as_dicts():
    """summary_rows gives an Arrow table; callers may pass dicts: one summary either way, with
    the latest attempt of a retried cell and an ok row winning over a later failure."""
    import pyarrow as pa

    rows = [make_record(m, b, p) for m, b, p in GRID]
    rows.append(make_record("cached", 1, 32, status="error", attempt=2, minute=9))
    rows.append(make_record("naive", 4, 32, attempt=2, minute=9, scale=2.0))
    as_dicts = summary.render(rows, width=100)
    assert summary.render(pa.Table.from_pylist(rows), width=100) == as_dicts
    line = next(x for x in as_dicts.splitlines() if x.split()[:2] == ["4", "32"])
    assert line.split()[3] == f"{decode_tok_s('naive', 4, 32) * 2:,.1f}"  # attempt 2 counts
    assert "8 ok (cells)" in as_dicts and "error" not in as_dicts
