"""A Cartesian product with exclusion rules, counted, searched and walked without expanding it.

A product is a list of factors; a factor is one or more axes whose values vary together (a
single grid axis, or a `zip` group) given as rows. A rule is a conjunction of per-axis tests
(an `exclude` entry); a cell matching every test of some rule is excluded.

Each row of a factor carries a bit mask: bit e is set when the row passes rule e's tests on the
factor's own axes (or rule e tests none of them). A cell is excluded exactly when the AND of its
rows' masks is non-zero, so counting the kept cells is a small dynamic programme over masks
(at most 2^rules states, in practice a handful), and a walk of the product can skip every
branch with no kept cell below it. Nothing here is proportional to the number of cells except
the walk itself.

>>> p = Product([(("a",), [(1,), (2,), (3,)]), (("b",), [(10,), (20,)])],
...             [{"a": lambda v: v >= 2, "b": lambda v: v == 20}])
>>> p.count(), [(c["a"], c["b"]) for c in p.cells()]
(4, [(1, 10), (1, 20), (2, 10), (3, 10)])
>>> list(p.indices()), p.values((2, 0))  # the same cells as row indices, one per factor
([(0, 0), (0, 1), (1, 0), (2, 0)], {'a': 3, 'b': 10})
>>> p.contains({"a": 2, "b": 20}), p.contains({"a": 2, "b": 10}), p.contains({"a": 9, "b": 10})
(False, True, False)
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Test = Callable[[Any], bool]


@dataclass(frozen=True)
class Factor:
    """Axes varied together and their rows (one value per axis, in `axes` order)."""

    axes: tuple[str, ...]
    rows: tuple[tuple, ...]


class Product:
    """The cells of `factors` (first factor outermost) not excluded by any of `rules`.

    `key(axis, value)` maps a value to the form used for membership (`contains`), e.g. 0 and
    0.0 to the same float for a float axis."""

    def __init__(
        self,
        factors: list[tuple[tuple[str, ...], list[tuple]]],
        rules: list[dict[str, Test]],
        key: Callable[[str, Any], Any] = lambda axis, value: value,
    ):
        self.factors = [Factor(tuple(axes), tuple(rows)) for axes, rows in factors]
        self.full = (1 << len(rules)) - 1  # start state: every rule still possible
        self.masks = [[_row_mask(f, row, rules) for row in f.rows] for f in self.factors]
        self.key = key
        self._index = [
            {tuple(key(a, v) for a, v in zip(f.axes, row)): i for i, row in enumerate(f.rows)}
            for f in self.factors
        ]
        self._hists = [_histogram(m) for m in self.masks]
        self._memo: dict[tuple, int] = {}

    # -- counting ---------------------------------------------------------------------------
    def _count(self, state: int, factors: tuple[int, ...]) -> int:
        """How many choices of a row from each of `factors` turn `state` into 0 (kept)."""
        memo_key = (state, factors)
        if memo_key in self._memo:
            return self._memo[memo_key]
        states = {state: 1}
        for j in factors:
            nxt: dict[int, int] = {}
            for s, n in states.items():
                for m, c in self._hists[j].items():
                    t = s & m
                    nxt[t] = nxt.get(t, 0) + n * c
            states = nxt
        self._memo[memo_key] = states.get(0, 0)
        return self._memo[memo_key]

    def count(self) -> int:
        """The number of kept cells."""
        return self._count(self.full, tuple(range(len(self.factors))))

    # -- walking ----------------------------------------------------------------------------
    def walk(self, payloads: Sequence[Sequence] | None = None) -> Iterator[tuple]:
        """Every kept cell in product order (last factor fastest), as the tuple of
        `payloads[j][i]` for its row i of each factor j; by default the row indices."""
        if payloads is None:
            payloads = [range(len(f.rows)) for f in self.factors]
        if self.factors:
            yield from self._walk(payloads, 0, self.full, ())

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Every kept cell as the index of its row in each factor, in product order."""
        return self.walk()

    def cells(self) -> Iterator[dict]:
        """Every kept cell as {axis: value}, in product order (last factor fastest)."""
        return map(self.values, self.walk())

    def values(self, index: tuple[int, ...]) -> dict:
        """The cell at `index` (a row index per factor) as {axis: value}."""
        cell: dict = {}
        for f, i in zip(self.factors, index):
            cell.update(zip(f.axes, f.rows[i]))
        return cell

    def _walk(self, payloads: Sequence[Sequence], j: int, state: int, prefix: tuple) -> Iterator:
        if state == 0:  # no rule can exclude a cell below here: a plain product (fast)
            plain = itertools.product(*payloads[j:])
            yield from (prefix + tail for tail in plain) if prefix else plain
            return
        rest = tuple(range(j + 1, len(self.factors)))
        for payload, mask in zip(payloads[j], self.masks[j]):
            s = state & mask
            if not rest:
                if s == 0:
                    yield (*prefix, payload)
            elif s == 0 or self._count(s, rest):  # skip branches with no kept cell
                yield from self._walk(payloads, j + 1, s, (*prefix, payload))

    def contains(self, values: dict) -> bool:
        """Whether the cell `values` ({axis: value}, every axis) is a kept cell."""
        state = self.full
        for f, index, masks in zip(self.factors, self._index, self.masks):
            i = index.get(tuple(self.key(a, values[a]) for a in f.axes))
            if i is None:
                return False
            state &= masks[i]
        return state == 0

    # -- a condition on two axes' sum -------------------------------------------------------
    def sum_over(self, a: str, b: str, limit: float) -> tuple[int, dict | None]:
        """Kept cells with `cell[a] + cell[b] > limit`: how many, and one of them (or None).

        Works on the factors holding `a` and `b` only (grouped by mask, pairs counted with a
        sorted search), so it costs about rows(a) x log rows(b), not the number of cells."""
        fa, fb = self._factor_of(a), self._factor_of(b)
        others = tuple(j for j in range(len(self.factors)) if j not in (fa, fb))
        total, found = 0, None
        for state, pairs, example in self._over_limit(fa, fb, a, b, limit):
            completions = self._count(state, others)
            total += pairs * completions
            if found is None and completions:
                found = self._complete(state, others, example)
        return total, found

    def _factor_of(self, axis: str) -> int:
        return next(j for j, f in enumerate(self.factors) if axis in f.axes)

    def _over_limit(self, fa: int, fb: int, a: str, b: str, limit: float) -> Iterator[tuple]:
        """(state, number of (a, b) row pairs over the limit, the first such pair as values) for
        each mask combination, in row order of `a`."""
        A, B = self.factors[fa], self.factors[fb]
        ia, ib = A.axes.index(a), B.axes.index(b)
        if fa == fb:  # a zip group: one row holds both values
            for row, mask in zip(A.rows, self.masks[fa]):
                if row[ia] + row[ib] > limit:
                    yield self.full & mask, 1, dict(zip(A.axes, row))
            return
        groups: dict[int, list] = {}  # b's mask -> its rows, sorted by b's value
        for row, mask in zip(B.rows, self.masks[fb]):
            groups.setdefault(mask, []).append(row)
        sorted_b = {m: sorted(rows, key=lambda r: r[ib]) for m, rows in groups.items()}
        keys_b = {m: [r[ib] for r in rows] for m, rows in sorted_b.items()}
        for row, mask in zip(A.rows, self.masks[fa]):
            for mb, rows in sorted_b.items():
                start = bisect_right(keys_b[mb], limit - row[ia])
                if start < len(rows):
                    example = {**dict(zip(A.axes, row)), **dict(zip(B.axes, rows[-1]))}
                    yield self.full & mask & mb, len(rows) - start, example

    def _complete(self, state: int, factors: tuple[int, ...], values: dict) -> dict:
        """`values` completed with the first row of each factor that keeps a kept cell possible."""
        values = dict(values)
        for k, j in enumerate(factors):
            rest = factors[k + 1 :]
            f = self.factors[j]
            for row, mask in zip(f.rows, self.masks[j]):
                if self._count(state & mask, rest):
                    state &= mask
                    values.update(zip(f.axes, row))
                    break
        return values


def _row_mask(factor: Factor, row: tuple, rules: list[dict[str, Test]]) -> int:
    mask = 0
    values = dict(zip(factor.axes, row))
    for e, rule in enumerate(rules):
        if all(test(values[axis]) for axis, test in rule.items() if axis in values):
            mask |= 1 << e
    return mask


def _histogram(masks: list[int]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for m in masks:
        hist[m] = hist.get(m, 0) + 1
    return hist
