"""`--help` prints a command's examples as written, one command a line (click rewraps the
other paragraphs)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from archivist.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_example_line_of_a_command_stays_a_line_of_its_own(name: str) -> None:
    shown = CliRunner().invoke(main, [name, "--help"], terminal_width=80)

    assert shown.exit_code == 0, shown.output
    examples = [
        line.strip() for line in shown.output.splitlines() if line.startswith("      archivist ")
    ]
    assert examples, shown.output
    assert all(example.count("archivist ") == 1 for example in examples), shown.output


def test_pause_help_lists_both_examples_on_their_own_lines() -> None:
    shown = CliRunner().invoke(main, ["pause", "--help"], terminal_width=80)

    assert "\n      archivist pause chat_messages\n" in shown.output
