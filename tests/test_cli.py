"""Every command teaches: --help works for each, and the global options behave."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from warmer.cli.main import COMMANDS, cli


def _all_commands() -> list[list[str]]:
    out: list[list[str]] = []
    ctx = click.Context(cli)
    for name in sorted(COMMANDS):
        cmd = cli.get_command(ctx, name)
        assert cmd is not None, name
        out.append([name])
        if isinstance(cmd, click.Group):
            out += [[name, sub] for sub in cmd.list_commands(ctx)]
    return out


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda a: " ".join(a))
def test_every_command_has_help(argv: list[str]) -> None:
    result = CliRunner().invoke(cli, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    # A real description, not just the usage line.
    body = result.output.split("\n", 2)[-1].strip()
    assert len(body) > 40


def test_ingest_help_names_every_format() -> None:
    from analytics.ingest.detect import FORMATS

    text = " ".join(CliRunner().invoke(cli, ["ingest", "--help"]).output.split())
    described = text.split("Formats are detected per file:", 1)[1].split("warmer ingest")[0]
    assert [f for f in FORMATS if f not in described] == []


def test_unknown_command_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_readme_lists_every_command() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in COMMANDS if f"`warmer {name}" not in section]
    assert missing == []
