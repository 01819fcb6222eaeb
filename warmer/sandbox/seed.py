"""Push a :mod:`warmer.sandbox.catalogue` into a registry with the project's own client.

Also signs what it pushed, in cosign's classic format (:func:`push_signature`: a
``sha256-<hex>.sig`` tag), and attaches OCI 1.1 referrers the way a registry without the
referrers API needs them (:func:`push_referrer`: the artifact with its ``subject``, listed
in the fallback tag ``sha256-<hex>`` index), for tests and the demo.

A blob shared by several repositories is uploaded once, into the first repository that needs
it, and cross-repository mounted into the others (an upload is the fallback when the
registry declines the mount). Pushing is idempotent: blobs already present are skipped.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from warmer.oci.cosign import (
    Signer,
    artifact_tag,
    fallback_tag,
    signature_image,
    simple_signing_payload,
)
from warmer.oci.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from warmer.oci.registry import DigestMismatch, NotFound, RegistryClient
from warmer.sandbox.catalogue import SIGNED, Catalogue, Image, Layer, Tag, moved, sha256

T = TypeVar("T")


@dataclass
class SeedReport:
    repositories: int = 0
    blobs_present: int = 0
    blobs_pushed: int = 0
    blobs_mounted: int = 0
    bytes_pushed: int = 0
    manifests: int = 0
    tags: int = 0


Blobs = dict[str, dict[str, Layer | bytes]]  # repository -> digest -> blob


async def _push_blobs(
    client: RegistryClient, wanted: Blobs, report: SeedReport, concurrency: int, fresh: bool
) -> None:
    """Upload each distinct blob once (into its first repository), then mount it elsewhere.

    Unless ``fresh`` (an empty registry), each blob is looked for first so that a re-seed
    moves no bytes and reports what was already there.
    """
    gate = asyncio.Semaphore(concurrency)
    home: dict[str, str] = {}
    for repository, blobs in wanted.items():
        for digest in blobs:
            home.setdefault(digest, repository)

    async def one(repository: str, digest: str, blob: Layer | bytes) -> None:
        async with gate:
            if not fresh and await client.blob_size(repository, digest) is not None:
                report.blobs_present += 1
                return
            source = home[digest]
            if source != repository and await client.mount_blob(repository, digest, source):
                report.blobs_mounted += 1
                return
            data = blob.data() if isinstance(blob, Layer) else blob
            await client.push_blob(repository, data)
            report.blobs_pushed += 1
            report.bytes_pushed += len(data)

    first = [(home[d], d, b) for r, bs in wanted.items() for d, b in bs.items() if home[d] == r]
    await asyncio.gather(*(one(*job) for job in first))
    rest = [(r, d, b) for r, bs in wanted.items() for d, b in bs.items() if home[d] != r]
    await asyncio.gather(*(one(*job) for job in rest))


async def _put_tags(
    client: RegistryClient, tags: list[Tag], report: SeedReport, concurrency: int
) -> None:
    """Platform manifests first (each once), then each distinct tag target with its aliases.

    distribution 2.8 can fail a PUT racing another PUT of the same content, so each distinct
    manifest is written by one task only.
    """
    gate = asyncio.Semaphore(concurrency)
    children = {(t.repository, i.digest): i for t in tags if t.index for i in t.images}
    groups: dict[tuple[str, str], list[Tag]] = {}
    for t in tags:
        groups.setdefault((t.repository, t.digest), []).append(t)

    async def child(repository: str, image: Image) -> None:
        async with gate:
            await client.put_manifest(repository, image.digest, image.manifest, image.media_type)
            report.manifests += 1

    async def group(aliases: list[Tag]) -> None:
        async with gate:
            for tag in aliases:
                got = await client.put_manifest(
                    tag.repository, tag.tag, tag.manifest, tag.media_type
                )
                if got != tag.digest:
                    raise DigestMismatch(f"manifest push {tag.reference}", tag.digest, got)
                report.tags += 1
            report.manifests += 1

    await asyncio.gather(*(child(r, i) for (r, _), i in children.items()))
    await asyncio.gather(*(group(g) for g in groups.values()))


async def seed(
    url: str, catalogue: Catalogue, concurrency: int = 4, fresh: bool = False
) -> SeedReport:
    """Push every repository, blob, manifest and tag of ``catalogue`` to the registry at ``url``.

    ``fresh``: the registry is known to be empty (skips a HEAD per blob).
    """
    report = SeedReport(repositories=len(catalogue.repositories))
    wanted = {r: catalogue.blobs(r) for r in catalogue.repositories}
    async with RegistryClient(url, retries=2) as client:
        await _push_blobs(client, wanted, report, concurrency, fresh)
        await _put_tags(client, list(catalogue.tags), report, concurrency)
    return report


async def move_tag(
    url: str, catalogue: Catalogue, repository: str, tag: str, generation: int = 1
) -> Tag:
    """Push new content (one new top layer) under ``repository:tag``; returns the new Tag."""
    new = moved(catalogue, repository, tag, generation)
    blobs: dict[str, Layer | bytes] = {}
    for image in new.images:
        blobs.update({x.digest: x for x in image.layers})
        blobs[image.config_digest] = image.config
    async with RegistryClient(url, retries=2) as client:
        await _push_blobs(client, {repository: blobs}, SeedReport(), 4, fresh=False)
        await _put_tags(client, [new], SeedReport(), 4)
    return new


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even when this thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


async def push_signature(
    client: RegistryClient,
    repository: str,
    digest: str,
    docker_reference: str,
    signers: list[Signer],
) -> str:
    """Sign ``digest`` as ``cosign sign --key`` does (one layer per signer) and push the
    signature under ``sha256-<hex>.sig`` in ``repository``; returns its manifest digest."""
    payload = simple_signing_payload(docker_reference, digest)
    image = signature_image([(payload, s.sign(payload)) for s in signers])
    for blob in image.blobs:
        await client.push_blob(repository, blob)
    return await client.put_manifest(
        repository, artifact_tag(digest), image.manifest, image.media_type
    )


async def push_referrer(
    client: RegistryClient, repository: str, subject: Descriptor, artifact_type: str, body: bytes
) -> Descriptor:
    """Attach ``body`` to ``subject`` as an OCI 1.1 artifact (``artifactType``, ``subject``)
    and list it in the subject's fallback tag index (what a client reads where the registry
    has no referrers API); returns the artifact's descriptor."""
    config = await client.push_blob(repository, b"{}")
    layer = await client.push_blob(repository, body)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": artifact_type, "digest": layer.digest, "size": layer.size}],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
    }
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = await client.put_manifest(repository, sha256(data), data, OCI_MANIFEST)
    entry = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(data),
        "artifactType": artifact_type,
    }
    tag = fallback_tag(subject.digest)
    try:
        listed = (await client.get_manifest(repository, tag)).data.get("manifests") or []
    except NotFound:
        listed = []
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*listed, entry]}
    body_index = json.dumps(index, separators=(",", ":")).encode()
    await client.put_manifest(repository, tag, body_index, OCI_INDEX)
    return Descriptor(OCI_MANIFEST, digest, len(data))


