"""``warmer inspect``: what an image reference resolves to, read from a registry or mirror."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option
from warmer.oci.auth import Credentials, CredentialsError, credentials_from_docker_config
from warmer.oci.manifest import ImageTree, Platform
from warmer.oci.ratelimit import RateLimit
from warmer.oci.reference import InvalidReference, Reference, parse
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.oci.transport import check_base_url
from warmer.units import format_size

log = logging.getLogger(__name__)
DOCKER_HUB_URL = "https://registry-1.docker.io"


def registry_url(ref: Reference) -> str:
    """The base URL a reference's registry is reached at (docker.io has its own host)."""
    if ref.registry == "docker.io":
        return DOCKER_HUB_URL
    return f"https://{ref.registry}"


def _credentials(config_path: str | None, url: str) -> tuple[Credentials | None, bool | str]:
    """Credentials and TLS setting for ``url``: from the config file when it names that URL,
    else from the Docker config.json entry for its host."""
    host = url.split("://", 1)[-1].split("/", 1)[0]
    if config_path and Path(config_path).is_file():
        # Imported here: the config model is only needed when a config file is present.
        from warmer.config import ConfigError, MirrorConfig, UpstreamConfig, load
        from warmer.oci.auth import credentials_from_ref

        try:
            config = load(config_path)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        entries: list[UpstreamConfig | MirrorConfig] = [
            *config.upstreams.values(),
            *config.mirrors.values(),
        ]
        for entry in entries:
            if entry.url.rstrip("/") == url.rstrip("/"):
                verify: bool | str = entry.tls.ca_file or entry.tls.verify
                ref = entry.credentials
                return (credentials_from_ref(ref, host) if ref else None), verify
    return credentials_from_docker_config(host), True


def _tree_json(tree: ImageTree, ref: Reference, url: str, rl: RateLimit | None) -> dict[str, Any]:
    return {
        "reference": str(ref),
        "registry_url": url,
        "repository": tree.repository,
        "digest": tree.digest,
        "media_type": tree.media_type,
        "size": tree.size,
        "available_platforms": [
            str(d.platform) for d in (tree.index.manifests if tree.index else []) if d.platform
        ],
        "images": [
            {
                "platform": str(desc.platform) if desc.platform else None,
                "digest": manifest.digest,
                "media_type": manifest.media_type,
                "size": manifest.size,
                "config": (
                    {"digest": manifest.config.digest, "size": manifest.config.size}
                    if manifest.config
                    else None
                ),
                "layers": [
                    {"digest": d.digest, "size": d.size, "media_type": d.media_type}
                    for d in manifest.layers
                ],
            }
            for desc, manifest in tree.images
        ],
        "total_size": tree.total_size(),
        "ratelimit": None
        if rl is None
        else {
            "limit": rl.limit,
            "window_seconds": rl.window_seconds,
            "remaining": rl.remaining,
            "remaining_window": rl.remaining_window,
            "source": rl.source,
        },
    }


def _print_tree(tree: ImageTree, ref: Reference, url: str, rl: RateLimit | None) -> None:
    echo = click.echo
    echo(f"image       {ref}")
    echo(f"registry    {url} (repository {tree.repository})")
    echo(f"digest      {tree.digest}")
    echo(f"media type  {tree.media_type}")
    if tree.index is not None:
        available = [str(d.platform) for d in tree.index.manifests if d.platform]
        echo(f"platforms   {', '.join(available) or 'none declared'}")
    for desc, manifest in tree.images:
        platform = str(desc.platform) if desc.platform else "(single-platform image)"
        echo(f"{platform}  {manifest.digest}  {format_size(manifest.size)}")
        if manifest.config:
            echo(f"  config  {manifest.config.digest}  {format_size(manifest.config.size)}")
        for layer in manifest.layers:
            echo(f"  layer   {layer.digest}  {format_size(layer.size)}")
    echo(f"total       {format_size(tree.total_size())} (manifests and distinct blobs)")
    echo(f"rate limit  {rl if rl else 'no rate-limit headers seen'}")


@click.command("inspect", context_settings=CONTEXT_SETTINGS)
@click.argument("image")
@click.option(
    "--via",
    metavar="URL",
    help="Registry or mirror base URL to ask (default: the image's own registry over https).",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Platform to select from a multi-arch index (repeatable; default linux/amd64).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=4,
    show_default=True,
    help="Retries for transient errors (connect failures, timeouts, 5xx).",
)
@json_option
@click.pass_context
def inspect_command(
    ctx: click.Context,
    image: str,
    via: str | None,
    platforms: tuple[str, ...],
    retries: int,
    as_json: bool,
) -> None:
    """Show what IMAGE resolves to: digest, media type, platforms, layers and sizes.

    \b
      warmer inspect ubuntu:24.04 --platform linux/arm64
      warmer inspect library/python:3.12 --via http://127.0.0.1:5001 --json
    Reads manifests only (no blobs). Exits 1 when the registry is unreachable or refuses
    access, 2 for an invalid reference or option.
    """
    try:
        ref = parse(image)
    except InvalidReference as exc:
        raise BadInput(str(exc)) from None
    try:
        wanted = [Platform.parse(p) for p in platforms]
    except ValueError as exc:
        raise BadInput(f"--platform: {exc}") from None
    try:
        url = check_base_url(via or registry_url(ref))
    except ValueError as exc:
        raise BadInput(f"--via: {exc}") from None
    config_path = (ctx.obj or {}).get("config_path") if ctx.obj is not None else None
    try:
        credentials, verify = _credentials(config_path, url)
    except CredentialsError as exc:
        raise BadInput(str(exc)) from None

    async def run() -> tuple[ImageTree, RateLimit | None]:
        async with RegistryClient(
            url, credentials=credentials, retries=retries, verify=verify
        ) as client:
            tree = await client.resolve(ref.repository, ref.reference, wanted)
            return tree, client.last_ratelimit

    try:
        tree, rl = asyncio.run(run())
    except RegistryError as exc:
        raise WorkFailed(str(exc)) from None
    if as_json:
        emit_json(_tree_json(tree, ref, url, rl))
    else:
        _print_tree(tree, ref, url, rl)


commands = [inspect_command]
