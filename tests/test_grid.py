"""Grid expansion: product, zip, include, exclude (values, lists, comparisons), overrides, and
cell_id stability."""

from __future__ import annotations

import dataclasses
import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec.grid import (
    AXES,
    AXIS_DEFAULTS,
    CellSpec,
    _make_cell,
    cell_id,
    count_cells,
    expand_cells,
    iter_cell_ids,
    iter_cells,
    parse_condition,
    too_long,
)
from orchestrator.spec.job import GridSpec, JobSpec, MeasureSpec, ModelSpec, parse_job_spec
from orchestrator.spec.overrides import apply_overrides
from orchestrator.spec.source import Document

BASE = {
    "name": "g",
    "model": {"tag": "d[2,2]-h[64,128]", "vocab_size": 256, "sequence_len": 4096,
              "head_dim": 32},
}


def job(**sections):
    return parse_job_spec(Document(data={**BASE, **sections}, name="g.yaml"))


def keyset(cells, *keys):
    return [tuple(getattr(c, k) for k in keys) for c in cells]


def test_product_of_axes_method_fastest():
    cells = expand_cells(job(grid={"batch_size": [1, 4], "prompt_len": [8, 16, 32]}))
    assert len(cells) == 2 * 3 * 2
    assert keyset(cells[:4], "batch_size", "prompt_len", "method") == [
        (1, 8, "naive"), (1, 8, "cached"), (1, 16, "naive"), (1, 16, "cached")]
    assert {c.max_tokens for c in cells} == {32}  # default
    assert {c.dtype for c in cells} == {"float32"}  # the model's dtype


def test_zip_varies_axes_together():
    cells = expand_cells(job(grid={"method": ["cached"], "batch_size": [1, 2]},
                             zip=[{"prompt_len": [16, 256], "max_tokens": [256, 16]}]))
    assert sorted(keyset(cells, "batch_size", "prompt_len", "max_tokens")) == [
        (1, 16, 256), (1, 256, 16), (2, 16, 256), (2, 256, 16)]


def test_exclude_with_comparisons_values_and_lists():
    grid = {"batch_size": [1, 8, 32], "prompt_len": [128, 1024, 2048], "method": ["cached"]}
    cells = expand_cells(job(grid=grid, exclude=[{"batch_size": ">= 8", "prompt_len": ">= 1024"},
                                                 {"batch_size": 1, "prompt_len": [128, 2048]}]))
    got = set(keyset(cells, "batch_size", "prompt_len"))
    assert got == {(1, 1024), (8, 128), (32, 128)}


@pytest.mark.parametrize(("op", "value", "hits"), [
    ("<", 16, {8}), ("<=", 16, {8, 16}), (">", 16, {32}), (">=", 16, {16, 32}),
    ("==", 16, {16}), ("!=", 16, {8, 32})])
def test_each_comparison_operator(op, value, hits):
    cond = parse_condition("prompt_len", f"{op} {value}", AXES["prompt_len"])
    assert {v for v in (8, 16, 32) if cond.matches(v)} == hits


def test_comparison_needs_numeric_axis():
    with pytest.raises(ValueError, match="numeric axis"):
        parse_condition("method", ">= 2", AXES["method"])


def test_exclude_by_method_and_model():
    cells = expand_cells(job(grid={"batch_size": [1, 2]},
                             exclude=[{"method": "naive", "batch_size": 2}]))
    assert keyset(cells, "method", "batch_size") == [
        ("naive", 1), ("cached", 1), ("cached", 2)]
    assert expand_cells(job(exclude=[{"model": "d[2,2]-h[64,128]", "method": "naive"}])) != []


def test_include_adds_cells_filling_missing_axes_with_first_values():
    cells = expand_cells(job(grid={"batch_size": [1], "prompt_len": [8, 16]},
                             include=[{"batch_size": 64, "method": "cached"}]))
    extra = [c for c in cells if c.batch_size == 64]
    assert keyset(extra, "method", "prompt_len", "max_tokens") == [("cached", 8, 32)]


def test_include_duplicate_of_product_cell_is_dropped():
    cells = expand_cells(job(grid={"batch_size": [1]}, include=[{"batch_size": 1}]))
    assert len(cells) == 2


