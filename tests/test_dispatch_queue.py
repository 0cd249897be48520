"""The shared queue of the dispatcher: units of compared cells (all but `method` equal), one
FIFO per model, a worker's own model first, then a model no other worker holds."""

from __future__ import annotations

from orchestrator.run.cellqueue import CellQueue, unit_key
from orchestrator.spec.grid import CellSpec
from orchestrator.spec.job import ModelSpec
from workers.record import dominates

A = ModelSpec(tag="d[2]-h[32]", vocab_size=256, sequence_len=64, head_dim=32)
B = ModelSpec(tag="d[2,2]-h[32,64]", vocab_size=256, sequence_len=64, head_dim=32)


def cell(model=A, method="naive", b=1, p=4) -> CellSpec:
    return CellSpec(model=model, method=method, batch_size=b, prompt_len=p, max_tokens=2)


def labels(unit) -> list[tuple]:
    return [(t.cell.model.tag, t.cell.method, t.cell.batch_size) for t in unit]


def test_units_pair_the_cells_a_summary_compares_even_when_far_apart():
    cells = [cell(b=1), cell(b=2), cell(method="cached", b=2), cell(method="cached", b=1),
             cell(model=B, b=1), cell(method="cached_graph", b=1)]
    q = CellQueue()
    assert q.add_cells(cells, {cells[0].cell_id: 3}) == 6
    unit = q.pop_unit(A.key(), set())
    assert labels(unit) == [(A.tag, "naive", 1), (A.tag, "cached", 1), (A.tag, "cached_graph", 1)]
    assert unit[0].attempt == 3 and unit[1].attempt == 1  # resume numbering per cell
    assert labels(q.pop_unit(A.key(), set())) == [(A.tag, "naive", 2), (A.tag, "cached", 2)]
    assert unit_key(cell(p=4)) != unit_key(cell(p=8))


def test_a_worker_keeps_its_model_then_takes_one_nobody_holds():
    q = CellQueue()
    q.add_cells([cell(b=1), cell(b=2), cell(model=B, b=1), cell(model=B, b=2), cell(model=B, b=3)],
                {})
    assert labels(q.pop_unit(A.key(), set())) == [(A.tag, "naive", 1)]
    # a fresh worker while another one holds B: it takes A, though B has more left
    assert labels(q.pop_unit(None, {B.key()})) == [(A.tag, "naive", 2)]
    assert labels(q.pop_unit(A.key(), {B.key()})) == [(B.tag, "naive", 1)]  # A is done
    taken = q.remove_if(lambda t: t.cell.batch_size >= 3)
    assert [t.cell.batch_size for t in taken] == [3]
    assert labels(q.pop_unit(None, set())) == [(B.tag, "naive", 2)] and not q


def test_dominance_needs_the_same_model_method_and_dtype_and_no_smaller_size():
    failed = cell(method="cached", b=4).to_dict()
    assert dominates(failed, cell(method="cached", b=8).to_dict())
    assert not dominates(failed, cell(method="cached", b=2).to_dict())
    assert not dominates(failed, cell(method="naive", b=8).to_dict())
    assert not dominates(failed, cell(model=B, method="cached", b=8).to_dict())
