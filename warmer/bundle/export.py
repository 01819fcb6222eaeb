"""Write an air-gap bundle: resolve images at a source registry, stream their blobs into an
OCI image layout, then write ``bundle.json`` with the checksum of every file.

Resumable: a blob already in the layout that hashes to its digest is not fetched again, and
a download in progress goes to a temporary name renamed only after it verifies. A delta
(``since``) leaves out the blobs its base bundle carried; manifests are always written, so
the delta's index is complete and imports on top of its base.

Artifacts (``discover``: signatures, attestations, SBOMs, referrers, found at the source by
:mod:`warmer.warm.discover`) travel with their image: their manifests and blobs go into the
layout, each tagged one listed in ``index.json`` under its tag (``sha256-<hex>.sig``, the
fallback tag ``sha256-<hex>``) and recorded in ``bundle.json`` so the import pushes them
after the image. A fallback index is narrowed to the referrers the bundle carries (a
registry refuses an index naming manifests it does not hold).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from warmer.bundle.bundlefile import (
    BUNDLE_FILE,
    ArtifactRecord,
    BlobRecord,
    Bundle,
    ImageRecord,
    ManifestRecord,
    SinceRecord,
    sha256_hex,
)
from warmer.bundle.ocilayout import (
    CONTAINERD_NAME,
    INDEX_FILE,
    LAYOUT_FILE,
    IndexEntry,
    OciLayout,
    blob_relpath,
    hash_file,
)
from warmer.oci.manifest import Descriptor, ImageTree, Manifest, Platform, sha256_digest
from warmer.oci.reference import Reference
from warmer.warm.artifacts import REFERRERS, Artifact

log = logging.getLogger(__name__)


class Source(Protocol):
    """The part of :class:`warmer.oci.registry.RegistryClient` an export uses."""

    async def resolve(
        self, repository: str, reference: str, platforms: Sequence[Platform]
    ) -> ImageTree: ...

    async def fetch_blob(
        self,
        repository: str,
        digest: str,
        *,
        sink: Callable[[bytes], None] | None = None,
        on_bytes: Callable[[int], Awaitable[None]] | None = None,
        chunk_size: int = ...,
    ) -> int: ...

    async def get_manifest(
        self, repository: str, reference: str, known: str | None = None
    ) -> Manifest: ...


#: Finds the artifacts attached to an image's digests at its source.
Discover = Callable[[Reference, Sequence[str]], Awaitable[Sequence[Artifact]]]


@dataclass
class ExportStats:
    images: int = 0
    manifests: int = 0
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    blobs_reused: int = 0
    bytes_reused: int = 0
    blobs_omitted: int = 0
    bytes_omitted: int = 0
    artifacts: int = 0  # artifact manifests carried
    artifact_bytes: int = 0  # their manifests and blobs
    failed: list[str] = field(default_factory=list)


@dataclass
class _Resolved:
    ref: Reference
    tree: ImageTree
    top: Manifest  # what the tag points to in the bundle (the source index, or a filtered one)
    artifacts: list[tuple[Artifact, Manifest]] = field(default_factory=list)


def filtered_index(index: Manifest, keep: Sequence[str]) -> Manifest:
    """An index holding only the entries in ``keep`` (same media type and other fields).

    Used when only some platforms are exported: a registry refuses an index whose
    manifests it does not hold, so the bundle's tag points to an index of what it carries.
    """
    wanted = set(keep)
    if {d.digest for d in index.manifests} <= wanted:
        return index
    data = dict(index.data)
    data["manifests"] = [e for e in index.data.get("manifests", []) if e.get("digest") in wanted]
    body = json.dumps(data, indent=3).encode()
    return Manifest(sha256_digest(body), index.media_type, body, data)


def ref_name(ref: Reference) -> str:
    """The name an image has in ``index.json``: the canonical reference as asked."""
    return str(ref)


def image_record(item: _Resolved) -> ImageRecord:
    tree, ref, top = item.tree, item.ref, item.top
    manifests = [
        ManifestRecord(
            digest=m.digest,
            size=m.size,
            media_type=m.media_type,
            platform=str(d.platform) if d.platform else None,
        )
        for d, m in tree.images
    ]
    if top.is_index:
        manifests.append(
            ManifestRecord(digest=top.digest, size=top.size, media_type=top.media_type)
        )
    artifacts = [
        ArtifactRecord(
            kind=a.kind,  # type: ignore[arg-type]  # one of the kinds discovery returns
            subject=a.subject,
            digest=m.digest,
            size=m.size,
            media_type=m.media_type,
            tag=a.tag,
            blobs=[
                BlobRecord(digest=b.digest, size=b.size, media_type=b.media_type) for b in a.blobs
            ],
        )
        for a, m in item.artifacts
    ]
    return ImageRecord(
        name=ref_name(ref),
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        digest=top.digest,
        source_digest=tree.digest,
        media_type=top.media_type,
        platforms=[str(p) for p in tree.platforms()],
        manifests=manifests,
        blobs=[
            BlobRecord(digest=d.digest, size=d.size, media_type=d.media_type) for d in tree.blobs()
        ],
        artifacts=artifacts,
    )


async def attach(source: Source, item: _Resolved, found: Sequence[Artifact]) -> None:
    """Read each artifact manifest's bytes at the source (by digest) into ``item``; a
    fallback index narrowed to the referrers found with it."""
    referrers = {(a.subject, a.digest) for a in found if a.tag is None}
    for a in found:
        m = await source.get_manifest(item.ref.repository, a.digest, a.digest)
        if a.kind == REFERRERS:
            m = filtered_index(m, [d for s, d in referrers if s == a.subject])
        item.artifacts.append((a, m))


async def export_bundle(
    source_for: Callable[[Reference], Source],
    source_label: str,
    refs: Sequence[Reference],
    dest: Path,
    platforms: Sequence[Platform] = (),
    since: tuple[Bundle, bytes] | None = None,
    concurrency: int = 4,
    on_bytes: Callable[[int], Awaitable[None]] | None = None,
    discover: Discover | None = None,
) -> tuple[Bundle, ExportStats]:
    """Export ``refs`` into the layout at ``dest``; ``source_for(ref)`` is where to read each,
    ``discover`` (None: no artifacts) finds the artifacts of each image's digests there."""
    layout = OciLayout(dest)
    layout.init()
    layout.remove_partials()
    stats = ExportStats()
    resolved: list[_Resolved] = []
    for ref in refs:
        try:
            tree = await source_for(ref).resolve(ref.repository, ref.reference, platforms)
        except Exception as exc:  # a registry error for one image must not stop the others
            log.warning("cannot resolve %s: %s", ref, exc)
            stats.failed.append(f"{ref}: {exc}")
            continue
        if not tree.images:
            asked = ", ".join(str(p) for p in platforms) or "the default platform"
            stats.failed.append(f"{ref}: no manifest for {asked}")
            continue
        top = (
            filtered_index(tree.index, [m.digest for _, m in tree.images])
            if tree.index is not None
            else tree.images[0][1]
        )
        item = _Resolved(ref, tree, top)
        if discover is not None:
            digests = [tree.digest, *(m.digest for _, m in tree.images)]
            try:
                await attach(source_for(ref), item, await discover(ref, digests))
            except Exception as exc:  # the image without its signatures is not what was asked
                log.warning("cannot read the artifacts of %s: %s", ref, exc)
                stats.failed.append(f"{ref}: artifacts: {exc}")
                continue
        resolved.append(item)

    base_blobs = since[0].blob_files() if since else set()
    wanted: dict[str, tuple[Reference | None, Descriptor]] = {}
    for item in resolved:
        for _, manifest in item.tree.images:
            layout.write_blob(manifest.digest, manifest.body)
        if item.top.is_index:
            layout.write_blob(item.top.digest, item.top.body)
        for a, m in item.artifacts:
            layout.write_blob(m.digest, m.body)
            stats.artifacts += 1
            stats.artifact_bytes += m.size + sum(b.size for b in a.blobs)
        artifact_blobs = [
            Descriptor(b.media_type, b.digest, b.size) for a, _ in item.artifacts for b in a.blobs
        ]
        for d in [*item.tree.blobs(), *artifact_blobs]:
            if d.digest in base_blobs:
                if d.digest not in wanted:
                    stats.blobs_omitted += 1
                    stats.bytes_omitted += d.size
                wanted.setdefault(d.digest, (None, d))
                continue
            wanted.setdefault(d.digest, (item.ref, d))
    manifest_digests = {m.digest for i in resolved for m in image_record(i).manifests}
    manifest_digests |= {m.digest for i in resolved for _, m in i.artifacts}
    stats.manifests = len(manifest_digests)

    gate = asyncio.Semaphore(concurrency)

    async def fetch(ref: Reference, d: Descriptor) -> None:
        async with gate:
            if await asyncio.to_thread(layout.verified_blob, d.digest, d.size):
                stats.blobs_reused += 1
                stats.bytes_reused += d.size
                return
            with layout.blob_writer(d.digest, d.size) as w:
                await source_for(ref).fetch_blob(
                    ref.repository, d.digest, sink=w.write, on_bytes=on_bytes
                )
            stats.blobs_fetched += 1
            stats.bytes_fetched += d.size

    fetches = [fetch(ref, d) for ref, d in wanted.values() if ref is not None]
    results = await asyncio.gather(*fetches, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        # Finished blobs stay on disk, so running the export again resumes from here.
        raise errors[0]

    entries = [
        IndexEntry(
            i.top.media_type,
            i.top.digest,
            i.top.size,
            ref_name=ref_name(i.ref),
            annotations={CONTAINERD_NAME: ref_name(i.ref)},
        )
        for i in resolved
    ]
    for i in resolved:
        for a, m in i.artifacts:  # tagged ones by their tag; referrers by digest
            name = f"{i.ref.name}:{a.tag}" if a.tag else None
            names = {CONTAINERD_NAME: name} if name else {}
            entries.append(IndexEntry(m.media_type, m.digest, m.size, name, names))
    layout.write_index(entries)
    files = {
        LAYOUT_FILE: hash_file(dest / LAYOUT_FILE)[0],
        INDEX_FILE: hash_file(dest / INDEX_FILE)[0],
    }
    # Blob files were verified against their digest as they were written or reused.
    for digest in sorted(
        manifest_digests | {k for k, (ref, _) in wanted.items() if ref is not None}
    ):
        files[blob_relpath(digest)] = digest.partition(":")[2]
    since_record = None
    if since is not None:
        base, base_bytes = since
        since_record = SinceRecord(
            created=base.created, sha256=sha256_hex(base_bytes), source=base.source
        )
    bundle = Bundle(
        created=datetime.now(UTC),
        source=source_label,
        since=since_record,
        images=[image_record(i) for i in resolved],
        files=files,
    )
    tmp = dest / (BUNDLE_FILE + ".partial")
    tmp.write_bytes(bundle.dumps())
    os.replace(tmp, dest / BUNDLE_FILE)
    stats.images = len(resolved)
    return bundle, stats


def write_tar(dest: Path, bundle: Bundle, tar_path: Path) -> Path:
    """Pack the bundle's files (and ``bundle.json``) into an uncompressed tar, streaming.

    Layers are already compressed, so the tar is not; its members keep the layout's paths.
    """
    tmp = tar_path.with_name(tar_path.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in [*bundle.files, BUNDLE_FILE]:
            tar.add(dest / rel, arcname=rel, recursive=False)
    os.replace(tmp, tar_path)
    return tar_path
