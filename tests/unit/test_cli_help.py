"""`--help` reads like help for a person: no type placeholders, every command described."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from clients.cli.app import build_app

APP = build_app()
COMMANDS = sorted(typer.main.get_command(APP).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_no_type_placeholders(command: str):
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(APP, args, env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "Usage:" in result.output


def test_the_server_option_shows_its_default():
    result = CliRunner().invoke(APP, ["--help"], env={"COLUMNS": "120", "NO_COLOR": "1"})
    assert "[default: where you logged in" in result.output
