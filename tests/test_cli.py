"""Every command teaches: --help works for each, and the global options behave."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_status_names_only_mirrors_with_content_expiring_before_the_next_window(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from warmer.store.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = tmp_path / "warmer.toml"
    cfg.write_text(
        f'[database]\nurl = "{url}"\n'
        '[upstreams.hub]\nurl = "http://127.0.0.1:1"\naliases = ["docker.io"]\n'
        '[mirrors.central]\nurl = "http://127.0.0.1:2"\nparent = "hub"\n'
        '[mirrors.eu]\nurl = "http://127.0.0.1:3"\nparent = "central"\n'
        '[regions.eu]\nmirrors = ["eu"]\n'
        'windows = [{ cron = "0 1 * * *", duration = "3h", timezone = "UTC" }]\n'
    )
    ledger = Ledger(url)
    now = datetime.now(UTC)
    for mirror, ttl in (("eu", timedelta(minutes=1)), ("central", timedelta(days=30))):
        ledger.record_holding(
            mirror=mirror, instance="", repository="library/alpine", kind="blob",
            digest="sha256:" + "a" * 64, size=2048, now=now, ttl=ttl, run_id=None,
        )  # fmt: skip
    human = CliRunner().invoke(cli, ["--config", str(cfg), "status"])
    assert human.exit_code == 0, human.output
    text = " ".join(human.output.split())
    assert "eu: 1 object(s), 2.0 KiB expire before the next window" in text
    assert "central: 0 object(s)" not in text  # nothing to say about it
    listed = CliRunner().invoke(cli, ["--config", str(cfg), "status", "--json"])
    rows = json.loads(listed.output)["expiring_before_next_window"]
    assert {(r["mirror"], r["objects"]) for r in rows} == {("central", 0), ("eu", 1)}
