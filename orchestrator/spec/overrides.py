"""Command-line overrides: `--set measure.repeats=5 --set grid.batch_size=[1,8]`.

Keys are dotted field paths (list items as `models[0].tag` or `models.0.tag`); values are parsed as
YAML, so `5` is an int, `[1,8]` a list and `null` is None. Overrides are applied to the raw
document before validation, and errors in an overridden field name the `--set` they came from.

>>> parse_override("grid.batch_size=[1, 8]")
(('grid', 'batch_size'), [1, 8])
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.spec.source import MAX_DEPTH, Document, load_yaml

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[0-9]{1,9}\])*)$")
MAX_KEY_CHARS = 500


def parse_override(text: str) -> tuple[tuple, Any]:
    """Split "a.b[0].c=VALUE" into a path tuple and the YAML-parsed value."""
    where = f"--set {_short(text)}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError(where, "", "expected KEY=VALUE, e.g. --set measure.repeats=5")
    if len(key) > MAX_KEY_CHARS:
        raise SpecError(where, "", f"the key is longer than {MAX_KEY_CHARS} characters")
    path: list = []
    for segment in key.split("."):
        if segment.isascii() and segment.isdigit() and path:
            path.append(int(segment))
            continue
        m = _SEGMENT.fullmatch(segment)
        if not m:
            raise SpecError(where, key, f"malformed key segment {segment!r}")
        path.append(m.group(1))
        path.extend(int(i) for i in re.findall(r"\[([0-9]+)\]", m.group(2)))
    if len(path) > MAX_DEPTH:
        raise SpecError(where, key[:60] + "...", f"more than {MAX_DEPTH} key segments")
    if not raw.strip():
        return tuple(path), None
    try:
        value, _ = load_yaml(raw, where)
    except SpecError as e:
        problem = e.message.removeprefix("YAML syntax error: ")
        raise SpecError(where, key, f"cannot parse value {_short(raw, 40)!r} as YAML: {problem}") from None
    return tuple(path), value


def apply_overrides(doc: Document, overrides: list[str]) -> Document:
    """Apply each "K=V" to `doc` in order (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        where = f"--set {_short(text)}"
        if not isinstance(doc.data, dict):
            raise SpecError(where, "", "the spec is not a mapping")
        node = doc.data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise doc_error(where, path[: i + 1], "no such list item")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise doc_error(where, path[: i + 1], "parent is not a mapping")
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise doc_error(where, path, "no such list item")
        elif not isinstance(node, dict):
            raise doc_error(where, path, "parent is not a mapping")
        node[last] = value
        for known in [p for p in doc.origins if p[: len(path)] == path]:
            del doc.origins[known]
        doc.origins[path] = where
        for i in range(1, len(path)):
            doc.origins.setdefault(path[:i], where)
    return doc


def _short(text: str, limit: int = 80) -> str:
    """An override as error messages quote it: one line, at most `limit` characters."""
    one_line = text.replace("\n", "\\n")
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def doc_error(where: str, path: tuple, message: str) -> SpecError:
    from orchestrator.spec.source import format_path

    return SpecError(where, format_path(path), message)
