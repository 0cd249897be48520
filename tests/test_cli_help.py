"""`--help` shows examples and the exit codes, taken from the error classes themselves."""

from __future__ import annotations

import pytest

from orchestrator import errors
from orchestrator.cli import main


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["", "submit", "summarize", "query", "compare", "plot"])
def test_every_command_has_examples_and_exit_codes(capsys, command):
    text = help_text(capsys, *([command] if command else []))
    examples = text[text.index("examples:") :]
    assert f"python -m orchestrator {command}".rstrip() in examples
    codes = examples[examples.index("exit codes:") :]
    assert "\n  0    " in codes and f"\n  {errors.SpecError.exit_code}    invalid input" in codes
    assert f"\n  {errors.StorageError.exit_code}    storage fault" in codes


def test_submit_lists_failed_cells_and_interrupts(capsys):
    text = help_text(capsys, "submit")
    assert "\n  1    some cells failed (the rest are saved)" in text
    assert f"\n  {errors.Interrupted.exit_code}  interrupted: finished cells kept" in text
    assert "--wide" in text and "submit jobs/sweep.yaml --dry-run" in text
    main_text = help_text(capsys)
    assert "submit: some cells failed; compare --fail-on-change" in main_text
