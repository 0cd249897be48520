"""`compare`: cells matched by parameters, ratios, and flags only where a change exceeds the
runs' own measured spread (a planted 2x change is flagged, a 1% change inside the spread is not)."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main
from orchestrator.reports.compare import Side, compare, is_flagged
from orchestrator.run.store import ResultStore
from tests.results_data import GRID, make_record

PLANTED = ("cached", 4, 128)  # the cell made 2x faster in run B


def write_run(job_dir, run_id, *, planted=2.0, others=1.01, cv=0.05, **extra):
    store = ResultStore(job_dir)
    for method, batch, prompt in GRID:
        scale = planted if (method, batch, prompt) == PLANTED else others
        store.write(make_record(method, batch, prompt, run_id=run_id, scale=scale, cv=cv, **extra))
    return store


@pytest.fixture()
def two_dirs(tmp_path):
    write_run(tmp_path / "a" / "sweep", "run-a", planted=1.0, others=1.0)
    write_run(tmp_path / "b" / "sweep", "run-b")
    return tmp_path / "a" / "sweep", tmp_path / "b" / "sweep"


def lines_of(capsys, *argv, code=0) -> list[dict]:
    assert main(["compare", *map(str, argv), "--format", "json"]) == code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_planted_2x_is_flagged_and_1_percent_is_not(two_dirs, capsys):
    lines = lines_of(capsys, *two_dirs)
    decode = [line for line in lines if line["metric"] == "decode_tok_s"]
    assert len(decode) == 8  # every cell matched
    flagged = {(x["method"], x["batch_size"], x["prompt_len"]) for x in decode if x["change"]}
    assert flagged == {PLANTED}
    planted = next(x for x in decode if (x["method"], x["batch_size"], x["prompt_len"]) == PLANTED)
    assert planted["B/A"] == pytest.approx(2.0) and planted["change"] == "better"
    others = [x for x in decode if x is not planted]
    assert all(x["B/A"] == pytest.approx(1.01) for x in others)
    assert all(x["noise ±%"] > 1 for x in others)  # the 1% change is inside the noise band
    ttft = next(x for x in lines if x["metric"] == "ttft_ms" and x["change"])
    assert ttft["change"] == "better" and ttft["B/A"] == pytest.approx(0.5)  # lower is better
    memory = [x for x in lines if x["metric"] == "peak_bytes"]
    assert memory and not any(x["change"] for x in memory)
    assert all(x["noise ±%"] is None for x in memory)  # CPU RSS growth: a lower bound
    # the summary line goes to stderr
    main(["compare", *map(str, two_dirs)])
    err = capsys.readouterr().err
    assert "8 cells matched (0 only in A, 0 only in B)" in err
    assert "changes beyond the spread" in err


def test_flag_depends_on_the_measured_spread(tmp_path):
    """The same 10% change: flagged when the runs are tight, not when they are noisy."""
    results = {}
    for cv in (0.005, 0.2):
        a = [make_record(m, b, p, scale=1.0, cv=cv) for m, b, p in GRID]
        b = [make_record(m, b, p, scale=1.1, cv=cv, run_id="run-b") for m, b, p in GRID]
        result = compare(Side("a", a), Side("b", b), metrics=("decode_tok_s",))
        results[cv] = {line["change"] for line in result.lines}
    assert results[0.005] == {"better"}
    assert results[0.2] == {""}
    assert is_flagged(100.0, 103.0, 0.1, 0.1) and not is_flagged(100.0, 101.0, 0.1, 0.1)


def test_two_run_ids_in_one_results_dir(tmp_path, capsys):
    job = tmp_path / "results" / "sweep"
    write_run(job, "20260101T000000-aaaaaa", planted=1.0, others=1.0)
    write_run(job, "20260102T000000-bbbbbb", minute=5)
    argv = ["20260101", "20260102", "--results", job, "--only-changed"]
    lines = lines_of(capsys, *argv, "--fail-on-change", code=1)
    assert {(x["method"], x["batch_size"], x["prompt_len"]) for x in lines} == {PLANTED}
    assert lines_of(capsys, *argv)  # without --fail-on-change: exit 0
    assert lines_of(capsys, "previous", "latest", *argv[2:]) == lines
    # a results root works as --results too; an unknown or ambiguous id lists the runs
    assert main(["compare", "2026", "20260102", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "2026 is ambiguous" in err and "20260101T000000-aaaaaa" in err
    assert main(["compare", "nope", "20260102", "--results", str(job)]) == 2
    assert "nope is not a directory nor a run id" in capsys.readouterr().err


def test_parameters_constant_in_each_run_are_compared_not_matched(tmp_path, capsys):
    write_run(tmp_path / "a" / "sweep", "run-a", planted=1.0, others=1.0)
    write_run(tmp_path / "b" / "sweep", "run-b", model_seed=1)  # another model, same grid
    assert main(["compare", str(tmp_path / "a" / "sweep"), str(tmp_path / "b" / "sweep")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("differs between A and B: model_seed (0 vs 1)")
    assert "better" in out


def test_bad_metric_exits_2(two_dirs, capsys):
    assert main(["compare", *map(str, two_dirs), "--metrics", "speed"]) == 2
    assert "--metrics 'speed': expected some of decode_tok_s" in capsys.readouterr().err


def test_cpu_peak_memory_is_shown_never_flagged_gpu_memory_is():
    """RSS growth on a CPU is a lower bound: a 3x change is shown, not flagged; on a GPU the
    same change of peak allocated bytes is flagged against the 2% floor."""
    a = [make_record(m, b, p) for m, b, p in GRID]
    b = [
        {**r, "run_id": "run-b", "peak_rss_growth_bytes": 3 * r["peak_rss_growth_bytes"]} for r in a
    ]
    rows_a = [{**r, "peak_bytes": r["peak_rss_growth_bytes"]} for r in a]
    rows_b = [{**r, "peak_bytes": r["peak_rss_growth_bytes"]} for r in b]
    cpu = compare(Side("a", rows_a), Side("b", rows_b), metrics=("peak_bytes",))
    assert all(line["B/A"] == pytest.approx(3.0) for line in cpu.lines)
    assert not cpu.flagged and all(line["noise ±%"] is None for line in cpu.lines)
    gpu = {"device": "cuda:0", "gpu_name": "NVIDIA H100", "peak_rss_growth_bytes": None}
    ga = [{**r, **gpu, "peak_allocated_bytes": r["peak_bytes"]} for r in rows_a]
    gb = [{**r, **gpu, "peak_allocated_bytes": r["peak_bytes"]} for r in rows_b]
    on_gpu = compare(Side("a", ga), Side("b", gb), metrics=("peak_bytes",))
    assert len(on_gpu.flagged) == len(GRID) and {x["change"] for x in on_gpu.lines} == {"worse"}
    assert all(line["noise ±%"] == 2.0 for line in on_gpu.lines)


def test_runs_on_other_hardware_are_shown_without_ratios(tmp_path, capsys):
    """Run B ran on another machine: every line shows A and B, none a ratio or a flag."""
    write_run(tmp_path / "a" / "sweep", "run-a", planted=1.0, others=1.0, hostname="node-a")
    write_run(tmp_path / "b" / "sweep", "run-b", hostname="node-b", cpu_model="Intel Xeon")
    dirs = (tmp_path / "a" / "sweep", tmp_path / "b" / "sweep")
    lines = lines_of(capsys, *dirs)
    assert lines and all(x["B/A"] is None and x["change"] == "other hw" for x in lines)
    assert all(x["A"] is not None and x["B"] is not None for x in lines)
    assert main(["compare", *map(str, dirs), "--fail-on-change"]) == 0  # nothing flagged
    captured = capsys.readouterr()
    assert (
        "hardware differs between A and B for 8 cells (e.g. A on cpu @ node-a, B on cpu "
        "Intel Xeon @ node-b): shown without ratios" in captured.out
    )
    assert "8 cells ran on other hardware in B and were not compared" in captured.err
    assert "--any-hardware" in captured.err
    anyway = lines_of(capsys, *dirs, "--any-hardware")
    assert {x["change"] for x in anyway if x["metric"] == "decode_tok_s"} == {"", "better"}


def test_compare_reads_only_what_it_compares():
    from orchestrator.reports.compare import needed_columns

    cols = needed_columns(("decode_tok_s",), on=("prompt",))
    assert "generated_ids" not in cols and "prompt" in cols and "decode_step_ms" in cols
    assert {"hostname", "cpu_model", "node_ip", "gpu_name", "accelerator_model"} <= set(cols)


def test_a_side_holds_step_counts_not_step_lists(two_dirs):
    """The spread needs only how many decode steps a row has: a side keeps that count, not the
    raw list (100k rows of step lists as Python floats took gigabytes), with the same spread."""
    from orchestrator.reports.compare import (
        STEP_COUNT,
        needed_columns,
        relative_spread,
        resolve_side,
    )

    side = resolve_side(str(two_dirs[0]), None, needed_columns())
    row = side.rows[0]
    assert "decode_step_ms" not in row and row[STEP_COUNT] == 31
    as_list = {k: v for k, v in row.items() if k != STEP_COUNT} | {"decode_step_ms": [1.0] * 31}
    assert relative_spread(row, "decode") == relative_spread(as_list, "decode") > 0
