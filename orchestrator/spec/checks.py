"""Small value checks shared by the spec parser (which adds file/line/path) and the spec
dataclasses' `__post_init__` (which raise ValueError for programmatic use).

Each check returns None when the value is fine, else the reason, phrased to follow the field
path: "must be a positive integer, got -3".

>>> positive_int(-3)
'must be a positive integer, got -3'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

METHODS = ("naive", "cached", "cached_graph")
DTYPES = ("float32", "bfloat16", "float16")
TAG_RE = re.compile(r"^d\[(\d+(?:,\d+)*)\]-h\[(\d+(?:,\d+)*)\]$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else f"must be a positive integer, got {v!r}"


def nonneg_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else f"must be an integer >= 0, got {v!r}"


def any_int(v: Any) -> str | None:
    return None if _is_int(v) else f"must be an integer, got {v!r}"


def optional_positive_int(v: Any) -> str | None:
    return None if v is None else positive_int(v)


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else f"must be a positive number, got {v!r}"


def temperature(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else f"must be a number >= 0, got {v!r}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def method(v: Any) -> str | None:
    if v in METHODS:
        return None
    return f"unknown method {v!r}; expected one of {', '.join(METHODS)}"


def dtype(v: Any) -> str | None:
    if v in DTYPES:
        return None
    return f"unknown dtype {v!r}; expected one of {', '.join(DTYPES)}"


def optional_text(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else f"must be a string, got {v!r}"


def job_name(v: Any) -> str | None:
    if isinstance(v, str) and NAME_RE.match(v):
        return None
    return f"must be a name of letters, digits, '.', '_' or '-', got {v!r}"


def parse_tag(tag: Any) -> tuple[list[int], list[int]] | str:
    """("d[2,4]-h[128,256]") -> ([2, 4], [128, 256]), or the reason it is malformed."""
    hint = "expected a nanochat UNet tag like 'd[2,4]-h[128,256]' (depth and width per stage)"
    if not isinstance(tag, str):
        return f"must be a string, got {tag!r}; {hint}"
    m = TAG_RE.match(tag.strip())
    if not m:
        return f"malformed model tag {tag!r}; {hint}"
    depths = [int(x) for x in m.group(1).split(",")]
    widths = [int(x) for x in m.group(2).split(",")]
    if len(depths) != len(widths):
        return f"malformed model tag {tag!r}: {len(depths)} depths but {len(widths)} widths"
    if any(d <= 0 or d % 2 for d in depths):
        return f"malformed model tag {tag!r}: each stage depth must be a positive even number"
    if any(w <= 0 for w in widths):
        return f"malformed model tag {tag!r}: widths must be positive"
    return depths, widths


def model_tag(v: Any) -> str | None:
    parsed = parse_tag(v)
    return parsed if isinstance(parsed, str) else None
