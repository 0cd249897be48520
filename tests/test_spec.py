"""Job specs: valid specs parse into typed objects; every malformed spec exits 2 with one line
naming file, line and field path, and creates no results directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec.grid import expand_cells
from orchestrator.spec.job import JobSpec, MeasureSpec, ModelSpec, WorkersSpec, load_job_spec

GOLDEN = Path(__file__).parent / "fixtures" / "nanochat_unet" / "golden_checkpoints"
GOLDEN_TAG = "d[2,2]-h[64,128]"

VALID = """\
name: tiny
model:
  tag: d[2,2]-h[64,128]
  checkpoint: random
  vocab_size: 256
  sequence_len: 64
  head_dim: 32
grid:
  method: [naive, cached]
  batch_size: [1, 2]
  prompt_len: [8]
  max_tokens: [4]
measure:
  repeats: 2
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_spec_parses_into_typed_objects(tmp_path):
    job = load_job_spec(str(write(tmp_path, VALID)))
    assert isinstance(job, JobSpec)
    assert job.name == "tiny"
    assert job.models == (
        ModelSpec(tag="d[2,2]-h[64,128]", vocab_size=256, sequence_len=64, head_dim=32),
    )
    assert job.measure == MeasureSpec(repeats=2)
    assert job.workers == WorkersSpec()
    assert job.grid.axes["batch_size"] == (1, 2)
    assert len(expand_cells(job)) == 4


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, VALID.replace("name: tiny\n", ""), name="my-job.yaml")
    assert load_job_spec(str(path)).name == "my-job"


def test_overrides_change_fields(tmp_path):
    path = write(tmp_path, VALID)
    job = load_job_spec(
        str(path), ["measure.repeats=5", "grid.batch_size=[1,8]", "workers.cpu_workers=2"]
    )
    assert job.measure.repeats == 5
    assert job.grid.axes["batch_size"] == (1, 8)
    assert job.workers.cpu_workers == 2


def test_checkpoint_path_resolves_latest_step(tmp_path):
    text = f"""\
    model:
      tag: "{GOLDEN_TAG}"
      checkpoint: "{GOLDEN / GOLDEN_TAG}"
    grid: {{prompt_len: [8], max_tokens: [4]}}
    """
    job = load_job_spec(str(write(tmp_path, text)))
    (model,) = job.models
    assert model.step == 10 and model.vocab_size == 300 and model.sequence_len == 256
    assert model.head_dim == 32 and model.checkpoint == str((GOLDEN / GOLDEN_TAG).resolve())


def test_checkpoint_auto_uses_nanochat_base_dir(tmp_path, monkeypatch):
    base = tmp_path / "base"
    (base / "base_checkpoints").mkdir(parents=True)
    (base / "base_checkpoints" / GOLDEN_TAG).symlink_to(GOLDEN / GOLDEN_TAG)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    text = f'model: {{tag: "{GOLDEN_TAG}", checkpoint: auto, step: 10}}\n'
    (model,) = load_job_spec(str(write(tmp_path, text))).models
    assert model.step == 10


def test_model_spec_post_init_validates():
    with pytest.raises(ValueError, match="vocab_size: must be a positive integer"):
        ModelSpec(tag="d[2]-h[64]", vocab_size=0)
    with pytest.raises(ValueError, match="malformed model tag"):
        ModelSpec(tag="d2-h64")


def test_model_max_len_matches_engine():
    config_mod = pytest.importorskip("engine.config")
    spec = ModelSpec(tag="d[2,4]-h[128,256]", vocab_size=4096, sequence_len=512, head_dim=64)
    config = config_mod.UNetConfig.from_tag(
        spec.tag, vocab_size=4096, head_dim=64, sequence_len=512
    )
    assert spec.max_len == config.max_len


