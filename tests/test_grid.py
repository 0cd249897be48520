"""Grid expansion: product, zip, include, exclude (values, lists, comparisons), overrides, and
cell_id stability."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.spec.grid import AXES, CellSpec, cell_id, expand_cells, parse_condition
from orchestrator.spec.job import ModelSpec, parse_job_spec
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
    kept = expand_cells(job(grid=grid, exclude=[{"prompt_len": f"{op} {bound}"}]))
    cond = parse_condition("prompt_len", f"{op} {bound}", AXES["prompt_len"])
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
