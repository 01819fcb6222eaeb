"""``warmer export`` and ``warmer import``: carry images across an air gap as OCI layouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import click

from warmer.bundle.bundlefile import BUNDLE_FILE, Bundle, BundleFormatError, loads
from warmer.bundle.export import Discover, ExportStats, export_bundle, write_tar
from warmer.bundle.importer import (
    BundleInvalid,
    ImportReport,
    MissingAtTarget,
    PullThroughTarget,
    check_not_pull_through,
    import_bundle,
    verify,
)
from warmer.bundle.ocilayout import LayoutError
from warmer.bundle.source import open_source
from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option
from warmer.config import Config, ConfigError, load
from warmer.oci.manifest import Platform
from warmer.oci.reference import InvalidReference, Reference, parse
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.oci.transport import check_base_url
from warmer.units import format_size
from warmer.warm.artifacts import KINDS, Artifact, ArtifactPolicy
from warmer.warm.discover import Discovery

MAX_TOP = 1_000_000  # images: more than any ranking, small enough for every database's LIMIT


def optional_config(ctx: click.Context) -> Config | None:
    """The config, or None when the default path is absent (an explicit path must exist)."""
    root = ctx.find_root()
    path = (root.obj or {}).get("config_path", "warmer.toml")
    explicit = root.get_parameter_source("config_path") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    if not explicit and not Path(path).exists():
        return None
    try:
        return load(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def _references_from_file(path: str) -> list[Reference]:
    out: list[Reference] = []
    bad: list[str] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(parse(text))
        except InvalidReference as exc:
            bad.append(f"{path}:{n}: {exc}")
    if bad:
        raise BadInput("; ".join(bad))
    return out


def select_images(
    ctx: click.Context,
    region: str | None,
    top: int | None,
    images_file: str | None,
    images: Sequence[str],
) -> list[Reference]:
    """Images from arguments, a file (one per line, ``#`` comments) or a region's ranking."""
    if sum(bool(x) for x in (region, images_file, images)) != 1:
        raise BadInput("give exactly one of: IMAGE arguments, --images FILE, or --region R")
    if images_file:
        refs = _references_from_file(images_file)
    elif images:
        try:
            refs = [parse(t) for t in images]
        except InvalidReference as exc:
            raise BadInput(str(exc)) from None
    else:
        assert region is not None
        config = optional_config(ctx)
        if config is None:
            raise BadInput("--region needs a config (--config PATH) and a stored ranking")
        from warmer.warm.resolve import wants_from_ranking

        try:
            config.region(region)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        refs = [w.ref for w in wants_from_ranking(config, region, top)]
        if not refs:
            raise BadInput(f"no ranking stored for region {region!r}: run `warmer rank` first")
    return refs[:top] if top else refs


def _platforms(texts: Sequence[str]) -> list[Platform]:
    try:
        return [Platform.parse(t) for t in texts]
    except ValueError as exc:
        raise BadInput(str(exc)) from None


@contextlib.asynccontextmanager
async def _sources(
    config: Config | None, source_url: str | None, refs: Sequence[Reference]
) -> AsyncIterator[tuple[Callable[[Reference], RegistryClient], str]]:
    """One registry client per source: ``--from URL`` for all, else each image's upstream."""
    clients: dict[str, RegistryClient] = {}
    try:
        if source_url:
            try:
                clients[""] = RegistryClient(source_url)
            except ValueError as exc:
                raise BadInput(f"--from: {exc}") from None
            yield (lambda _ref: clients[""]), source_url
            return
        if config is None:
            raise BadInput("no --from URL and no config to find each image's upstream")
        from warmer.warm.resolve import upstream_client

        names: dict[Reference, str] = {}
        for ref in refs:
            name = config.upstream_for_registry(ref.registry)
            if name is None:
                raise BadInput(f"{ref}: no upstream in the config serves {ref.registry}")
            names[ref] = name
            if name not in clients:
                clients[name] = upstream_client(config, name)
        label = ", ".join(sorted(c.url for c in clients.values()))
        yield (lambda ref: clients[names[ref]]), label
    finally:
        for client in clients.values():
            await client.aclose()


ARTIFACT_KINDS = ("signatures", "attestations", "sbom", "all", "none")


def _artifact_policy(
    config: Config | None, region: str | None, kinds: str | None
) -> ArtifactPolicy:
    """``--artifacts KINDS`` (comma-separated), else the region's kinds, else signatures."""
    if kinds is None:
        if config is not None and region is not None:
            settings = config.region(region).artifacts
            return ArtifactPolicy.from_config(settings.model_copy(update={"verify": {}}))
        return ArtifactPolicy()
    asked = [k.strip() for k in kinds.split(",") if k.strip()]
    bad = [k for k in asked if k not in ARTIFACT_KINDS]
    if bad or not asked:
        raise BadInput(
            f"--artifacts {kinds!r}: expected a comma-separated list of {', '.join(ARTIFACT_KINDS)}"
        )
    chosen = set(KINDS) if "all" in asked else set(asked) - {"none"}
    return ArtifactPolicy(kinds=frozenset(chosen))


def _discoverer(
    source_for: Callable[[Reference], RegistryClient], policy: ArtifactPolicy
) -> Discover | None:
    """Artifact discovery at each image's source (one :class:`Discovery` per client)."""
    if not policy.active:
        return None
    finders: dict[int, Discovery] = {}

    async def discover(ref: Reference, digests: Sequence[str]) -> list[Artifact]:
        client = source_for(ref)
        # HEAD first (a missing tag costs no GET), then GET what exists.
        finder = finders.setdefault(id(client), Discovery(client, policy, probe=client))
        return await finder.find(ref.repository, digests)

    return discover


def _read_since(path: str | None) -> tuple[Bundle, bytes] | None:
    if path is None:
        return None
    data = Path(path).read_bytes()
    try:
        return loads(data, path), data
    except BundleFormatError as exc:
        raise BadInput(str(exc)) from None


@click.command("export", context_settings=CONTEXT_SETTINGS)
@click.argument("images", nargs=-1)
@click.option("--region", help="Export the region's ranked images (needs a stored ranking).")
@click.option("--top", type=click.IntRange(1, MAX_TOP), help="Only the N best-ranked images.")
@click.option("--images", "images_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), help="Layout dir.")
@click.option("--tar", "as_tar", is_flag=True, help="Also pack the bundle as DIR.tar.")
@click.option("--since", type=click.Path(exists=True, dir_okay=False), help="Base bundle.json.")
@click.option("--from", "source_url", help="Registry to read from (default: each upstream).")
@click.option("--platform", "platforms", multiple=True, help="os/arch[/variant], repeatable.")
@click.option(
    "--artifacts",
    "artifact_kinds",
    metavar="KINDS",
    help="Artifacts carried with each image: signatures (default; or the region's kinds), "
    "attestations, sbom, all, none; comma-separated.",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@json_option
@click.pass_context
def export_command(
    ctx: click.Context,
    images: tuple[str, ...],
    region: str | None,
    top: int | None,
    images_file: str | None,
    dest: str,
    as_tar: bool,
    since: str | None,
    source_url: str | None,
    platforms: tuple[str, ...],
    artifact_kinds: str | None,
    concurrency: int,
    as_json: bool,
) -> None:
    """Write images into an OCI image layout with a bundle.json of checksums.

    \b
      warmer export python:3.12 debian:12 --from http://mirror:5000 --to ./bundle --tar
      warmer export --images list.txt --to ./delta --since ./bundle/bundle.json
    Every blob is verified; running it again resumes. --since writes only the blobs the
    earlier bundle lacks (manifests always), to import on top of it. Each image's cosign
    signatures (and, with --artifacts, attestations, SBOMs, referrers) go with it.
    """
    refs = select_images(ctx, region, top, images_file, images)
    wanted = _platforms(platforms)
    base = _read_since(since)
    config = optional_config(ctx) if not source_url else None
    policy = _artifact_policy(config, region, artifact_kinds)

    async def run() -> tuple[Bundle, ExportStats]:
        async with _sources(config, source_url, refs) as (source_for, label):
            return await export_bundle(
                source_for, label, refs, Path(dest), wanted, base, concurrency,
                discover=_discoverer(source_for, policy),
            )  # fmt: skip

    try:
        bundle, stats = asyncio.run(run())
    except (RegistryError, LayoutError, OSError) as exc:
        raise WorkFailed(f"export to {dest} stopped (run again to resume): {exc}") from None
    tar_path = write_tar(Path(dest), bundle, Path(dest.rstrip("/") + ".tar")) if as_tar else None
    out: dict[str, Any] = {
        "bundle": str(Path(dest) / BUNDLE_FILE),
        "tar": str(tar_path) if tar_path else None,
        "images": [
            {"name": i.name, "digest": i.digest, "platforms": i.platforms} for i in bundle.images
        ],
        "delta": bundle.since is not None,
        **{k: v for k, v in vars(stats).items()},
    }
    if as_json:
        emit_json(out)
    else:
        for i in bundle.images:
            click.echo(f"{i.name}  {i.digest}  {','.join(i.platforms) or '-'}")
        click.echo(
            f"{stats.images} images, {stats.manifests} manifests; "
            f"fetched {stats.blobs_fetched} blobs ({format_size(stats.bytes_fetched)}), "
            f"reused {stats.blobs_reused} ({format_size(stats.bytes_reused)}); "
            f"{stats.artifacts} artifacts ({format_size(stats.artifact_bytes)})"
            + (
                f", left {stats.blobs_omitted} to the base bundle"
                f" ({format_size(stats.bytes_omitted)})"
                if base
                else ""
            )
            + (f"; wrote {tar_path}" if tar_path else "")
        )
    for failure in stats.failed:
        click.echo(f"error: {failure}", err=True)
    if stats.failed:
        raise WorkFailed(f"{len(stats.failed)} of {len(refs)} images not exported")


@click.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("bundle_path", metavar="DIR|TAR", type=click.Path(exists=True))
@click.option("--to", "target", required=True, help="Registry URL to push into.")
@click.option("--prefix", default="", help="Repository prefix at the target, e.g. 'airgap'.")
@click.option(
    "--pull-through-check",
    "mirror_urls",
    multiple=True,
    help="Also refuse this URL as a pull-through mirror (repeatable; config mirrors always are).",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@json_option
@click.pass_context
def import_command(
    ctx: click.Context,
    bundle_path: str,
    target: str,
    prefix: str,
    mirror_urls: tuple[str, ...],
    concurrency: int,
    as_json: bool,
) -> None:
    """Verify a bundle and push it into a registry (never a pull-through mirror).

    \b
      warmer import ./bundle.tar --to https://registry.internal --prefix airgap
    Every file is checked against bundle.json first; blobs and manifests the target has
    are skipped, so importing again pushes nothing. A delta imports on top of its base.
    """
    try:
        check_base_url(target)
    except ValueError as exc:
        raise BadInput(f"--to {target!r}: {exc}") from None
    config = optional_config(ctx)
    mirrors: dict[str, list[str]] = {f"--pull-through-check {u}": [u] for u in mirror_urls}
    if config is not None:
        for name, m in config.mirrors.items():
            mirrors[name] = [m.url, *m.replicas]
    try:
        check_not_pull_through(target, mirrors)
        source = open_source(Path(bundle_path))
    except (PullThroughTarget, BundleFormatError) as exc:
        raise BadInput(str(exc)) from None
    try:
        try:
            bundle = verify(source)
        except (BundleInvalid, BundleFormatError) as exc:
            raise BadInput(str(exc)) from None

        async def run() -> ImportReport:
            async with RegistryClient(target) as client:
                return await import_bundle(client, source, bundle, prefix, concurrency)

        try:
            report = asyncio.run(run())
        except (PullThroughTarget, BundleFormatError) as exc:
            raise BadInput(str(exc)) from None
        except ValueError as exc:
            raise BadInput(f"--to: {exc}") from None
        except MissingAtTarget as exc:
            raise WorkFailed(str(exc)) from None
        except RegistryError as exc:
            raise WorkFailed(
                f"import into {target} stopped (run again to continue): {exc}"
            ) from None
    finally:
        source.close()
    if as_json:
        emit_json(report.to_json())
        return
    for tag in report.tags_pushed:
        click.echo(f"tagged   {tag}")
    for tag in report.tags_skipped:
        click.echo(f"present  {tag}")
    click.echo(
        f"pushed {report.blobs_pushed} blobs ({format_size(report.bytes_pushed)}), mounted "
        f"{report.blobs_mounted}, skipped {report.blobs_skipped} present "
        f"({format_size(report.bytes_skipped)}); manifests pushed {report.manifests_pushed}, "
        f"skipped {report.manifests_skipped}; artifacts pushed {report.artifacts_pushed}, "
        f"skipped {report.artifacts_skipped}"
    )


commands = [export_command, import_command]