def test_models_list_expands_outermost_with_distinct_ids():
    models = [BASE["model"], {**BASE["model"], "seed": 1}]
    data = {k: v for k, v in BASE.items() if k != "model"}
    cells = expand_cells(parse_job_spec(Document(data={**data, "models": models})))
    assert len(cells) == 4 and len({c.cell_id for c in cells}) == 4
    assert [c.model.seed for c in cells] == [0, 0, 1, 1]


def test_overrides_apply_before_expansion():
    doc = Document(data={**BASE, "grid": {"batch_size": [1]}}, name="g.yaml")
    apply_overrides(doc, ["grid.batch_size=[1, 8]", "grid.method=cached",
                          "measure.repeats=5"])
    cells = expand_cells(parse_job_spec(doc))
    assert keyset(cells, "batch_size", "method", "repeats") == [
        (1, "cached", 5), (8, "cached", 5)]


def test_cell_id_depends_on_params_and_model():
    model = ModelSpec(tag="d[2]-h[64]", head_dim=32)
    a = CellSpec(model=model, method="naive", batch_size=1, prompt_len=8, max_tokens=4)
    b = CellSpec(model=model, method="cached", batch_size=1, prompt_len=8, max_tokens=4)
    c = CellSpec(model=ModelSpec(tag="d[2]-h[64]", head_dim=32, seed=1), method="naive",
                 batch_size=1, prompt_len=8, max_tokens=4)
    assert len({a.cell_id, b.cell_id, c.cell_id}) == 3
    assert a.cell_id == CellSpec(model=model, method="naive", batch_size=1, prompt_len=8,
                                 max_tokens=4, temperature=0).cell_id  # 0 == 0.0


scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans())


@given(st.dictionaries(st.text(min_size=1, max_size=5), scalars, max_size=6),
       st.dictionaries(st.text(min_size=1, max_size=5), scalars, max_size=4), st.randoms())
def test_cell_id_stable_across_key_order(params, identity, rnd):
    shuffled_params = list(params.items())
    rnd.shuffle(shuffled_params)
    shuffled_identity = list(identity.items())
    rnd.shuffle(shuffled_identity)
    assert cell_id(params, identity) == cell_id(dict(shuffled_params), dict(shuffled_identity))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
       st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True),
       st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.integers(1, 64))
def test_exclude_removes_exactly_the_matching_cells(batches, prompts, op, bound):
    grid = {"batch_size": batches, "prompt_len": prompts}
    all_cells = expand_cells(job(grid=grid))
    cond = parse_condition("prompt_len", f"{op} {bound}", AXES["prompt_len"])
    if all(cond.matches(p) for p in prompts):  # an exclude that empties the job is refused
        with pytest.raises(SpecError, match=r"g\.yaml: exclude: removes every cell"):
            job(grid=grid, exclude=[{"prompt_len": f"{op} {bound}"}])
        return
    kept = expand_cells(job(grid=grid, exclude=[{"prompt_len": f"{op} {bound}"}]))
    assert [c.cell_id for c in kept] == [c.cell_id for c in all_cells
                                         if not cond.matches(c.prompt_len)]
    assert len(all_cells) == len(batches) * len(prompts) * 2
    assert all(not cond.matches(c.prompt_len) for c in kept)


@settings(max_examples=30, deadline=None)
@given(st.permutations(["batch_size", "prompt_len", "max_tokens", "method"]))
def test_cells_independent_of_yaml_key_order(order):
    values = {"batch_size": [1, 2], "prompt_len": [8], "max_tokens": [4, 8],
              "method": ["naive", "cached"]}
    ids = {c.cell_id for c in expand_cells(job(grid={k: values[k] for k in order}))}
    expected = {c.cell_id for c in expand_cells(job(grid=values))}
    assert ids == expected
    assert len(ids) == len(list(itertools.product(*values.values())))


# ---------------------------------------------------------------------------------------------
# lazy grids: the stream, the count and the per-axis length check equal a plain expansion


