"""Hostile specs and overrides (issue 15, categories 1-3): every refused input exits 2 with one
line naming the file and line (or the --set) and the field, no traceback, no results directory,
and bounded memory, however the input is built. A representative case per category runs the
real CLI in a subprocess (with its peak RSS read from the kernel); the rest run in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec import fits, memory
from orchestrator.spec.job import load_job_spec, parse_job_spec
from orchestrator.spec.source import MAX_SPEC_BYTES, Document

ROOT = Path(__file__).resolve().parents[1]
MODEL = "model: {tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 64, head_dim: 32}\n"
VALID = "name: tiny\n" + MODEL + "grid: {batch_size: [1, 2], prompt_len: [8], max_tokens: [4]}\n"
MAX_CHILD_RSS_KB = 400 * 1024  # "a few hundred MB", whatever the input


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A few hundred bytes that expand to width**levels nodes."""
    lines = ["  a0: &a0 [" + ", ".join(["1"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return VALID + "anchors:\n" + "\n".join(lines) + "\n"


# A small launcher runs the CLI and reports its peak RSS: a child forked straight from the (large)
# test process would inherit the test's RSS high-water mark in ru_maxrss.
LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
    "_, status, usage = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS of the CLI process in KB) of `python -m orchestrator ...`."""
    err, rss = tmp_path / "stderr.txt", tmp_path / "rss.txt"
    with open(err, "wb") as f:
        code = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(rss), sys.executable, "-m", "orchestrator", *argv],
            check=False, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f, timeout=300,
        ).returncode
    return code, err.read_text(), int(rss.read_text())


def assert_refused(code: int, err: str, results: Path, starts: str, *fragments: str) -> None:
    err = err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(starts), err
    for fragment in fragments:
        assert fragment in err, err
    assert not results.exists()


# --- the real CLI, one representative case per category -----------------------------------------
@pytest.mark.parametrize("case", ["alias_bomb", "device_file", "deep_set", "huge_batch", "dup_key"])
def test_cli_refuses_hostile_input_in_one_line(tmp_path, case):
    spec = tmp_path / "job.yaml"
    spec.write_text(VALID)
    results = tmp_path / "results"
    argv = ["submit", str(spec), "--results", str(results)]
    if case == "alias_bomb":
        spec.write_text(alias_bomb())
        starts, fragments = f"{spec}:", ["anchors.a", "expands to more than 100000 YAML nodes"]
    elif case == "device_file":
        argv[1] = "/dev/zero"
        starts, fragments = "/dev/zero: ", ["not a regular file"]
    elif case == "deep_set":
        argv += ["--set", "grid.batch_size=" + "[" * 50_000 + "1" + "]" * 50_000]
        starts, fragments = "--set grid.batch_size=[[[", ["nest"]  # ours or libyaml's limit
    elif case == "huge_batch":
        argv += ["--set", "grid.batch_size=[1, 1000000000]"]
        starts = "--set grid.batch_size=[1, 1000000000]: grid.batch_size[1]: "
        fragments = ["cell 'd[2,2]-h[64,128] naive b=1000000000 p=8 n=4' needs an estimated",
                     "TB of host memory", "but this machine has"]
    else:
        spec.write_text(VALID + "grid: {batch_size: [4]}\n")
        starts, fragments = f"{spec}:4: grid: ", ["duplicate key 'grid' (first given at line 3)"]
    code, err, rss_kb = run_cli(tmp_path, *argv)
    assert_refused(code, err, results, starts, *fragments)
    assert rss_kb < MAX_CHILD_RSS_KB, f"peak RSS {rss_kb} KB"


def test_cli_refuses_a_cell_too_big_for_this_machine(tmp_path, monkeypatch):
    """Without --dry-run, a local run on CPU workers compares every cell with the host's RAM."""
    if memory.local_gpus_visible():
        pytest.skip("local workers get GPUs here: the device's own OOM handling applies")
    spec = tmp_path / "job.yaml"
    spec.write_text(VALID)
    results = tmp_path / "results"
    code, err, _ = run_cli(tmp_path, "submit", str(spec), "--results", str(results),
                           "--set", "grid.batch_size=[2000000]")
    assert_refused(code, err, results, "--set grid.batch_size=[2000000]: grid.batch_size[0]: ",
                   "cell 'd[2,2]-h[64,128] naive b=2000000 p=8 n=4' needs an estimated",
                   "(weights 2.2 MB + KV cache 0 B + activations", "a CPU worker here has")


# --- in-process: the rest of each category ------------------------------------------------------
HOSTILE = [
    # 1. input that costs before it is checked
    (alias_bomb(), [], ":", "expands to more than 100000 YAML nodes"),
    (VALID + "x: [" + ", ".join(["1"] * 30_000) + "]\n", [], ":4", "more than 20000 YAML values"),
    (VALID + "loop: &a [*a]\n", [], ":4", "nested deeper than 64 levels (an alias inside itself?)"),
    (VALID + "deep: " + "[" * 5000 + "]" * 5000 + "\n", [], ":4", "nest"),
    (VALID + "deep: " + "{a: " * 100 + "1" + "}" * 100 + "\n", [], ":4", "nested deeper"),
    (VALID, ["x=" + "&a [" + ", ".join(["*a"] * 3) + "]"], "--set x=&a", "nested deeper"),
    (VALID, ["x=" + "[" * 70 + "]" * 70], "--set x=", "nested deeper than 64 levels"),
    (VALID, [".".join(["a"] * 200) + "=1"], "--set a.a.a", "more than 64 key segments"),
    (VALID + "workers: {cell_timeout_s: 1" + "0" * 400 + "}\n", [], ":4",
     "workers.cell_timeout_s: must be a positive number that fits a float"),
    (VALID, ["workers.gpus_per_worker=1" + "0" * 400], "--set workers.gpus_per_worker=1000",
     "fits a float (below 1.8e308), got an integer of 401 digits"),
    (VALID, ["grid.temperature=[1" + "0" * 400 + "]"], "--set grid.temperature=",
     "grid.temperature[0]: must be a number >= 0 that fits a float"),
    (VALID + "measure: {seed: 1" + "0" * 2000 + "}\n", [], ":4", "integer literal of 2001"),
    (VALID, ["grid.batch_size=[99999999999999999999999]"], "--set grid.batch_size",
     "grid.batch_size[0]: must be at most 2**63 - 1"),
    (VALID, ["models.9999999999999999999999.tag=x"], "--set models.99999", "no such list item"),
    (VALID + "exclude:\n  - batch_size: '== " + alias_bomb(8).split("anchors:\n")[1].replace(
        "\n", ", ").replace("  ", "").join("{}").replace(", }", "}") + "'\n", [], ":5",
     "exclude[0].batch_size: must be a positive integer, got '{a0: &a0 [1, 1"),
    # 2. values that pass validation but fail every cell, or cannot fit
    (VALID, ["measure.seed=-1"], "--set measure.seed=-1", "measure.seed: must be an integer from 0"),
    (VALID + "measure: {prompt: ''}\n", [], ":4", "measure.prompt: must be a non-empty text"),
    (VALID.replace("vocab_size: 256", "vocab_size: 100") + "measure: {prompt: 'é'}\n", [], ":4",
     "measure.prompt: encodes (UTF-8 bytes"),
    (VALID, ["grid.temperature=[1.0e-40]"], "--set grid.temperature",
     "must be 0 (greedy) or at least 1e-30"),
    (VALID, ["model.tag=d[" + ",".join(["2"] * 20) + "]-h[" + ",".join(["64"] * 20) + "]"],
     "--set model.tag=", "has 20 stages; at most 16"),
    (VALID, ["model.tag=d[100000]-h[64]"], "--set model.tag", "at most 1024 per stage"),
    (VALID, ["model.tag=d[2]-h[1048576]"], "--set model.tag", "above the supported 131072"),
    (VALID, ["model.tag=d[2]-h[" + "9" * 5000 + "]"], "--set model.tag", "malformed model tag"),
    (VALID, ["model.vocab_size=100000000000"], ":2",
     "model: model d[2,2]-h[64,128] (vocab_size 100000000000, sequence_len 64) needs an estimated"),
    (VALID, ["model.sequence_len=100000000000"], ":2", "to build (float32 parameters"),
    # 3. specs that silently differ from what was written
    (VALID.replace("grid: {", "grid: {prompt_len: [16], "), [], ":3",
     "grid.prompt_len: duplicate key 'prompt_len' (first given at line 3)"),
    (VALID + "measure:\n  repeats: 2\n  warmup: 1\n  repeats: 5\n", [], ":7",
     "measure.repeats: duplicate key 'repeats' (first given at line 5)"),
    ('name: "tiny\\n"\n' + MODEL, [], ":1", "name: must be a name of letters"),
    ("name: tiny/../x\n" + MODEL, [], ":1", "name: must be a name of letters"),
    ('name: "a\\tb"\n' + MODEL, [], ":1", "name: must be a name of letters"),
    ("name: " + "x" * 101 + "\n" + MODEL, [], ":1", "at most 100"),
    (VALID, ['name="tiny\\n"'], '--set name="tiny\\n"', "name: must be a name of letters"),
]


@pytest.mark.parametrize(("text", "overrides", "where", "fragment"), HOSTILE,
                         ids=[f"{i}" for i in range(len(HOSTILE))])
def test_hostile_spec_exits_2_in_one_line(tmp_path, capsys, text, overrides, where, fragment):
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    results = tmp_path / "results"
    argv = ["submit", str(spec), "--results", str(results), "--dry-run"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{spec}{where}" if where.startswith(":") else where), err
    assert fragment in err, err
    assert len(err) < 600, err  # long values are quoted shortened
    assert not results.exists() and not captured.out


def test_spec_file_size_and_type_are_checked_before_reading(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_SPEC_BYTES + "\n" + VALID)
    with pytest.raises(SpecError, match="larger than 1 MiB"):
        load_job_spec(str(big))
    with pytest.raises(SpecError, match="is a directory|not a regular file"):
        load_job_spec(str(tmp_path))
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opened without blocking (no writer), then refused
    with pytest.raises(SpecError, match="not a regular file"):
        load_job_spec(str(fifo))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_job_spec(str(binary))


def test_aliases_within_the_bounds_still_work_and_are_independent(tmp_path):
    """Anchors, aliases and merge keys are fine in moderation; a --set on one copy of an
    aliased mapping changes that copy only."""
    text = textwrap.dedent("""\
        name: aliases
        defaults: &model {tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 64}
        models:
          - {<<: *model, head_dim: 32}
          - {<<: *model, head_dim: 64}
        grid: {batch_size: &sizes [1, 2], prompt_len: *sizes, max_tokens: [4]}
    """)
    doc = Document.from_text(text, "aliases.yaml")
    doc.data.pop("defaults")
    job = parse_job_spec(doc)
    assert [m.head_dim for m in job.models] == [32, 64]
    assert job.grid.axes["prompt_len"] == (1, 2)
    doc.data["grid"]["batch_size"].append(4)  # the alias is a copy, not the same list
    assert doc.data["grid"]["prompt_len"] == [1, 2]


def test_merge_keys_are_not_duplicate_keys_and_explicit_keys_win(tmp_path):
    text = VALID.replace("grid: {", "base: &b {batch_size: [1]}\ngrid: {<<: *b, ")
    doc = Document.from_text(text, "x.yaml")
    assert doc.data["grid"]["batch_size"] == [1, 2]


# --- the memory estimate --------------------------------------------------------------------------
@pytest.mark.parametrize(("tag", "vocab", "head_dim", "dtype"), [
    ("d[2,2]-h[64,128]", 256, 32, "float32"),
    ("d[2,4,6]-h[64,128,256]", 1000, 64, "bfloat16"),
    ("d[4]-h[96]", 50, 32, "float16"),
])
@pytest.mark.parametrize("method", ["naive", "cached", "cached_graph"])
def test_estimate_agrees_with_the_engine(tag, vocab, head_dim, dtype, method):
    """Weights and KV cache equal the engine's numbers; the budget part equals
    engine.bench.estimate_cell_bytes (the one measure.memory_budget_bytes uses)."""
    torch = pytest.importorskip("torch")
    from engine.bench import BenchSpec, estimate_cell_bytes
    from engine.config import UNetConfig
    from engine.model import UNet
    from orchestrator.spec.job import ModelSpec

    model = UNet(UNetConfig.from_tag(tag, vocab_size=vocab, head_dim=head_dim, sequence_len=64))
    model = model.to(getattr(torch, dtype))
    spec = BenchSpec(method=method, batch_size=3, prompt_len=40, max_tokens=9, dtype=dtype)
    engine = estimate_cell_bytes(model, spec)
    ours = fits.estimate(ModelSpec(tag=tag, vocab_size=vocab, head_dim=head_dim,
                                   sequence_len=64), method=method, dtype=dtype, batch_size=3,
                         prompt_len=40, max_tokens=9, synthetic_prompt=True)
    assert ours.weight_bytes == engine["weight_bytes"] == model.weight_bytes()
    assert ours.kv_cache_bytes == engine["kv_cache_bytes"]
    assert ours.budget_bytes == engine["total_bytes"]
    assert ours.device_bytes > ours.budget_bytes  # plus logits and rotary tables


def test_estimate_grows_with_every_size():
    base = {"depths": [2, 2], "widths": [64, 128], "vocab_size": 4096, "head_dim": 32,
            "sequence_len": 512, "dtype": "float32", "batch_size": 2, "prompt_len": 64,
            "max_tokens": 16, "synthetic_prompt": True}
    for method in ("naive", "cached"):
        ref = memory.estimate_cell(method=method, **base)
        for key in ("batch_size", "prompt_len", "max_tokens"):
            bigger = memory.estimate_cell(method=method, **{**base, key: base[key] * 2})
            assert bigger.cpu_bytes > ref.cpu_bytes and bigger.host_bytes >= ref.host_bytes
    naive = memory.estimate_cell(method="naive", **base)
    cached = memory.estimate_cell(method="cached", **base)
    assert naive.kv_cache_bytes == 0 < cached.kv_cache_bytes
    assert naive.activation_bytes > cached.activation_bytes  # logits at every position


def test_a_budget_cell_is_left_to_the_simulated_oom(tmp_path):
    """A cell over measure.memory_budget_bytes is not refused (the worker records it as oom
    before running), even when it would not fit in this machine's memory either."""
    spec = tmp_path / "job.yaml"
    spec.write_text(VALID)
    big = ["grid.batch_size=[1, 2000000]"]
    with pytest.raises(SpecError, match="a CPU worker here has 1.0 GB"):
        load_job_spec(str(spec), big, worker_memory_bytes=10**9)
    job = load_job_spec(str(spec), [*big, "measure.memory_budget_bytes=100000000"],
                        worker_memory_bytes=10**9)
    assert job.measure.memory_budget_bytes == 10**8


def test_grids_that_fit_are_not_expanded(tmp_path, monkeypatch):
    """The bound per model and method clears a fitting grid without producing a single cell."""
    spec = tmp_path / "job.yaml"
    spec.write_text(VALID)

    def no_cells(job):
        raise AssertionError("the grid was expanded")

    monkeypatch.setattr(fits, "largest_cells_first", no_cells)
    load_job_spec(str(spec), worker_memory_bytes=10**10)


def test_driver_memory_modules_do_not_import_torch():
    code = ("import sys, orchestrator.cli, orchestrator.spec.memory, orchestrator.spec.fits; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("meta", ["fifo", "deep", "binary"])
def test_a_hostile_checkpoint_meta_is_refused_in_one_line(tmp_path, meta):
    """A checkpoint directory may come from anyone: its meta file is read bounded."""
    tag = "d[2,2]-h[64,128]"
    ckpt = tmp_path / "base_checkpoints" / tag
    ckpt.mkdir(parents=True)
    (ckpt / "model_000001.pt").write_bytes(b"")
    meta_path = ckpt / "meta_000001.json"
    if meta == "fifo":
        os.mkfifo(meta_path)
    elif meta == "deep":
        meta_path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        meta_path.write_bytes(b"\xff\xfe{}")
    spec = tmp_path / "job.yaml"
    spec.write_text(f"model: {{tag: '{tag}', checkpoint: '{tmp_path}'}}\n")
    with pytest.raises(SpecError) as info:
        load_job_spec(str(spec))
    message = str(info.value)
    assert message.startswith(f"{spec}:1: model.checkpoint: cannot read {meta_path}: ")
    assert len(message.splitlines()) == 1 and len(message) < 400
    if meta == "fifo":
        assert "not a regular file" in message


def test_a_too_big_cell_is_found_without_walking_the_grid(tmp_path, monkeypatch):
    """One absurd batch size among thousands of cells is found first (largest sizes first)."""
    sizes = ", ".join(str(n) for n in range(1, 41))
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: big\nmodel: {tag: 'd[2,2]-h[64,128]', vocab_size: 256, sequence_len: 128, "
        f"head_dim: 32}}\ngrid:\n  batch_size: [{sizes}, 1000000000]\n  prompt_len: [{sizes}]\n"
        f"  max_tokens: [{sizes}]\nexclude:\n  - {{batch_size: 1, prompt_len: 1}}\n"
    )
    seen = []
    original = fits._too_big

    def counting(*args):
        seen.append(args[1])
        return original(*args)

    monkeypatch.setattr(fits, "_too_big", counting)
    with pytest.raises(SpecError, match=r"b=1000000000 p=40 n=40"):
        load_job_spec(str(spec))
    assert len(seen) == 1  # 131,200 cells, the first one searched is the offender