def sandbox_signer(directory: Path) -> Signer:
    """The sandbox's signing key: ``directory/cosign.key`` (made on first use), its public
    half beside it as ``cosign.pub`` (what a verifying policy's ``verify.keys`` names)."""
    key, pub = directory / "cosign.key", directory / "cosign.pub"
    if key.exists():
        return Signer.from_pem(key.read_bytes())
    signer = Signer.generate()
    directory.mkdir(parents=True, exist_ok=True)
    key.write_bytes(signer.private_pem())
    key.chmod(0o600)
    pub.write_bytes(signer.public_pem())
    return signer


async def sign_catalogue(
    url: str,
    catalogue: Catalogue,
    signer: Signer,
    repositories: tuple[str, ...] = SIGNED,
    registry: str = "docker.io",
) -> int:
    """Sign each tag of ``repositories`` (its digest and, for an index, each platform
    manifest, as ``cosign sign --recursive``) in the registry at ``url``; returns the
    number of signatures pushed. Idempotent per digest (the tag is overwritten)."""
    done: set[tuple[str, str]] = set()
    async with RegistryClient(url, retries=2) as client:
        for tag in catalogue.tags:
            if tag.repository not in repositories:
                continue
            digests = [tag.digest, *(i.digest for i in tag.images if tag.index)]
            for digest in digests:
                if (tag.repository, digest) in done:
                    continue
                done.add((tag.repository, digest))
                name = f"{registry}/{tag.repository}"
                await push_signature(client, tag.repository, digest, name, [signer])
    return len(done)
