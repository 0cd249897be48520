"""YAML documents that remember where each value came from.

A job spec is loaded into plain Python data plus a map from field paths to their origin
("jobs/x.yaml:7" from the YAML node marks, or "--set grid.batch_size=[1,-3]" for overrides),
so that every validation error can name the file, the line and the field path.

Loading is bounded before anything is built: a spec file must be a regular file of at most 1 MiB;
nesting, alias expansion (anchors inside anchors) and integer literals have fixed limits, and a
key given twice in one mapping is an error naming both lines.

>>> doc = Document.from_text("grid:\\n  batch_size: [1, -3]\\n", "x.yaml")
>>> doc.where(("grid", "batch_size", 1))
'x.yaml:2'
>>> format_path(("grid", "batch_size", 1))
'grid.batch_size[1]'
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import SpecError

Path = tuple  # a tuple of str keys and int list indices


def format_path(path: Iterable[Any]) -> str:
    """Render ("grid", "batch_size", 1) as "grid.batch_size[1]"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix, or "" when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# Bounds on what a spec may cost before it is validated (docs/failures.md, "Bad input never runs").
MAX_SPEC_BYTES = 1 << 20  # a spec file larger than 1 MiB is refused unread
MAX_COMPOSED = 20_000  # YAML nodes as written (a spec has hundreds; each costs ~10-50 us)
MAX_NODES = 100_000  # YAML nodes after expanding aliases and merge keys
MAX_DEPTH = 64  # nesting of mappings and lists, aliases included
MAX_INT_CHARS = 1000  # an integer literal longer than this is refused before int() runs

if yaml.__with_libyaml__:  # libyaml scans and parses ~10x faster; composing stays ours

    class _SafeBase(
        yaml.composer.Composer,
        yaml.cyaml.CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, stream: str):
            yaml.cyaml.CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

else:  # pragma: no cover (PyYAML without libyaml)
    _SafeBase = yaml.SafeLoader


class _BoundedLoader(_SafeBase):
    """A safe loader that refuses nesting past MAX_DEPTH and more than MAX_COMPOSED nodes while
    composing (aliases are counted by `_walk`, after composition)."""

    def __init__(self, stream: str, name: str):
        super().__init__(stream)
        self.name = name
        self.depth = 0
        self.composed = 0

    def _refuse(self, mark: yaml.Mark, message: str) -> SpecError:
        return SpecError(f"{self.name}:{mark.line + 1}", "", message)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self.composed += 1
        if self.composed > MAX_COMPOSED:
            raise self._refuse(mark, f"more than {MAX_COMPOSED} YAML values; a spec has hundreds")
        if self.depth >= MAX_DEPTH:
            raise self._refuse(mark, f"lists and mappings nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_CHARS:
            raise self._refuse(node.start_mark, f"an integer literal of {len(node.value)} "
                               f"characters (at most {MAX_INT_CHARS})")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml(text: str, name: str, origins: dict | None = None) -> tuple[Any, bool]:
    """Parse one YAML document within the bounds above: (plain data, whether there was one);
    `origins`, when given, receives each field path's "file:line".

    Raises SpecError naming `name` and the line for syntax errors, nesting, alias bombs and
    duplicate keys. Aliases are expanded into independent copies (a --set on one copy never
    changes another).
    """
    loader = _BoundedLoader(text, name)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, False
        _walk(node, name, {} if origins is None else origins)  # before construction
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = e.problem or str(e)
        raise SpecError(where, "", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(name, "", f"YAML error: {_first_line(e)}") from None
    except (RecursionError, ValueError, OverflowError, TypeError, MemoryError) as e:
        raise SpecError(name, "", f"cannot load YAML: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        loader.dispose()
    return _unshare(data), True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _walk(root: yaml.Node, name: str, origins: dict) -> None:
    """Visit the node tree as construction will expand it (aliases and `<<` merges included),
    recording each path's "file:line" in `origins`; refuse duplicate keys, and stop once the
    expansion passes MAX_NODES nodes or MAX_DEPTH levels (an alias bomb, a recursive alias)."""
    stack = [(root, (), 0)]
    count = 0
    while stack:
        node, path, depth = stack.pop()
        count += 1
        line = node.start_mark.line + 1
        if count > MAX_NODES:
            raise SpecError(
                f"{name}:{line}", _short_path(path),
                f"the spec expands to more than {MAX_NODES} YAML nodes (anchors and aliases "
                "repeated inside each other?); write the values out or use fewer aliases",
            )
        if depth > MAX_DEPTH:
            raise SpecError(
                f"{name}:{line}", _short_path(path),
                f"nested deeper than {MAX_DEPTH} levels (an alias inside itself?)",
            )
        origins.setdefault(path, f"{name}:{line}")
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path, depth + 1))
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is None:
                    continue
                key_line = key_node.start_mark.line + 1
                if key in seen:
                    raise SpecError(
                        f"{name}:{key_line}", format_path(path + (key,)),
                        f"duplicate key {key!r} (first given at line {seen[key]}); a mapping "
                        "may name each key once",
                    )
                seen[key] = key_line
                # a key's own line is a better location for "unknown key" errors than its value's
                origins[path + (key,)] = f"{name}:{key_line}"
                stack.append((value_node, path + (key,), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, path + (i,), depth + 1))


def _short_path(path: tuple, keep: int = 4) -> str:
    return format_path(path) if len(path) <= keep else format_path(path[:keep]) + "..."


def _unshare(data: Any) -> Any:
    """A copy in which no list or dict appears twice (YAML aliases construct shared objects)."""
    if isinstance(data, dict):
        return {k: _unshare(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_unshare(v) for v in data]
    return data


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """At most `limit` bytes of a regular file, opened without blocking (a FIFO would wait for a
    writer). Raises OSError (FileNotFoundError, ...) or ValueError with the reason."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file (a device, a pipe or a directory)")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit // 2**20} MiB")
    return raw


def read_spec_file(filename: str) -> str:
    """The text of a spec file: a regular file of at most MAX_SPEC_BYTES, UTF-8 (else SpecError)."""
    try:
        raw = read_regular_file(filename, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise SpecError(filename, "", "spec file not found") from None
    except IsADirectoryError:
        raise SpecError(filename, "", "is a directory; give a YAML spec file") from None
    except OSError as e:
        raise SpecError(filename, "", f"cannot read spec file: {e.strerror or e}") from None
    except ValueError as e:
        raise SpecError(filename, "", f"{e}; give a YAML spec file (a few KB)") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(filename, "", f"not UTF-8 text (byte {e.start}): is it a YAML file?") from None


@dataclass
class Document:
    """Plain data from YAML plus the origin of every node (see module docstring)."""

    data: Any
    origins: dict = field(default_factory=dict)  # path tuple -> "file:line" or "--set ..."
    name: str = "<spec>"

    @classmethod
    def from_file(cls, filename: str) -> Document:
        return cls.from_text(read_spec_file(filename), filename)

    @classmethod
    def from_text(cls, text: str, name: str = "<spec>") -> Document:
        origins: dict = {}
        data, found = load_yaml(text, name, origins)
        if not found:
            raise SpecError(name, "", "the spec is empty; expected a mapping of keys")
        return cls(data=data, origins=origins, name=name)

    def where(self, path: Iterable[Any]) -> str:
        """The origin of the longest prefix of `path` that has one (else the file name)."""
        path = tuple(path)
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return self.origins.get((), self.name)

    def error(self, path: Iterable[Any], message: str) -> SpecError:
        """A SpecError located at `path` (raise it)."""
        path = tuple(path)
        return SpecError(self.where(path), format_path(path), message)
