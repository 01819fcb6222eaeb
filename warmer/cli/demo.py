"""``warmer demo``: the main job end to end on a local sandbox of real registries."""

from __future__ import annotations

import json
from pathlib import Path

import click

from warmer.cli.common import CONTEXT_SETTINGS, WorkFailed, json_option


@click.command("demo", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--dir",
    "directory",
    default=".sandbox/demo",
    show_default=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the sandbox, the generated CI data and the database go.",
)
@click.option("--scale", default=0.3, show_default=True, help="Catalogue size (1.0 = ~500 MB).")
@click.option("--weeks", default=3, show_default=True, help="Weeks of generated CI history.")
@click.option("--top", default=12, show_default=True, help="Images warmed per region.")
@click.option("--keep", is_flag=True, help="Leave the sandbox running at the end.")
@json_option
def demo_command(
    directory: Path, scale: float, weeks: int, top: int, keep: bool, as_json: bool
) -> None:
    """Run the whole story on real registries on 127.0.0.1, printing each command.

    \b
    sandbox up -> generate CI logs and repositories -> ingest -> refs -> rank -> backtest
    -> sign the ranked images -> plan -> run (eu and us, through central; signatures with
    their images) -> skopeo pulls from a regional mirror with the upstream down, and the
    image's cosign signature is read there and verified -> status -> sandbox down.
    The database stays in DIR for the notebooks. Exit 1 if a step fails.
    """
    from warmer.demo import Demo, DemoError, summary

    demo = Demo(directory.resolve(), scale=scale, weeks=weeks, top=top, keep=keep,
                echo=(lambda s: None) if as_json else click.echo)  # fmt: skip
    try:
        results = demo.run()
    except DemoError as exc:
        raise WorkFailed(str(exc)) from None
    if as_json:
        click.echo(json.dumps(results, default=str))
    else:
        click.echo(summary(results))
    if not results.get("proof", {}).get("ok"):
        raise WorkFailed("the regional mirror did not serve the warmed image")
    if not (results["proof"].get("signature") or {}).get("ok"):
        raise WorkFailed("the warmed image's signature did not verify at the regional mirror")


commands = [demo_command]
