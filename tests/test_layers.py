"""Imports run one way: CLI -> reports -> run -> spec/workers -> engine (README, DESIGN).

Read from the source with `ast`, so an import inside a function counts as much as one at the top.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = ("orchestrator.cli", "orchestrator.cli_help", "orchestrator.results_cli", "orchestrator.__main__")
# package -> the modules it must never import (a prefix matches its submodules)
FORBIDDEN = {
    "engine": ("workers", "orchestrator", "ray"),
    "workers": ("orchestrator",),
    "orchestrator/spec": ("orchestrator.run", "orchestrator.reports", *CLI),
    "orchestrator/run": ("orchestrator.reports", *CLI),
    "orchestrator/reports": CLI,
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `path`, `from a import b` also as `a.b`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = {}  # one line per import statement: its first forbidden module
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.setdefault((path, line), f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return list(bad.values())


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    assert (ROOT / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_the_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    """The checker itself: a function-level import of the readers from the run is caught."""
    run = tmp_path / "orchestrator" / "run"
    run.mkdir(parents=True)
    (run / "x.py").write_text("def f():\n    from orchestrator.reports import dataset\n")
    (run / "y.py").write_text("from orchestrator import reports\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations("orchestrator/run", FORBIDDEN["orchestrator/run"]) == [
        "orchestrator/run/x.py:2: imports orchestrator.reports",
        "orchestrator/run/y.py:1: imports orchestrator.reports",
    ]