def reference_cells(spec: JobSpec) -> list[CellSpec]:
    """The eager expansion the lazy one replaced: the full product filtered by exclude, then the
    include cells, deduplicated with a set of cell ids."""
    cells = []
    zipped = {axis for group in spec.grid.zip for axis in group}
    for model in spec.models:
        factors = []
        for pos, axis in enumerate(AXES):
            if axis not in zipped:
                values = spec.grid.axes.get(axis, AXIS_DEFAULTS[axis])
                if axis == "dtype":
                    values = [model.dtype if v is None else v for v in values]
                factors.append((pos, [{axis: v} for v in values]))
        for group in spec.grid.zip:
            n = len(next(iter(group.values())))
            factors.append((min(list(AXES).index(a) for a in group),
                            [{a: vs[i] for a, vs in group.items()} for i in range(n)]))
        factors.sort(key=lambda f: f[0])
        first = {}
        for _, rows in factors:
            first.update({k: v for k, v in rows[0].items() if k not in first})
        for combo in itertools.product(*(rows for _, rows in factors)):
            params = {k: v for part in combo for k, v in part.items()}
            values = {**params, "model": model.tag}
            if not any(all(c.matches(values[k]) for k, c in e.items())
                       for e in spec.grid.exclude):
                cells.append(_make_cell(spec, model, params))
        for entry in spec.grid.include:
            if entry.get("model", model.tag) == model.tag:
                params = {**first, **{k: v for k, v in entry.items() if k in AXES}}
                cells.append(_make_cell(spec, model, params))
    seen, unique = set(), []
    for cell in cells:
        if cell.cell_id not in seen:
            seen.add(cell.cell_id)
            unique.append(cell)
    return unique


MODELS = (ModelSpec(tag="d[2,2]-h[64,128]", head_dim=32, sequence_len=3),
          ModelSpec(tag="d[2]-h[64]", head_dim=32, sequence_len=2))
small = st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True)
comparison = st.builds(lambda op, v: f"{op} {v}", st.sampled_from(["<", ">=", "==", "!="]),
                       st.integers(1, 20))


@st.composite
def lazy_jobs(draw) -> JobSpec:
    models = draw(st.sampled_from([MODELS[:1], MODELS]))
    axes = {"batch_size": tuple(draw(small)), "temperature": (0.0, 0.5)}
    zip_groups: tuple = ()
    if draw(st.booleans()):
        n = draw(st.integers(1, 3))
        zip_groups = ({"prompt_len": tuple(range(5, 5 + 10 * n, 10)),
                       "max_tokens": tuple(draw(st.lists(st.integers(1, 30), min_size=n,
                                                         max_size=n, unique=True)))},)
    else:
        axes.update(prompt_len=tuple(draw(small)), max_tokens=tuple(draw(small)))
    exclude = []
    for _ in range(draw(st.integers(0, 3))):
        entry = {}
        for axis in draw(st.lists(st.sampled_from(["batch_size", "prompt_len", "max_tokens",
                                                   "method", "model"]), min_size=1,
                                  max_size=3, unique=True)):
            raw = (draw(st.sampled_from(["naive", "cached"])) if axis == "method"
                   else draw(st.sampled_from([m.tag for m in models])) if axis == "model"
                   else draw(comparison))
            entry[axis] = parse_condition(axis, raw, AXES.get(axis, AXES["method"])
                                          if axis != "model" else (lambda v: None))
        exclude.append(entry)
    include = [{"batch_size": draw(st.integers(1, 20)), "method": "cached"},
               {"prompt_len": draw(st.integers(1, 20)), "model": models[-1].tag}][
        :draw(st.integers(0, 2))]
    return JobSpec(name="lazy", models=models, grid=GridSpec(
        axes=axes, zip=zip_groups, include=tuple(include), exclude=tuple(exclude)))


@settings(max_examples=150, deadline=None)
@given(lazy_jobs())
def test_lazy_stream_count_and_length_check_equal_a_full_expansion(spec):
    expected = reference_cells(spec)
    assert [c.cell_id for c in iter_cells(spec)] == [c.cell_id for c in expected]
    assert count_cells(spec) == len(expected)
    long = [c for c in expected if c.total_len > c.model.max_len]
    n_long, first = too_long(spec)
    assert n_long == len(long)
    assert (first is None) == (not long)
    if first is not None:
        assert first.cell_id in {c.cell_id for c in long}


