"""``warmer sandbox up|down|status``: real registries on loopback to try the warmer on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option
from warmer.oci.registry import RegistryError
from warmer.sandbox.procs import SandboxError
from warmer.sandbox.topology import Sandbox
from warmer.units import format_size, parse_rate

dir_option = click.option(
    "--dir",
    "directory",
    default=".sandbox",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the sandbox's data, logs, state.json and warmer.toml.",
)


def _load(directory: Path) -> Sandbox | None:
    try:
        return Sandbox.load(directory)
    except SandboxError as exc:
        raise WorkFailed(str(exc)) from None


def _show(
    box: Sandbox, as_json: bool, extra: dict[str, Any], rows: list[dict[str, Any]] | None = None
) -> None:
    rows = box.status() if rows is None else rows
    if as_json:
        emit_json({**extra, "config": str(box.config_path), "processes": rows})
        return
    for row in rows:
        state = "up  " if row["up"] else "DOWN"
        click.echo(f"{row['name']:<9} {state} {row['url']:<24} pid {row['pid']}")
    click.echo(f"config    {box.config_path}")


def _why_down(row: dict[str, Any]) -> str:
    if not row["alive"]:
        return f"{row['name']} (pid {row['pid']} not running)"
    return f"{row['name']} (pid {row['pid']} running, {row['url']} not answering)"


@click.group("sandbox", context_settings=CONTEXT_SETTINGS)
def sandbox() -> None:
    """Start, stop and check a sandbox of real registries on 127.0.0.1.

    \b
    upstream registry -> Docker-Hub-like front (counts, rate limit, WAN link, faults)
      -> central mirror -> regional mirrors eu and us
    `up` seeds a catalogue of Docker-Hub-like images and writes DIR/warmer.toml.
    """


@sandbox.command("up")
@dir_option
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(0, 2**63 - 1),
    help="Catalogue seed (same seed, same digests).",
)
@click.option(
    "--scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 100, min_open=True),
    help="Layer size scale (1 = ~500 MB).",
)
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 60_000),
    help="Added round trip (ms) at the front.",
)
@click.option("--bandwidth", default=None, help="Aggregate cap at the front, e.g. 40MB/s.")
@click.option(
    "--ratelimit",
    default=10_000,
    show_default=True,
    type=click.IntRange(1, 10**9),
    help="Manifest GETs per 6 h.",
)
@click.option(
    "--auth",
    type=click.Choice(["token", "none"]),
    default="token",
    show_default=True,
    help="token: the front asks for Docker Hub's anonymous Bearer-token flow; "
    "none: anonymous, as a plain registry.",
)
@json_option
def up(
    directory: Path, seed: int, scale: float, latency: float, bandwidth: str | None,
    ratelimit: int, auth: str, as_json: bool,
) -> None:  # fmt: skip
    """Start the sandbox (if not already up), seed it, print the URLs and the config path."""
    for option, value in (("--scale", scale), ("--latency", latency)):
        if not math.isfinite(value):  # nan passes click's range checks
            raise BadInput(f"{option} {value}: not a number")
    if bandwidth:
        try:
            parse_rate(bandwidth)
        except ValueError as exc:
            raise BadInput(f"--bandwidth {bandwidth!r}: {exc}") from None
    existing = _load(directory)
    if existing is not None and existing.all_alive():
        if not as_json:
            click.echo(f"sandbox already up in {existing.directory}")
        _show(existing, as_json, {"already_up": True})
        return
    if existing is not None:
        existing.stop()  # a partial sandbox: stop what is left, start afresh
    try:
        box = Sandbox.start(
            directory, seed, scale, latency, bandwidth, ratelimit, detach=True, auth=auth
        )
    except SandboxError as exc:
        raise WorkFailed(str(exc)) from None
    try:
        report = box.seed_catalogue()
    except RegistryError as exc:
        box.stop()
        raise WorkFailed(f"seeding the upstream failed: {exc}") from None
    box.front.reset()
    seeded = {
        "tags": report.tags,
        "repositories": report.repositories,
        "blobs": report.blobs_pushed + report.blobs_present,
        "bytes": report.bytes_pushed,
    }
    if not as_json:
        click.echo(
            f"sandbox up in {box.directory}: seeded {report.tags} tags in "
            f"{report.repositories} repositories ({format_size(report.bytes_pushed)} pushed)"
        )
    _show(box, as_json, {"already_up": False, "seeded": seeded})


@sandbox.command("down")
@dir_option
@json_option
def down(directory: Path, as_json: bool) -> None:
    """Stop exactly the processes `up` started (by their recorded PIDs)."""
    box = _load(directory)
    if box is None:
        if as_json:
            emit_json({"stopped": []})
        else:
            click.echo(f"no sandbox recorded in {directory}")
        return
    done = box.stop()
    if as_json:
        emit_json({"stopped": done})
        return
    for row in done:
        what = "stopped" if row["stopped"] else "was not running"
        click.echo(f"{row['name']:<9} pid {row['pid']} {what}")


@sandbox.command("status")
@dir_option
@json_option
def status(directory: Path, as_json: bool) -> None:
    """Each process up (running and answering) or DOWN, with its URL.

    Exit 1 unless all are up, naming on stderr each one that is down and why."""
    box = _load(directory)
    if box is None:
        raise WorkFailed(f"no sandbox recorded in {directory} (run `warmer sandbox up`)")
    rows = box.status()
    down = [row for row in rows if not row["up"]]
    _show(box, as_json, {"up": bool(rows) and not down}, rows)
    if down:
        raise WorkFailed(
            f"sandbox in {box.directory}: down: {', '.join(_why_down(r) for r in down)}"
        )
    if not rows:
        raise WorkFailed(f"sandbox in {box.directory}: no processes recorded")


commands: list[click.Command] = [sandbox]
