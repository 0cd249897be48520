"""Which columns make two rows one setting: every cell parameter, apart from those compared.

    setting_columns()                     # every parameter column but `method`
    setting_columns(apart_from=())        # every parameter column (a series of one method)

The list is derived from the record's own vocabulary (workers/record.py `PARAM_KEYS` and
`MODEL_KEYS`, the columns `params_of` writes for every cell), not kept by hand: a parameter added
to the cell is a setting column at once, so two cells that differ in anything but the compared
column never share a summary line, a pivot cell, a compare match, a plot point or a history
series. (`memory_budget_bytes` was missing from a hand-kept list, and a summary line divided a
run with a budget by a run without one.)
"""

from __future__ import annotations

from collections.abc import Iterable

from workers.record import MODEL_KEYS, PARAM_KEYS

CELL_PARAM_COLUMNS: tuple[str, ...] = (*PARAM_KEYS, *(f"model_{key}" for key in MODEL_KEYS))
COMPARED = ("method",)


def setting_columns(apart_from: Iterable[str] = COMPARED) -> tuple[str, ...]:
    """The parameter columns that key a setting, minus `apart_from` (default: the method).

    >>> "memory_budget_bytes" in setting_columns(), "method" in setting_columns()
    (True, False)
    >>> "method" in setting_columns(apart_from=())
    True
    """
    skip = set(apart_from)
    return tuple(column for column in CELL_PARAM_COLUMNS if column not in skip)
