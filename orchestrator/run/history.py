"""The rows a job's results hold for each cell, as resume planning (plan.py) asks for them.

    history = store.cell_history()     # a CellHistory: cell_id -> rows, read as a mapping
    history.ok                         # the cells with an ok row
    history.rows(cell_id)              # its rows (attempt, status, will_retry, finished_at)
    history.next_attempt(cell_id)      # its highest attempt + 1, or None without rows

Built from the store's Arrow table, it turns into Python objects only the ids of the cells with
an ok row and the rows of the other cells (usually few): a finished job of 100k cells is one
Arrow filter, not 100k lists of dicts. The rows of ok cells are made only when asked for
(`--continue-run`, reading it as a mapping), their highest attempt only when one of them runs
again (`--fresh`).

>>> h = CellHistory.from_rows({"a": [{"attempt": 1, "status": "ok"}],
...                            "b": [{"attempt": 2, "status": "oom"}]})
>>> sorted(h.ok), h.next_attempt("a"), h.next_attempt("b"), h.next_attempt("c"), len(h)
(['a'], 2, 3, None, 2)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from workers.record import Status

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

_OK = Status.OK.value


class CellHistory(Mapping[str, list[dict]]):
    """cell_id -> its rows (dicts), oldest first; `ok` holds the cells with an ok row,
    `other_rows` the rows of the others. Make one with `from_table` or `from_rows`."""

    def __init__(
        self,
        ok: set[str],
        other_rows: dict[str, list[dict]],
        table: pa.Table | None = None,
        all_rows: dict[str, list[dict]] | None = None,
    ):
        self.ok = ok
        self.other_rows = other_rows
        self._table = table  # every row, for what is asked of the ok cells
        self._all_rows = all_rows  # made from _table when first asked for
        self._highest: dict[str, int] | None = None

    @classmethod
    def from_table(cls, table: pa.Table | None) -> CellHistory:
        """From a table of the history columns (None: no rows)."""
        if table is None:
            return cls(set(), {}, all_rows={})
        import pyarrow.compute as pc  # here: planning from plain rows needs no pyarrow

        ok = pc.unique(table.filter(pc.equal(table["status"], _OK))["cell_id"])
        others = table.filter(pc.invert(pc.is_in(table["cell_id"], value_set=ok)))
        return cls(set(ok.to_pylist()), _group_rows(others), table=table)

    @classmethod
    def from_rows(cls, rows: Mapping[str, list[dict]]) -> CellHistory:
        """From cell_id -> rows (dicts with `status`, `attempt`, `will_retry`)."""
        ok = {cid for cid, rs in rows.items() if any(r.get("status") == _OK for r in rs)}
        others = {cid: rs for cid, rs in rows.items() if cid not in ok}
        return cls(ok, others, all_rows=dict(rows))

    @classmethod
    def of(cls, history: Mapping[str, list[dict]]) -> CellHistory:
        """`history` itself if it is a CellHistory, else `from_rows(history)`."""
        return history if isinstance(history, CellHistory) else cls.from_rows(history)

    def rows(self, cell_id: str) -> list[dict]:
        """The cell's rows, oldest first ([] when it has none)."""
        if cell_id in self.ok:
            return self._every_row()[cell_id]
        return self.other_rows.get(cell_id, [])

    def next_attempt(self, cell_id: str) -> int | None:
        """The attempt number of the cell's next try (its highest + 1; None: it has no rows)."""
        if cell_id not in self.ok:
            rows = self.other_rows.get(cell_id)
            return max(r.get("attempt") or 0 for r in rows) + 1 if rows else None
        if self._highest is None:
            self._highest = self._highest_attempts()
        return self._highest[cell_id] + 1

    def _highest_attempts(self) -> dict[str, int]:
        """cell_id -> its highest attempt (a missing one counted as 0), every cell."""
        if self._table is None:
            return {cid: max(r.get("attempt") or 0 for r in rows)
                    for cid, rows in self._every_row().items() if rows}
        import pyarrow as pa
        import pyarrow.compute as pc

        attempts = pa.table({"cell_id": self._table["cell_id"],
                             "attempt": pc.fill_null(self._table["attempt"], 0)})
        highest = attempts.group_by("cell_id").aggregate([("attempt", "max")])
        return dict(zip(highest["cell_id"].to_pylist(), highest["attempt_max"].to_pylist()))

    def _every_row(self) -> dict[str, list[dict]]:
        if self._all_rows is None:
            self._all_rows = _group_rows(self._table)
        return self._all_rows

    def __getitem__(self, cell_id: str) -> list[dict]:
        if cell_id not in self:
            raise KeyError(cell_id)
        return self.rows(cell_id)

    def __contains__(self, cell_id: object) -> bool:
        return cell_id in self.ok or cell_id in self.other_rows

    def __len__(self) -> int:
        return len(self.ok) + len(self.other_rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._every_row())


def _group_rows(table: pa.Table) -> dict[str, list[dict]]:
    """cell_id -> the table's rows of that cell as dicts, oldest first.

    A timestamp (`finished_at`) becomes ISO-like text ('2026-01-01 00:00:01.000Z', which sorts
    by time): turning 100k timestamps into datetime objects would cost more than the rest."""
    import pyarrow as pa

    cols = {
        name: (col.cast(pa.string()) if pa.types.is_timestamp(col.type) else col).to_pylist()
        for name, col in zip(table.column_names, table.columns)
    }
    names = list(cols)
    history: dict[str, list[dict]] = {}
    for values in zip(*cols.values()):
        row = dict(zip(names, values))
        history.setdefault(row["cell_id"], []).append(row)
    for rows in history.values():
        if len(rows) > 1:
            rows.sort(key=_oldest_first)
    return history


def _oldest_first(row: dict) -> tuple:
    return (row.get("finished_at") is None, row.get("finished_at"), row.get("attempt") or 0)
