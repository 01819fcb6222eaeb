"""Import an air-gap bundle into a registry: verify every file, then push what is missing.

Order: every checksum is verified before anything is sent; a delta's omitted blobs are
checked at the target (HEAD) before anything is sent; then blobs (HEAD first: skipped when
present, mounted from another repository of the same import when possible, else uploaded
in chunks from the file), then platform manifests by digest, then indexes, then tags. Every
step checks first, so importing the same bundle again pushes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from warmer.bundle.bundlefile import Bundle, file_problems
from warmer.bundle.ocilayout import blob_relpath
from warmer.bundle.source import BundleSource, actual_checksums, read_bundle
from warmer.oci.registry import NotFound, RegistryClient


class BundleInvalid(Exception):
    """A file of the bundle is missing or does not match its checksum."""

    def __init__(self, where: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"bundle {where} refused: {shown}")
        self.problems = problems


class MissingAtTarget(Exception):
    """A delta bundle needs blobs that neither it nor the target registry holds."""


class PullThroughTarget(Exception):
    """The target is configured as a pull-through mirror: pushing there is refused."""


@dataclass
class ImportReport:
    target: str
    prefix: str
    images: list[str] = field(default_factory=list)
    blobs_pushed: int = 0
    bytes_pushed: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_skipped: int = 0
    manifests_pushed: int = 0
    manifests_skipped: int = 0
    tags_pushed: list[str] = field(default_factory=list)
    tags_skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _normal_url(url: str) -> str:
    url = url.strip().rstrip("/").lower()
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if url.startswith(scheme) and url.endswith(port):
            url = url[: -len(port)]
    return url


def check_not_pull_through(target_url: str, mirrors: Mapping[str, Iterable[str]]) -> None:
    """Refuse ``target_url`` when it is (a replica of) a mirror: ``mirrors`` maps name -> URLs."""
    want = _normal_url(target_url)
    for name, urls in mirrors.items():
        if any(_normal_url(u) == want for u in urls):
            raise PullThroughTarget(
                f"{target_url} is the pull-through mirror {name!r} in the config: a mirror "
                "caches its parent and must not be pushed to; import into its upstream instead"
            )


def target_repository(prefix: str, repository: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{repository}" if prefix else repository


def verify(source: BundleSource) -> Bundle:
    """Load ``bundle.json`` and check every listed file; raise :class:`BundleInvalid`."""
    bundle, _ = read_bundle(source)
    problems = file_problems(bundle, actual_checksums(source, bundle))
    if problems:
        raise BundleInvalid(source.where, problems)
    return bundle


async def _missing_base_blobs(client: RegistryClient, bundle: Bundle, prefix: str) -> list[str]:
    carried = bundle.blob_files()
    missing: list[str] = []
    for image in bundle.images:
        repo = target_repository(prefix, image.repository)
        for blob in image.blobs:
            if blob.digest not in carried and await client.blob_size(repo, blob.digest) is None:
                missing.append(f"{blob.digest} ({image.name}, at {repo})")
    return missing


async def import_bundle(
    client: RegistryClient,
    source: BundleSource,
    bundle: Bundle,
    prefix: str = "",
    concurrency: int = 4,
) -> ImportReport:
    """Push the (already verified) ``bundle`` from ``source`` into ``client``'s registry."""
    report = ImportReport(target=client.url, prefix=prefix)
    missing = await _missing_base_blobs(client, bundle, prefix)
    if missing:
        base = f" (created {bundle.since.created:%Y-%m-%d %H:%M})" if bundle.since else ""
        raise MissingAtTarget(
            f"this delta bundle relies on blobs the target does not hold: {', '.join(missing)}; "
            f"import its base bundle{base} first"
        )
    carried = bundle.blob_files()
    # digest -> (size, repositories needing it), in first-seen order
    needs: dict[str, tuple[int, list[str]]] = {}
    for image in bundle.images:
        repo = target_repository(prefix, image.repository)
        for blob in image.blobs:
            if blob.digest in carried:
                repos = needs.setdefault(blob.digest, (blob.size, []))[1]
                if repo not in repos:
                    repos.append(repo)
    gate = asyncio.Semaphore(concurrency)

    async def place(digest: str, size: int, repos: list[str]) -> None:
        async with gate:
            holder: str | None = None
            for repo in repos:
                if await client.blob_size(repo, digest) is not None:
                    report.blobs_skipped += 1
                    report.bytes_skipped += size
                elif holder is not None and await client.mount_blob(repo, digest, holder):
                    report.blobs_mounted += 1
                else:
                    with source.open(blob_relpath(digest)) as stream:
                        await client.upload_blob(repo, digest, size, stream)
                    report.blobs_pushed += 1
                    report.bytes_pushed += size
                holder = holder or repo

    results = await asyncio.gather(
        *(place(d, size, repos) for d, (size, repos) in needs.items()), return_exceptions=True
    )
    for r in results:
        if isinstance(r, BaseException):
            raise r

    for image in bundle.images:
        repo = target_repository(prefix, image.repository)
        for m in image.manifests:  # platform manifests first, the index last
            try:
                await client.head_manifest(repo, m.digest)
                report.manifests_skipped += 1
                continue
            except NotFound:
                pass
            with source.open(blob_relpath(m.digest)) as f:
                body = f.read()
            await client.put_manifest(repo, m.digest, body, m.media_type)
            report.manifests_pushed += 1
        report.images.append(image.name)
        if image.tag is None:
            continue
        shown = f"{repo}:{image.tag}"
        try:
            if (await client.head_manifest(repo, image.tag)).digest == image.digest:
                report.tags_skipped.append(shown)
                continue
        except NotFound:
            pass
        with source.open(blob_relpath(image.digest)) as f:
            body = f.read()
        await client.put_manifest(repo, image.tag, body, image.media_type)
        report.tags_pushed.append(shown)
    return report