@st.composite
def id_jobs(draw) -> JobSpec:
    """lazy_jobs with int and float temperatures, top_k and dtype (zipped or not) and measure
    settings whose JSON needs escaping."""
    spec = draw(lazy_jobs())
    values = st.lists(st.sampled_from([0, 0.5, 1, 2.5]), min_size=1, max_size=3, unique=True)
    axes = {**spec.grid.axes, "temperature": tuple(draw(values))}
    top_k = tuple(draw(st.lists(st.sampled_from([None, 3, 7]), min_size=1, max_size=3,
                                unique=True)))
    dtypes = tuple(draw(st.permutations(["float32", "float16", "bfloat16"]))[:len(top_k)])
    zips = spec.grid.zip
    if draw(st.booleans()):
        zips = (*zips, {"top_k": top_k, "dtype": dtypes})
    else:
        axes.update(top_k=top_k, dtype=dtypes)
    measure = MeasureSpec(prompt=draw(st.sampled_from([None, 'say "50% of %s" \u00e9\u4e2d'])),
                          seed=draw(st.integers(0, 2**40)),
                          memory_budget_bytes=draw(st.sampled_from([None, 10**9])))
    grid = dataclasses.replace(spec.grid, axes=axes, zip=zips)
    return dataclasses.replace(spec, grid=grid, measure=measure, profile=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(id_jobs())
def test_streamed_cell_ids_are_the_plain_hash_of_each_cell_in_stream_order(spec):
    expected = reference_cells(spec)
    streamed = list(iter_cell_ids(spec))
    assert [cid for cid, _ in streamed] == [cell_id(c.params(), c.model.identity())
                                            for c in expected]
    built = [build() for _, build in streamed]
    assert built == expected
    assert [c.cell_id for c in built] == [cid for cid, _ in streamed]


HUGE = {  # 100 x 100 x 100 x 10 x 2 methods = 20M grid cells, 12M kept (batch_size <= 60)
    "batch_size": list(range(1, 101)), "prompt_len": list(range(1, 101)),
    "max_tokens": list(range(1, 101)), "temperature": [i / 10 for i in range(10)]}


def test_huge_grid_is_counted_sampled_and_checked_without_expanding():
    tracemalloc.start()
    spec = job(grid=HUGE, exclude=[{"batch_size": "> 60"}])
    assert count_cells(spec) == 12_000_000
    sample = list(itertools.islice(iter_cells(spec), 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # bytes: a list of 12M cells would take gigabytes
    assert [(c.batch_size, c.temperature, c.method) for c in sample] == [
        (1, 0.0, "naive"), (1, 0.0, "cached"), (1, 0.1, "naive")]
    with pytest.raises(SpecError) as info:  # limit 10 x sequence_len = 100 tokens
        job(grid=HUGE, model={**BASE["model"], "sequence_len": 10},
            exclude=[{"batch_size": "> 60"}])
    assert "cell 'd[2,2]-h[64,128] naive b=1 p=1 n=100' needs" in str(info.value)
    # 5,050 of the 10,000 (prompt_len, max_tokens) pairs exceed 100, in 1,200 cells each
    assert "(and 6,059,999 more)" in str(info.value)


def test_exclude_that_excludes_the_long_cells_passes_the_length_check():
    model = {**BASE["model"], "sequence_len": 10}  # limit 100 tokens
    grid = {"prompt_len": [10, 85], "max_tokens": [10, 85]}
    with pytest.raises(SpecError, match=r"p=85 n=85' needs .* 170 tokens .*\(and 1 more\)"):
        job(model=model, grid=grid)
    spec = job(model=model, grid=grid, exclude=[{"prompt_len": ">= 50", "max_tokens": ">= 50"}])
    assert sorted(set(keyset(expand_cells(spec), "prompt_len", "max_tokens"))) == [
        (10, 10), (10, 85), (85, 10)]


def test_repeated_axis_values_are_refused_as_cell_identity_sees_them():
    with pytest.raises(SpecError, match=r"grid\.temperature: repeated values in \[0, 0\.0\]"):
        job(grid={"temperature": [0, 0.0]})


def test_include_or_exclude_naming_a_model_the_job_lacks_is_refused():
    with pytest.raises(SpecError) as info:
        job(include=[{"batch_size": 2}, {"model": "d[4]-h[64]", "batch_size": 4}])
    assert str(info.value) == (
        "g.yaml: include[1].model: no model 'd[4]-h[64]' in this job "
        "(its models: d[2,2]-h[64,128])")
    with pytest.raises(SpecError, match=r"exclude\.model: no model 'd\[4\]-h\[64\]'"):
        job(exclude={"model": "d[4]-h[64]"})
    assert len(expand_cells(job(exclude={"model": "!= d[4]-h[64]", "method": "naive"}))) == 1


def test_spec_file_errors_name_the_line_and_leave_no_results_dir(tmp_path, capsys):
    spec = tmp_path / "empty.yaml"
    spec.write_text("name: empty\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n"
                    "grid: {batch_size: [1, 2]}\nexclude:\n  - {batch_size: '<= 2'}\n")
    results = tmp_path / "results"
    assert main(["submit", str(spec), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == f"{spec}:4: exclude: removes every cell of the job; nothing would run\n"
    assert not results.exists()
    spec.write_text("name: other\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n"
                    "include:\n  - {model: 'd[2]-h[128]', batch_size: 8}\n")
    assert main(["submit", str(spec), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{spec}:4: include[0].model: no model 'd[2]-h[128]'"), err
    assert len(err.splitlines()) == 1 and not results.exists()


@settings(max_examples=60, deadline=None)
@given(st.builds(
    CellSpec, model=st.sampled_from([ModelSpec(tag="d[2]-h[64]", head_dim=32),
                                     ModelSpec(tag="d[2]-h[64]", head_dim=32, seed=-3)]),
    method=st.sampled_from(["naive", "cached"]), batch_size=st.integers(1, 10**12),
    prompt_len=st.integers(1, 99), max_tokens=st.integers(1, 99),
    temperature=st.one_of(st.integers(0, 3), st.floats(0, 1e9)),
    top_k=st.one_of(st.none(), st.integers(1, 50)), dtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(-(2**70), 2**70), prompt=st.one_of(st.none(), st.text(max_size=8)),
    profile=st.booleans(), memory_budget_bytes=st.one_of(st.none(), st.integers(1, 2**40))))
def test_cached_cell_id_equals_the_plain_hash(cell):
    assert cell.cell_id == cell_id(cell.params(), cell.model.identity())


def big_spec(tmp_path, batch_sizes: int) -> str:
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "name: big\nmodel: {tag: 'd[2]-h[64]', head_dim: 32}\n"
        f"grid: {{batch_size: {list(range(1, batch_sizes + 1))}, "
        f"prompt_len: {list(range(1, 101))}, max_tokens: {list(range(1, 101))}}}\n")
    return str(spec)


def test_dry_run_prints_a_bounded_sample_the_count_and_the_checks(tmp_path, capsys):
    assert main(["submit", big_spec(tmp_path, 60), "--dry-run", "--max-cells", "2000000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + 20 + 3  # header, rule, 20 cells, "... more", count, checks
    assert out[-3:] == [
        "... 1,199,980 more",
        "1,200,000 cells (dry run: nothing was run)",
        ("checks passed: the spec is valid, every cell fits its model's length limit, "
         "1,200,000 cells <= --max-cells 2,000,000")]


def test_a_job_over_the_cell_limit_is_refused_in_one_line(tmp_path, capsys):
    spec, results = big_spec(tmp_path, 120), tmp_path / "results"
    assert main(["submit", spec, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == (f"{spec}: the job has 2,400,000 cells, more than the limit of 1,000,000; "
                   "raise it with --max-cells 2400000\n")
    assert not results.exists()
    assert main(["submit", spec, "--dry-run"]) == 2  # the dry run says so too, after the count
    captured = capsys.readouterr()
    assert "2,400,000 cells (dry run" in captured.out and "--max-cells 2400000" in captured.err
    with pytest.raises(SystemExit):
        main(["submit", spec, "--max-cells", "0"])
    assert "--max-cells: must be a positive integer, got '0'" in capsys.readouterr().err


def test_streamed_cell_ids_equal_the_plain_hash_whatever_the_measure_settings():
    spec = job(grid={"temperature": [0, 0.5], "top_k": [None, 3], "dtype": ["float16", "float32"]},
               measure={"prompt": 'say "50% of %s" \u00e9\u4e2d', "seed": 7, "repeats": 2,
                        "memory_budget_bytes": 10**9},
               include=[{"batch_size": 3, "temperature": 1}])
    cells = list(iter_cells(spec))
    assert len(cells) == 2 * 2 * 2 * 2 + 1
    for cell in cells:
        assert cell.cell_id == cell_id(cell.params(), cell.model.identity())
