"""YAML documents that remember where each value came from.

A job spec is loaded into plain Python data plus a map from field paths to their origin
("jobs/x.yaml:7" from the YAML node marks, or "--set grid.batch_size=[1,-3]" for overrides),
so that every validation error can name the file, the line and the field path.

>>> doc = Document.from_text("grid:\\n  batch_size: [1, -3]\\n", "x.yaml")
>>> doc.where(("grid", "batch_size", 1))
'x.yaml:2'
>>> format_path(("grid", "batch_size", 1))
'grid.batch_size[1]'
"""

from __future__ import annotations

import difflib
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


@dataclass
class Document:
    """Plain data from YAML plus the origin of every node (see module docstring)."""

    data: Any
    origins: dict = field(default_factory=dict)  # path tuple -> "file:line" or "--set ..."
    name: str = "<spec>"

    @classmethod
    def from_file(cls, filename: str) -> Document:
        try:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SpecError(filename, "", "spec file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(filename, "", f"cannot read spec file: {e}") from None
        return cls.from_text(text, filename)

    @classmethod
    def from_text(cls, text: str, name: str = "<spec>") -> Document:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise SpecError(name, "", "the spec is empty; expected a mapping of keys")
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f"{name}:{mark.line + 1}" if mark else name
            problem = e.problem or str(e)
            raise SpecError(where, "", f"YAML syntax error: {problem}") from None
        except yaml.YAMLError as e:
            raise SpecError(name, "", f"YAML error: {e}") from None
        finally:
            loader.dispose()
        origins: dict = {}
        _collect_marks(node, (), name, origins)
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


def _collect_marks(node: yaml.Node, path: tuple, name: str, out: dict) -> None:
    out[path] = f"{name}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            _collect_marks(value_node, path + (key,), name, out)
            # a key's own line is a better location for "unknown key" errors than its value's
            out[path + (key,)] = f"{name}:{key_node.start_mark.line + 1}"
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_marks(item, path + (i,), name, out)
