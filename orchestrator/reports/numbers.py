"""Numbers as table text, a column at a time, in Arrow kernels.

    fixed(pa.array([1234.56, None, -0.04]), 1)   # ['1,234.6', '-', '-0.0']

The same text as f"{v:,.{digits}f}": the cast from float to decimal rounds the exact binary value
as Python's formatting does, so only the thousands separators are added here. A 100k-cell
summary formats about half a million numbers; one Python format call each is most of its time.
Columns holding NaN, infinities or magnitudes past 1e17 fall back to Python's formatting.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

MISSING = "-"
_LARGEST = 1e17  # decimal128(38, d) holds these exactly, with room to spare


def fixed(values: pa.Array | pa.ChunkedArray | list, digits: int) -> list[str]:
    """Each value with `digits` decimals and thousands separators; MISSING for null.

    >>> fixed([1234567.891, 0.15, None, -0.04, 2.675], 2)
    ['1,234,567.89', '0.15', '-', '-0.04', '2.67']
    """
    return pc.fill_null(fixed_array(values, digits), MISSING).to_pylist()


def fixed_array(values: pa.Array | pa.ChunkedArray | list, digits: int) -> pa.Array:
    """`fixed` as an Arrow string array, null for null."""
    arr = _floats(values)
    if not _exact(arr):
        fmt = f"{{:,.{digits}f}}".format
        return pa.array([None if v is None else fmt(v) for v in arr.to_pylist()], pa.string())
    text = pc.cast(pc.cast(pc.abs(arr), pa.decimal128(38, digits)), pa.string())
    tail = digits + 1 if digits else 0  # ".d..." after the whole part
    if (pc.max(pc.utf8_length(text)).as_py() or 0) > tail + 3:  # some value is 1,000 or more
        whole = pc.utf8_slice_codeunits(text, 0, -tail) if tail else text
        grouped = _thousands(whole)
        text = (
            pc.binary_join_element_wise(grouped, pc.utf8_slice_codeunits(text, -tail), "")
            if tail
            else grouped
        )
    # -0.04 and -0.0 keep their sign, as Python writes them (1 / -0.0 is -inf)
    zero_sign = pc.less(pc.divide(1.0, arr), 0.0)
    negative = pc.or_(pc.less(arr, 0.0), pc.and_(pc.equal(arr, 0.0), zero_sign))
    if not pc.any(negative).as_py():
        return text
    return pc.if_else(negative, pc.binary_join_element_wise("-", text, ""), text)


def _floats(values: pa.Array | pa.ChunkedArray | list) -> pa.Array:
    if isinstance(values, list):
        return pa.array(values, pa.float64())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return pc.cast(values, pa.float64())


def _exact(arr: pa.Array) -> bool:
    """Whether every value is finite and small enough for the decimal cast."""
    if arr.null_count == len(arr):
        return True
    finite = pc.all(pc.is_finite(arr)).as_py()
    return bool(finite) and pc.max(pc.abs(arr)).as_py() < _LARGEST


def _thousands(digits: pa.Array) -> pa.Array:
    """'1234567' -> '1,234,567' (digits only, no sign)."""
    length = pc.utf8_length(digits)
    if (pc.max(length).as_py() or 0) <= 3:
        return digits
    head = _thousands(pc.utf8_slice_codeunits(digits, 0, -3))
    grouped = pc.binary_join_element_wise(head, pc.utf8_slice_codeunits(digits, -3), ",")
    return pc.if_else(pc.greater(length, 3), grouped, digits)
