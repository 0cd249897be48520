"""`plot`: the four default PNGs and a custom facet plot from a stored dataset (skipped when
matplotlib is absent), the one-line exit-2 message when it is absent, the caps on panels and
lines of a large sweep, and the columns plot reads."""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest

from orchestrator.cli import main
from orchestrator.reports import plot
from orchestrator.reports.plot import speedup_rows
from orchestrator.reports.plot_series import MAX_LINES, MAX_PANELS
from orchestrator.run.store import ResultStore
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
    printed = capsys.readouterr()
    assert set(printed.out.split()) == {str(out / n) for n in DEFAULT_PLOTS}
    assert "values shown" not in printed.err  # a small sweep is drawn whole
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
    err = capsys.readouterr().err
    assert "plot --y: unknown column 'speed'" in err and "columns: " in err
    assert len(err.strip().splitlines()) == 1
    assert main(["plot", str(tmp_path / "r"), "--x", "promt_len", "--y", "ttft_ms"]) == 2
    assert "plot --x: unknown column 'promt_len' (did you mean 'prompt_len'?)" in (
        capsys.readouterr().err
    )
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
    table = speedup_rows(pa.Table.from_pylist(rows))
    speedups = {(r["batch_size"], r["prompt_len"]): r["speedup"] for r in table.to_pylist()}
    assert speedups == pytest.approx({(1, 32): 2.0, (1, 128): 8.0, (4, 32): 2.0, (4, 128): 8.0})


def test_speedup_rows_leave_out_pairs_on_different_hardware(caplog):
    rows = [make_record(m, b, p, hostname="node-a") for m, b, p in GRID]
    rows[1] = {**rows[1], "hostname": "node-b"}  # cached b=1 p=32 ran on another node
    table = speedup_rows(pa.Table.from_pylist(rows))
    speedups = {(r["batch_size"], r["prompt_len"]) for r in table.to_pylist()}
    assert speedups == {(1, 128), (4, 32), (4, 128)}
    assert "speedup: 1 cell(s) left out: they and their naive cell ran on different hardware" in (
        caplog.text
    )


PROMPT_LENS = [16 * (i + 1) for i in range(40)]


def write_long_sweep(job_dir):
    """naive and cached at batch 1 and 2 over 40 prompt lengths (160 cells)."""
    store = ResultStore(job_dir)
    for prompt in PROMPT_LENS:
        for batch in (1, 2):
            for method in ("naive", "cached"):
                store.write(make_record(method, batch, prompt))


def record_figures(monkeypatch) -> dict:
    """{file name: (suptitle, panel titles, line labels per panel)} of every figure saved."""
    from matplotlib.figure import Figure

    saved, original = {}, Figure.savefig

    def savefig(fig, path, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        lines = [[line.get_label() for line in ax.get_lines()] for ax in axes]
        saved[path.name] = (fig._suptitle.get_text(), [ax.get_title() for ax in axes], lines)
        return original(fig, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_a_long_sweep_caps_panels_and_lines_and_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the plot extra)")
    write_long_sweep(tmp_path / "long")
    saved = record_figures(monkeypatch)
    assert main(["plot", str(tmp_path / "long")]) == 0
    note = f"prompt_len: {MAX_PANELS} of 40 values shown"
    # one panel per prompt length would be 40 panels: 12 are drawn, the first and last included
    title, panels, _ = saved["peak_memory_vs_batch_size.png"]
    assert note in title and f"peak_memory_vs_batch_size.png: {note}" in capsys.readouterr().err
    assert len(panels) == MAX_PANELS
    assert panels[0] == "prompt_len = 16" and panels[-1] == "prompt_len = 640"
    # the other default plots have a panel per batch size and a line per method: drawn whole
    assert "values shown" not in saved["decode_tok_s_vs_prompt_len.png"][0]
    assert len(saved["decode_tok_s_vs_prompt_len.png"][1]) == 2
    # a line per prompt length (and method) would be 80 lines a panel
    argv = ["plot", str(tmp_path / "long"), "--x", "batch_size", "--y", "ttft_ms",
            "--hue", "prompt_len", "--col", "method"]
    assert main(argv) == 0, capsys.readouterr().err
    title, panels, lines = saved["ttft_ms_vs_batch_size_by_prompt_len_per_method.png"]
    assert panels == ["method = cached", "method = naive"]
    assert all(len(labels) == MAX_LINES for labels in lines)
    assert lines[0][0] == "prompt_len=16" and lines[0][-1] == "prompt_len=640"
    assert f"prompt_len: {MAX_LINES} of 40 values shown" in title


def test_plot_reads_no_raw_lists(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the plot extra)")
    write_sweep(tmp_path / "sweep")
    asked = []

    def load_results(path, **kwargs):
        asked.append(kwargs.get("columns"))
        return original(path, **kwargs)

    original = plot.load_results
    monkeypatch.setattr(plot, "load_results", load_results)
    assert main(["plot", str(tmp_path / "sweep")]) == 0, capsys.readouterr().err
    argv = ["plot", str(tmp_path / "sweep"), "--x", "prompt_len", "--y", "e2e_ms"]
    main(argv)
    assert len(asked) == 2 and all(columns is not None for columns in asked)
    for columns in asked:
        assert not {"decode_step_ms", "generated_ids"} & set(columns)
    assert {"prompt_len", "decode_tok_s", "ttft_ms", "peak_bytes", "kv_cache_bytes"} <= set(
        asked[0]
    )
    assert "e2e_ms" in asked[1]