# (spec text or None for VALID, overrides, expected "file-line or --set" marker, expected path,
#  expected message fragment)
MALFORMED = [
    ("name: x\nmodel: a\n  tag: b\n", [], ":3", "", "YAML syntax error"),
    ("- just\n- a list\n", [], ":1", "", "must be a mapping"),
    (VALID.replace("measure:", "measur:"), [], ":13", "measur", "did you mean 'measure'"),
    (VALID.replace("  repeats: 2", "  repeat: 2"), [], ":14", "measure.repeat",
     "did you mean 'repeats'"),
    (VALID.replace("batch_size: [1, 2]", "batch_sise: [1, 2]"), [], ":10", "grid.batch_sise",
     "did you mean 'batch_size'"),
    (VALID.replace("batch_size: [1, 2]", "batch_size: [1, -3]"), [], ":10",
     "grid.batch_size[1]", "must be a positive integer, got -3"),
    (VALID.replace("prompt_len: [8]", "prompt_len: [0]"), [], ":11", "grid.prompt_len[0]",
     "must be a positive integer, got 0"),
    (VALID.replace("max_tokens: [4]", "max_tokens: [-1]"), [], ":12", "grid.max_tokens[0]",
     "must be a positive integer"),
    (VALID.replace("max_tokens: [4]", "max_tokens: []"), [], ":12", "grid.max_tokens",
     "empty axis"),
    (VALID.replace("[naive, cached]", "[naive, speculative]"), [], ":9", "grid.method[1]",
     "unknown method 'speculative'"),
    (VALID.replace("  repeats: 2", "  repeats: lots"), [], ":14", "measure.repeats",
     "must be a positive integer, got 'lots'"),
    (VALID.replace("d[2,2]-h[64,128]", "d2-h64"), [], ":3", "model.tag", "malformed model tag"),
    (VALID.replace("checkpoint: random", "checkpoint: /no/such/dir"), [], ":4",
     "model.checkpoint", "does not exist"),
    (f'model: {{tag: "{GOLDEN_TAG}", checkpoint: "{GOLDEN / GOLDEN_TAG}", step: 7}}\n', [],
     ":1", "model.step", "step 7 not found"),
    (VALID + "zip:\n  - top_k: [1, 2]\n    temperature: [0.5]\n", [], ":16", "zip[0]",
     "equal lengths"),
    (VALID + "exclude:\n  - batch_sizes: 2\n", [], ":16", "exclude[0].batch_sizes",
     "did you mean 'batch_size'"),
    (VALID + "include:\n  - colour: red\n", [], ":16", "include[0].colour", "no such axis"),
    (VALID.replace("prompt_len: [8]", "prompt_len: [8, 700]"), [], ":11", "grid.prompt_len",
     "cell 'd[2,2]-h[64,128] naive b=1 p=700 n=4' needs prompt_len + max_tokens = 704 tokens"),
    (VALID, ["measure.repeats=[1"], "--set measure.repeats=[1", "measure.repeats",
     "cannot parse value"),
    (VALID, ["grid.colour=[1]"], "--set grid.colour=[1]", "grid.colour", "unknown axis"),
    (VALID, ["measure.repeats=0"], "--set measure.repeats=0", "measure.repeats",
     "must be a positive integer, got 0"),
    (VALID, ["no_equals_sign"], "--set no_equals_sign", "", "expected KEY=VALUE"),
    (VALID.replace("grid:", "profile: maybe\ngrid:"), [], ":8", "profile", "true or false"),
    (VALID.replace("head_dim: 32", "head_dim: 48"), [], ":7", "model.head_dim",
     "does not divide"),
    (VALID + "workers:\n  retries: -1\n", [], ":16", "workers.retries", "must be an integer >= 0"),
    # wrong types
    (VALID.replace("batch_size: [1, 2]", "batch_size: [1, two]"), [], ":10",
     "grid.batch_size[1]", "must be a positive integer, got 'two'"),
    (VALID + "workers:\n  cell_timeout_s: soon\n", [], ":16", "workers.cell_timeout_s",
     "must be a positive number, got 'soon'"),
    (VALID.split("grid:")[0] + "grid: [1, 2]\n", [], ":8", "grid", "must be a mapping, got list"),
    # a checkpoint directory without model_<step>.pt files
    (VALID.replace("checkpoint: random", f"checkpoint: {GOLDEN}"), [], ":4", "model.checkpoint",
     "has no model_<step>.pt files"),
    # the job name becomes a directory: no path tricks
    (VALID.replace("name: tiny", "name: ../elsewhere"), [], ":1", "name",
     "must be a name of letters, digits"),
]


@pytest.mark.parametrize(("text", "overrides", "where", "path", "fragment"), MALFORMED)
def test_malformed_spec_exits_2_with_location(tmp_path, capsys, text, overrides, where, path,
                                              fragment):
    spec = write(tmp_path, text)
    results = tmp_path / "results"
    argv = ["submit", str(spec), "--results", str(results)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    expected_where = f"{spec}{where}" if where.startswith(":") else where
    assert err.startswith(expected_where + ":"), err
    if path:
        assert f": {path}: " in err, err
    assert fragment in err, err
    assert not results.exists()


def test_spec_error_is_one_line_with_file_line_path(tmp_path):
    spec = write(tmp_path, VALID.replace("batch_size: [1, 2]", "batch_size: [1, -3]"))
    with pytest.raises(SpecError) as info:
        load_job_spec(str(spec))
    assert str(info.value) == f"{spec}:10: grid.batch_size[1]: must be a positive integer, got -3"


def test_missing_spec_file_exits_2(tmp_path, capsys):
    assert main(["submit", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r")]) == 2
    assert "spec file not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("address", "fragment"), [
    ("127.0.0.1:1", "cannot reach 127.0.0.1:1 within 10s"),
    ("ray://127.0.0.1:1", "cannot reach 127.0.0.1:1 within 10s"),
    ("headnode", "expected auto, HOST:PORT or ray://HOST:PORT"),
])
def test_unreachable_address_exits_2_without_results(tmp_path, capsys, address, fragment):
    spec = write(tmp_path, VALID)
    results = tmp_path / "results"
    code = main(["submit", str(spec), "--results", str(results), "--address", address])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --address {address}") and fragment in err, err
    assert len(err.splitlines()) == 1 and not results.exists()


def test_bad_cli_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["submit"])
    assert info.value.code == 2


def test_dry_run_lists_cells_and_creates_nothing(tmp_path, capsys):
    spec = write(tmp_path, VALID)
    results = tmp_path / "results"
    assert main(["submit", str(spec), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "cached" in out
    assert not results.exists()


def test_model_key_separates_every_random_model_identity():
    """OOM domination and worker routing group cells by model key: two random models that differ
    in any part of their identity must not share one."""
    base = ModelSpec(tag="d[2,2]-h[64,128]", checkpoint="random", head_dim=32)
    others = [ModelSpec(tag="d[2,2]-h[64,128]", checkpoint="random", head_dim=64),
              ModelSpec(tag="d[2,2]-h[64,128]", checkpoint="random", head_dim=32, sequence_len=4096),
              ModelSpec(tag="d[2,2]-h[64,128]", checkpoint="random", head_dim=32, seed=1)]
    assert len({base.key(), *(m.key() for m in others)}) == 4
