"""The README is the reference: every command and every option that exists is documented there."""

from __future__ import annotations

from pathlib import Path

import click

from cli import main

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_command_and_option_is_in_the_readme() -> None:
    missing = []
    for name, command in main.commands.items():
        if f"replayproxy {name}" not in README:
            missing.append(f"command {name}")
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if opt.startswith("--") and opt not in README and opt != "--help":
                        missing.append(f"{name} {opt}")
    assert not missing, "undocumented in README.md: " + ", ".join(missing)


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("```", 2)[1].strip().splitlines()
    assert len(quick) == 2
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "python -m pytest -n 2 -q" in quick[1] and "python -m pytest -n 2 -q" in ci
