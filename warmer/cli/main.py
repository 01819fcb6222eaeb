"""The ``warmer`` command: one group, one module per command family under ``warmer.cli``."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from warmer.cli.common import CONTEXT_SETTINGS, Usage, configure_logging

# Each entry is a module that defines ``commands: list[click.Command]``.
COMMAND_MODULES = [
    "warmer.cli.windows",
    "warmer.cli.ref",
    "warmer.cli.sandbox",
    "warmer.cli.bundle",
    "warmer.cli.nodes",
    "warmer.cli.inspect",
]


@click.group(context_settings=CONTEXT_SETTINGS)
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


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        cli.add_command(_command)


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
