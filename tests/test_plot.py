"""`plot`: the four default PNGs and a custom facet plot from a stored dataset (skipped when
matplotlib is absent), and the one-line exit-2 message when it is absent."""

from __future__ import annotations

import sys

import pytest

from orchestrator.cli import main
from orchestrator.reports.plot import speedup_rows
from tests.results_data import GRID, make_record, write_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_PLOTS = {
    "decode_tok_s_vs_prompt_len.png",
    "speedup_vs_prompt_len.png",
    "ttft_vs_prompt_len.png",
    "peak_memory_vs_batch_size.png",
}


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_default_plots_are_written(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the plot extra)")
    job = tmp_path / "results" / "sweep"
    write_sweep(job)
    assert main(["plot", str(job)]) == 0, capsys.readouterr().err
    out = tmp_path / "results" / "sweep" / "_plots"
    assert {p.name for p in out.iterdir()} == DEFAULT_PLOTS
    for path in out.iterdir():
        assert_png(path)
    assert set(capsys.readouterr().out.split()) == {str(out / n) for n in DEFAULT_PLOTS}
    # the plots do not disturb plain pyarrow reading of the dataset
    import pyarrow.dataset as ds

    assert ds.dataset(job, format="parquet").to_table().num_rows == 9


def test_custom_facets_and_out_dir(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the plot extra)")
    write_sweep(tmp_path / "r" / "sweep")
    argv = ["plot", str(tmp_path / "r"), "--out", str(tmp_path / "png"), "--x", "batch_size",
            "--y", "e2e_ms", "--hue", "method", "--col", "prompt_len", "--logx"]
    assert main(argv) == 2  # no e2e_ms values in this dataset
    assert "no rows with both batch_size and e2e_ms" in capsys.readouterr().err
    argv[argv.index("e2e_ms")] = "decode_tok_s"
    assert main(argv) == 0, capsys.readouterr().err
    path = tmp_path / "png" / "decode_tok_s_vs_batch_size_by_method_per_prompt_len.png"
    assert_png(path)
    assert main(["plot", str(tmp_path / "r"), "--x", "prompt_len", "--y", "speed"]) == 2
    assert "unknown column 'speed'" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "r"), "--x", "prompt_len"]) == 2
    assert "needs both --x and --y" in capsys.readouterr().err


def test_missing_matplotlib_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    write_sweep(tmp_path / "sweep")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["plot", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: plotting needs matplotlib: pip install 'unet-bench[plot]' "
                   "(or pip install matplotlib)")
    assert not (tmp_path / "sweep" / "_plots").exists()
    # submit --plot refuses before running anything
    spec = tmp_path / "job.yaml"
    spec.write_text("name: job\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n")
    assert main(["submit", str(spec), "--results", str(tmp_path / "r"), "--plot"]) == 2
    assert "plotting needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_speedup_rows_pair_cells_on_every_other_parameter():
    rows = [make_record(m, b, p) for m, b, p in GRID]
    rows.append(make_record("naive", 8, 32))  # no cached partner
    speedups = {(r["batch_size"], r["prompt_len"]): r["speedup"] for r in speedup_rows(rows)}
    assert speedups == pytest.approx({(1, 32): 2.0, (1, 128): 8.0, (4, 32): 2.0, (4, 128): 8.0})


def test_speedup_rows_leave_out_pairs_on_different_hardware(caplog):
    rows = [make_record(m, b, p, hostname="node-a") for m, b, p in GRID]
    rows[1] = {**rows[1], "hostname": "node-b"}  # cached b=1 p=32 ran on another node
    speedups = {(r["batch_size"], r["prompt_len"]) for r in speedup_rows(rows)}
    assert speedups == {(1, 128), (4, 32), (4, 128)}
    assert "speedup: 1 cell(s) left out: they and their naive cell ran on different hardware" in (
        caplog.text
    )
