"""The ``warmer`` command: one group, one module per command family under ``warmer.cli``."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from warmer.cli.common import CONTEXT_SETTINGS, Usage, configure_logging

# Command name -> the module under warmer.cli that defines it (in ``commands``). Modules are
# imported only when their command runs, so `warmer ref` does not pay for pandas.
COMMANDS: dict[str, str] = {
    "demo": "warmer.cli.demo",
    "ref": "warmer.cli.ref",
    "inspect": "warmer.cli.inspect",
    "sandbox": "warmer.cli.sandbox",
    "config": "warmer.cli.config",
    "plan": "warmer.cli.warm",
    "run": "warmer.cli.warm",
    "status": "warmer.cli.warm",
    "windows": "warmer.cli.windows",
    "ingest": "warmer.cli.ingest",
    "refs": "warmer.cli.ingest",
    "rank": "warmer.cli.analyze",
    "backtest": "warmer.cli.analyze",
    "generate": "warmer.cli.analyze",
    "export": "warmer.cli.bundle",
    "import": "warmer.cli.bundle",
    "nodes": "warmer.cli.nodes",
    "refresh": "warmer.cli.fresh",
    "drift": "warmer.cli.fresh",
    "pins": "warmer.cli.fresh",
    "verify": "warmer.cli.fresh",
    "serve": "warmer.cli.serve",
    "jobs": "warmer.cli.serve",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        commands: list[click.Command] = importlib.import_module(module).commands
        for command in commands:
            if command.name == cmd_name:
                return command
        raise RuntimeError(f"{module} does not define the command {cmd_name!r}")


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--config",
    "config_path",
    envvar="WARMER_CONFIG",
    default="warmer.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Config file (TOML). Also read from $WARMER_CONFIG.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log line format on stderr.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="registry-warmer")
@click.pass_context
def cli(ctx: click.Context, config_path: str, log_format: str, verbose: int) -> None:
    """Keep container registry mirrors warm.

    Predict which images CI will pull, then fill the pull-through mirrors (central tier
    first, then regional) inside maintenance windows, under a bandwidth cap, every byte
    verified. Start with `warmer sandbox up` for a local set of real registries, then
    `warmer plan` and `warmer run`.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    configure_logging(log_format, verbose)


def main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="warmer")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Usage as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        logging.getLogger("warmer").warning("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
