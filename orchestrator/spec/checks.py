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
import reprlib
from collections.abc import Callable
from typing import Any

METHODS = ("naive", "cached", "cached_graph")
DTYPES = ("float32", "bfloat16", "float16")
# \Z, not $: "$" also matches before a trailing newline ("job\n" would pass)
TAG_RE = re.compile(r"^d\[([0-9]{1,9}(?:,[0-9]{1,9})*)\]-h\[([0-9]{1,9}(?:,[0-9]{1,9})*)\]\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
MAX_NAME_CHARS = 100  # a directory name, with room for the path around it
INT_MAX = 2**63 - 1  # results are int64 columns; the engine's seeds and sizes are int64 too
# Model tags past these describe no model that can be built (docs/failures.md).
MAX_STAGES = 16
MAX_STAGE_DEPTH = 1024
MAX_WIDTH = 1 << 17
MIN_TEMPERATURE = 1e-30  # logits (soft-capped at 15, float32) / temperature must stay finite

Check = Callable[[Any], "str | None"]
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def show(v: Any, limit: int = 60) -> str:
    """repr(v) cut to `limit` characters, for one-line messages about any value."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**limit:
        return f"an integer of {len(str(abs(v)))} digits"  # str() of a huge int is slow
    text = _REPR.repr(v)  # bounded: a value may be a huge or self-referencing structure
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))  # float() of an int past ~1.8e308 raises OverflowError
    except OverflowError:
        return False


def _int_in_range(v: Any, minimum: int) -> str | None:
    if not _is_int(v) or v < minimum:
        return None  # the caller's message applies
    if v > INT_MAX:
        return f"must be at most 2**63 - 1 ({INT_MAX}), got {show(v)}"
    return None


def positive_int(v: Any) -> str | None:
    if _is_int(v) and v > 0:
        return _int_in_range(v, 1)
    return f"must be a positive integer, got {show(v)}"


def nonneg_int(v: Any) -> str | None:
    if _is_int(v) and v >= 0:
        return _int_in_range(v, 0)
    return f"must be an integer >= 0, got {show(v)}"


def any_int(v: Any) -> str | None:
    if _is_int(v) and -INT_MAX - 1 <= v <= INT_MAX:
        return None
    if _is_int(v):
        return f"must lie within 64 bits (|value| < 2**63), got {show(v)}"
    return f"must be an integer, got {show(v)}"


def optional_positive_int(v: Any) -> str | None:
    return None if v is None else positive_int(v)


def positive_number(v: Any) -> str | None:
    if _is_number(v) and v > 0:
        return None
    if _is_int(v) and v > 0:
        return f"must be a positive number that fits a float (below 1.8e308), got {show(v)}"
    return f"must be a positive number, got {show(v)}"


def temperature(v: Any) -> str | None:
    if _is_number(v) and 0 < v < MIN_TEMPERATURE:
        return (f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {show(v)} (float32 "
                "logits divided by it overflow and every sample fails)")
    if _is_number(v) and v >= 0:
        return None
    if _is_int(v) and v > 0:
        return f"must be a number >= 0 that fits a float (below 1.8e308), got {show(v)}"
    return f"must be a number >= 0, got {show(v)}"


def seed(v: Any) -> str | None:
    """The engine seeds torch generators: an integer in [0, 2**63)."""
    if _is_int(v) and 0 <= v <= INT_MAX:
        return None
    return f"must be an integer from 0 to 2**63 - 1, got {show(v)}"


def prompt(v: Any) -> str | None:
    """None (synthetic prompts) or a non-empty text (the engine refuses an empty one)."""
    if v is None or (isinstance(v, str) and v):
        return None
    if isinstance(v, str):
        return "must be a non-empty text (or leave it out for synthetic prompts), got " + show(v)
    return f"must be a string, got {show(v)}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {show(v)}"


def method(v: Any) -> str | None:
    if isinstance(v, str) and v in METHODS:
        return None
    return f"unknown method {show(v)}; expected one of {', '.join(METHODS)}"


def dtype(v: Any) -> str | None:
    if isinstance(v, str) and v in DTYPES:
        return None
    return f"unknown dtype {show(v)}; expected one of {', '.join(DTYPES)}"


def optional_text(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else f"must be a string, got {show(v)}"


def job_name(v: Any) -> str | None:
    if isinstance(v, str) and NAME_RE.match(v) and len(v) <= MAX_NAME_CHARS:
        return None
    return (f"must be a name of letters, digits, '.', '_' or '-' (at most {MAX_NAME_CHARS}, "
            f"the first a letter or digit: it names a directory), got {show(v)}")


def parse_tag(tag: Any) -> tuple[list[int], list[int]] | str:
    """("d[2,4]-h[128,256]") -> ([2, 4], [128, 256]), or the reason it is malformed."""
    hint = "expected a nanochat UNet tag like 'd[2,4]-h[128,256]' (depth and width per stage)"
    if not isinstance(tag, str):
        return f"must be a string, got {show(tag)}; {hint}"
    m = TAG_RE.match(tag.strip()) if len(tag) <= 400 else None
    if not m:
        return f"malformed model tag {show(tag)}; {hint}"
    depths = [int(x) for x in m.group(1).split(",")]
    widths = [int(x) for x in m.group(2).split(",")]
    if len(depths) != len(widths):
        return f"malformed model tag {tag!r}: {len(depths)} depths but {len(widths)} widths"
    if any(d <= 0 or d % 2 for d in depths):
        return f"malformed model tag {tag!r}: each stage depth must be a positive even number"
    if any(w <= 0 for w in widths):
        return f"malformed model tag {tag!r}: widths must be positive"
    if len(depths) > MAX_STAGES:
        return f"model tag {show(tag)} has {len(depths)} stages; at most {MAX_STAGES} are supported"
    if max(depths) > MAX_STAGE_DEPTH:
        return (f"model tag {show(tag)}: a stage of {max(depths)} blocks; at most "
                f"{MAX_STAGE_DEPTH} per stage are supported")
    if max(widths) > MAX_WIDTH:
        return f"model tag {show(tag)}: width {max(widths)} is above the supported {MAX_WIDTH}"
    return depths, widths


def model_tag(v: Any) -> str | None:
    parsed = parse_tag(v)
    return parsed if isinstance(parsed, str) else None
