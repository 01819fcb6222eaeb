"""The ``warmer`` command: one group, one module per command family under ``warmer.cli``."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, Usage, WorkFailed, configure_logging

# Command name -> (the module under warmer.cli that defines it in ``commands``, its summary).
# Modules are imported only when their command runs, so `warmer ref` and `warmer --help` do
# not pay for pandas; the summaries are what `--help` lists (a test keeps them equal to the
# commands' own).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "warmer.cli.demo",
        "Run the whole story on real registries on 127.0.0.1, printing each command.",
    ),
    "ref": ("warmer.cli.ref", "Normalise image references as Docker does."),
    "inspect": (
        "warmer.cli.inspect",
        "Show what IMAGE resolves to: digest, media type, platforms, layers and sizes.",
    ),
    "sandbox": (
        "warmer.cli.sandbox",
        "Start, stop and check a sandbox of real registries on 127.0.0.1.",
    ),
    "config": ("warmer.cli.config", "Inspect and validate the configuration."),
    "probe": (
        "warmer.cli.probe",
        "Measure how MIRROR behaves, with a canary image pushed to its upstream.",
    ),
    "plan": (
        "warmer.cli.warm",
        "Show what a warm run would fetch, mirror by mirror, without fetching it.",
    ),
    "run": (
        "warmer.cli.warm",
        "Warm the region's mirrors: plan, then fetch through each tier, top down.",
    ),
    "status": ("warmer.cli.warm", "Recent runs, what each mirror holds, and incidents."),
    "windows": ("warmer.cli.windows", "Show the coming maintenance windows in local time and UTC."),
    "ingest": ("warmer.cli.ingest", "Read CI, kubelet and registry logs into hourly usage counts."),
    "refs": (
        "warmer.cli.ingest",
        "List image references named in Dockerfiles, compose, Kubernetes and CI files.",
    ),
    "rank": (
        "warmer.cli.analyze",
        "Predicted pulls per image tag for the next day and window, with the reasons.",
    ),
    "backtest": (
        "warmer.cli.analyze",
        "Rolling-origin backtest: the ensemble and the model vs each baseline and the oracle.",
    ),
    "generate": (
        "warmer.cli.analyze",
        "Write a synthetic CI workload: logs in every format, repositories, catalogue.json.",
    ),
    "export": (
        "warmer.cli.bundle",
        "Write images into an OCI image layout with a bundle.json of checksums.",
    ),
    "import": (
        "warmer.cli.bundle",
        "Verify a bundle and push it into a registry (never a pull-through mirror).",
    ),
    "nodes": (
        "warmer.cli.nodes",
        "Pre-pull images onto CI nodes through their Docker API (pulls go via their mirror).",
    ),
    "refresh": (
        "warmer.cli.fresh",
        "Re-resolve tracked tags (HEAD only) and warm what moved or expired.",
    ),
    "drift": (
        "warmer.cli.fresh",
        "The drift history: tags that moved upstream and tiers that served them stale.",
    ),
    "pins": (
        "warmer.cli.fresh",
        "Stale digest pins in Dockerfiles and manifests, and what to pin to.",
    ),
    "verify": (
        "warmer.cli.fresh",
        "Find what the mirrors lost, re-read and hash the rest, compare tags upstream.",
    ),
    "reconcile": (
        "warmer.cli.fresh",
        "Correct the ledger with what the mirrors really hold, without warming.",
    ),
    "serve": (
        "warmer.cli.serve",
        "Run the scheduler service: ingest, rank, warm in windows, refresh, verify, prune.",
    ),
    "jobs": (
        "warmer.cli.serve",
        "List the service's jobs, their next run times and who holds their lease now.",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = COMMANDS[cmd_name][0]
        commands: list[click.Command] = importlib.import_module(module).commands
        for command in commands:
            if command.name == cmd_name:
                return command
        raise RuntimeError(f"{module} does not define the command {cmd_name!r}")

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a credential source or a database that cannot be used (raised
        from deep inside the work) becomes one line and exit 2 (bad config) or 1."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            mapped = _mapped(exc)
            if mapped is None:
                raise
            raise mapped from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the summaries above, importing no command module."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(name, _shorten(COMMANDS[name][1], limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _mapped(exc: Exception) -> click.ClickException | None:
    """The CLI error for an exception of a lower layer that is bad input or failed work."""
    # Imported here: only a failing command pays for them.
    from warmer.oci.auth import CredentialsError
    from warmer.store.dburl import DatabaseUnavailable, DatabaseURLError

    if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        return _mapped(inner) if isinstance(inner, Exception) else None
    if isinstance(exc, CredentialsError | DatabaseURLError):
        return BadInput(str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return WorkFailed(str(exc))
    return None


def _shorten(text: str, limit: int) -> str:
    """``text`` cut at a word to fit ``limit`` characters, with "..." when cut (as click does)."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 3, 1)].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "..."


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
