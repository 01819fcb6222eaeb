"""``warmer nodes``: pre-pull ranked images onto CI nodes' engines, and show what they hold."""

from __future__ import annotations

import math

import click

from warmer import nodes
from warmer.cli.bundle import MAX_TOP, select_images
from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option

_node_option = click.option(
    "--node",
    "node_urls",
    multiple=True,
    required=True,
    help="Engine URL as the Docker SDK takes it: unix:///run/docker.sock, tcp://h:2375, ssh://u@h.",
)
_image_options = [
    click.option("--region", help="Use the region's stored ranking."),
    click.option("--top", type=click.IntRange(1, MAX_TOP), help="Only the N best-ranked images."),
    click.option("--images", "images_file", type=click.Path(exists=True, dir_okay=False)),
    click.option("--image", "images", multiple=True, help="An image (repeatable)."),
]


def _with_images(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_image_options):
        f = option(f)
    return f


@click.group("nodes", context_settings=CONTEXT_SETTINGS)
def nodes_group() -> None:
    """Pre-pull images onto CI nodes through their Docker API (pulls go via their mirror)."""


@nodes_group.command("prepull")
@_node_option
@_with_images
@click.option("--per-node", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option("--timeout", type=click.FloatRange(1, 86_400), default=600, show_default=True)
@json_option
@click.pass_context
def prepull_command(
    ctx: click.Context,
    node_urls: tuple[str, ...],
    region: str | None,
    top: int | None,
    images_file: str | None,
    images: tuple[str, ...],
    per_node: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Pull the top-ranked (or given) images into each node's engine.

    \b
      warmer nodes prepull --region eu --top 20 --node ssh://ci@runner-1 --node ...
    Nodes run in parallel, one pull at a time on each (--per-node). Reports per node what
    was pulled, already present, or failed; exits 1 if anything failed.
    """
    if not math.isfinite(timeout):  # nan passes click's range check
        raise BadInput(f"--timeout {timeout}: not a number of seconds")
    refs = select_images(ctx, region, top, images_file, images)
    if not as_json:

        def show(node: str, image: str, outcome: str) -> None:
            click.echo(f"{node}  {outcome:8} {image}")

    reports = nodes.prepull(node_urls, refs, per_node, timeout, on_result=None if as_json else show)
    failed = 0
    for r in reports:
        if as_json:
            emit_json(r.to_json())
        elif r.error:
            click.echo(f"error: node {r.node}: {r.error}", err=True)
        else:
            for f in r.failed:
                click.echo(f"error: node {r.node}: {f.image}: {f.error}", err=True)
            click.echo(
                f"{r.node}: pulled {len(r.pulled)}, present {len(r.present)}, "
                f"failed {len(r.failed)}"
            )
        failed += (r.error is not None) + len(r.failed)
    if failed:
        raise WorkFailed(f"{failed} failures across {len(reports)} nodes")


@nodes_group.command("status")
@_node_option
@_with_images
@json_option
@click.pass_context
def status_command(
    ctx: click.Context,
    node_urls: tuple[str, ...],
    region: str | None,
    top: int | None,
    images_file: str | None,
    images: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show which of the ranked (or given) images each node's engine holds."""
    refs = select_images(ctx, region, top, images_file, images)
    unreachable = 0
    for s in nodes.status(node_urls, refs):
        if as_json:
            emit_json(s.to_json())
        elif s.error:
            click.echo(f"error: node {s.node}: {s.error}", err=True)
        else:
            held = sum(i.present for i in s.images)
            click.echo(f"{s.node}: holds {held} of {len(s.images)}")
            for i in s.images:
                digest = i.repo_digests[0].split("@", 1)[-1] if i.repo_digests else ""
                click.echo(f"  {'yes' if i.present else 'no ':3}  {i.image}  {digest}")
        unreachable += s.error is not None
    if unreachable:
        raise WorkFailed(f"{unreachable} nodes unreachable")
    if not refs:
        raise BadInput("no images to look for")


commands = [nodes_group]
