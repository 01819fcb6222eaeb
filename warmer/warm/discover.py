"""Finding an image's artifacts at a registry, and reading its signatures to verify them.

The I/O half of :mod:`warmer.warm.artifacts` (which holds the kinds, the policy and the
verdicts). Whether a tag exists is asked of the upstream with a HEAD (``probe``: not
counted by Docker Hub, and a 404 costs nothing); only what exists is then fetched, with a
GET through the top tier of the region's chain, as images are resolved there
(:func:`warmer.warm.resolve.resolve`), so the mirror keeps it. Asking through the mirror
instead would cost an upstream GET per missing tag: CNCF distribution 2.8 as a proxy
answers a tag lookup with a HEAD to its parent and, when that is a 404, a GET "for the
error details" (measured: 12 extra upstream manifest GETs for 3 unsigned images). Without
a probe (the upstream cannot be reached directly, or a HEAD fails) the mirror is asked.

Referrers: the OCI 1.1 API ``GET /v2/<repo>/referrers/<digest>`` (an image index, with
``Link: <...>; rel="next"`` paging) where the registry answers it; a registry that lacks
it answers 404 (CNCF distribution 2.8, as a registry or a proxy, sends a plain-text
``404 page not found``), and then, as the spec tells clients, the fallback tag
``sha256-<hex>`` is read instead. What a registry answered is learned once per
:class:`Discovery`.

API: ``Discovery(client, policy, spend=None, probe=None)``; ``await discovery.find(
repository, digests, upstream_repository=None)`` returns the
:class:`~warmer.warm.artifacts.Artifact` list;
``await discovery.verdict(repository, digest, artifacts, registries)`` is None when a
signature of the image verifies under the policy (a cosign ``.sig`` with its keys, or a
keyless sigstore bundle referrer), else the reason. ``spend(n)``
is awaited before each manifest request (the upstream rate-limit reserve): it returns False
to stop, and then :class:`OutOfRequests` is raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from warmer.oci.auth import repository_scope
from warmer.oci.cosign import MAX_PAYLOAD, artifact_tag, fallback_tag, signature_layers
from warmer.oci.keyless import MAX_BUNDLE, is_bundle_type
from warmer.oci.manifest import OCI_INDEX, Manifest
from warmer.oci.registry import NotFound, RegistryClient, RegistryError
from warmer.oci.validate import InvalidValue, check_digest, check_media_type, check_size
from warmer.warm.artifacts import REFERRERS, Artifact, ArtifactPolicy, signature_verdict
from warmer.warm.plan import Blob

log = logging.getLogger("warmer.warm.discover")

Spend = Callable[[int], Awaitable[bool]]
MAX_REFERRER_PAGES = 20
MAX_REFERRERS = 256  # per subject: more is not a signature set, it is a flood


class OutOfRequests(Exception):
    """``spend`` refused: the rate-limit reserve is reached."""


def _entries(data: Mapping[str, Any], what: str) -> list[tuple[str, int, str, str]]:
    """(digest, size, media type, artifactType) of an index's descriptors; bad ones left out."""
    out = []
    manifests = data.get("manifests")
    for d in manifests if isinstance(manifests, list) else []:
        if not isinstance(d, dict):
            continue
        try:
            digest = check_digest(d.get("digest"))
            size = check_size(d.get("size"))
            media_type = check_media_type(d.get("mediaType") or "application/octet-stream")
            kind = d.get("artifactType")
            artifact_type = check_media_type(kind, parameters=True) if kind else ""
        except InvalidValue as exc:
            log.debug("%s: descriptor left out: %s", what, exc)
            continue
        out.append((digest, size, media_type, artifact_type))
    return out


def _blobs(manifest: Manifest) -> tuple[Blob, ...]:
    config = manifest.config
    parts = ([config] if config else []) + manifest.layers
    return tuple(Blob(d.digest, d.size, "blob", d.media_type) for d in parts)


class Discovery:
    """Artifact discovery and signature reading through one registry client."""

    def __init__(
        self,
        client: RegistryClient,
        policy: ArtifactPolicy,
        spend: Spend | None = None,
        probe: RegistryClient | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.spend = spend
        self.probe = probe
        self.referrers_api: bool | None = None  # learned from the first answer
        self.requests = 0  # manifest GETs made (counted against the reserve)
        self.uncounted = 0  # requests not counted: HEADs, referrers API GETs
        self._upstream: dict[str, str] = {}  # mirror path -> upstream path

    async def _exists(self, repository: str, tag: str) -> bool:
        """Whether ``tag`` exists, by a HEAD to the upstream; True when it cannot tell."""
        if self.probe is None:
            return True
        self.uncounted += 1
        try:
            await self.probe.head_manifest(self._upstream.get(repository, repository), tag)
        except NotFound:
            return False
        except RegistryError as exc:
            log.debug("HEAD %s:%s upstream: %s; asking the mirror", repository, tag, exc)
        return True

    async def _manifest(self, repository: str, reference: str) -> Manifest | None:
        """A manifest by tag or digest, None when the registry has none there."""
        if not reference.startswith("sha256:") and not await self._exists(repository, reference):
            return None
        if self.spend is not None and not await self.spend(1):
            raise OutOfRequests(f"{repository}:{reference}")
        self.requests += 1
        try:
            return await self.client.get_manifest(repository, reference)
        except NotFound:
            return None

    async def _referrers_api(self, repository: str, digest: str) -> list[Any] | None:
        """The referrers API's descriptors (all pages), or None: not answered here."""
        if self.referrers_api is False:
            return None
        client = self.probe or self.client
        if client is self.probe:
            repository = self._upstream.get(repository, repository)
        # Not a manifest GET (not counted as a pull), so not charged to the reserve.
        self.uncounted += 1
        what = f"referrers of {repository}@{digest}"
        scopes = [repository_scope(repository, "pull")]
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        found: list[Any] = []
        for _ in range(MAX_REFERRER_PAGES):
            if path is None:
                break
            resp = await client._call(
                "GET", path, scopes, what, ok=(200, 400, 404, 405), headers={"Accept": OCI_INDEX}
            )
            if resp.status_code != 200:
                self.referrers_api = False
                log.debug(
                    "%s: no referrers API (%s); using the fallback tag", what, resp.status_code
                )
                return None
            try:
                data = json.loads(resp.content)
            except (ValueError, RecursionError):
                data = None
            if not isinstance(data, dict):
                self.referrers_api = False
                return None
            self.referrers_api = True
            found.extend(_entries(data, what))
            link = resp.links.get("next", {}).get("url")
            path = None
            if link:
                url = client.follow(resp, link, what)
                path = str(url) if client._same_origin(url) else None
        return found

    async def _referrers(self, repository: str, subject: str, level: int) -> list[Artifact]:
        listed = await self._referrers_api(repository, subject)
        index: Manifest | None = None
        if listed is None:
            index = await self._manifest(repository, fallback_tag(subject))
            if index is None or not index.is_index:
                return []
            listed = _entries(index.data, f"{repository}:{fallback_tag(subject)}")
        wanted = []
        for digest, _size, _media, artifact_type in listed[:MAX_REFERRERS]:
            kind = self.policy.kind_of_type(artifact_type)
            if kind is not None:
                wanted.append((digest, kind, artifact_type))
        found: list[Artifact] = []
        manifests = await asyncio.gather(*(self._manifest(repository, d) for d, _, _ in wanted))
        for (digest, kind, artifact_type), m in zip(wanted, manifests, strict=True):
            if m is None or m.is_index:
                continue
            said = m.data.get("subject")
            if not isinstance(said, dict) or said.get("digest") != subject:
                log.debug("%s@%s: listed as a referrer of %s, not its subject", repository,
                          digest, subject)  # fmt: skip
                continue
            found.append(
                Artifact(subject, kind, m.digest, m.size, m.media_type, None, _blobs(m),
                         artifact_type, level, m.data)
            )  # fmt: skip
        if index is not None and found:
            # The index goes first, by its tag: a client reads it before the referrers.
            found.insert(
                0,
                Artifact(subject, REFERRERS, index.digest, index.size, index.media_type,
                         fallback_tag(subject), (), "", level, index.data),
            )  # fmt: skip
        return found

    async def _tagged(self, repository: str, subject: str, kind: str, level: int) -> list[Artifact]:
        tag = artifact_tag(subject, kind)
        m = await self._manifest(repository, tag)
        if m is None or m.is_index:
            return []
        return [Artifact(subject, kind, m.digest, m.size, m.media_type, tag, _blobs(m),
                         "", level, m.data)]  # fmt: skip

    async def find(
        self, repository: str, digests: Iterable[str], upstream_repository: str | None = None
    ) -> list[Artifact]:
        """The artifacts attached to ``digests`` (and theirs, to the policy's depth), in
        ``repository`` at the mirror (``upstream_repository`` at the upstream, if other).

        Raises :class:`OutOfRequests` when ``spend`` refuses, RegistryError when the
        registry fails (a 404 is an answer: nothing there).
        """
        if not self.policy.active:
            return []
        if upstream_repository:
            self._upstream[repository] = upstream_repository
        subjects = list(dict.fromkeys(digests))
        seen = set(subjects)
        out: list[Artifact] = []
        for level in range(1, self.policy.depth + 1):
            if not subjects:
                break
            jobs: list[Awaitable[list[Artifact]]] = []
            for subject in subjects:
                jobs += [
                    self._tagged(repository, subject, k, level) for k in self.policy.tag_kinds()
                ]
                jobs.append(self._referrers(repository, subject, level))
            found = [a for part in await asyncio.gather(*jobs) for a in part]
            subjects = []
            for a in found:
                if a.digest in seen and a.kind != REFERRERS:
                    continue
                seen.add(a.digest)
                out.append(a)
                if a.kind not in ("signatures", REFERRERS):
                    subjects.append(a.digest)  # an SBOM's or attestation's own signatures
        return out

    async def _read(self, repository: str, digest: str, size: int, limit: int) -> bytes | None:
        """A small blob's bytes (verified against its digest by the client), or None."""
        chunks: list[bytes] = []
        try:
            await self.client.fetch_blob(
                repository, digest, sink=chunks.append, size=min(size, limit)
            )
        except RegistryError as exc:
            log.debug("%s@%s: unreadable: %s", repository, digest, exc)
            return None
        return b"".join(chunks)

    async def verdict(
        self,
        repository: str,
        digest: str,
        artifacts: Sequence[Artifact],
        registries: Collection[str] = (),
    ) -> str | None:
        """None when a signature of ``digest`` verifies under the policy (a cosign ``.sig``
        with its keys, a sigstore bundle referrer with its keyless identities), else why
        not. Reads each signature's payload blobs and each bundle (a few KB each)."""
        found: list[tuple[Mapping[str, Any], Mapping[str, bytes]]] = []
        bundles: list[bytes] = []
        for a in artifacts:
            if a.subject != digest or a.kind != "signatures":
                continue
            if a.tag is not None and self.policy.keys:
                payloads: dict[str, bytes] = {}
                for layer in signature_layers(a.data):
                    body = await self._read(repository, layer.digest, layer.size, MAX_PAYLOAD)
                    if body is not None:
                        payloads[layer.digest] = body
                found.append((a.data, payloads))
            elif a.tag is None and self.policy.keyless and is_bundle_type(a.artifact_type):
                for blob in a.blobs:
                    if is_bundle_type(blob.media_type):
                        body = await self._read(repository, blob.digest, blob.size, MAX_BUNDLE)
                        if body is not None:
                            bundles.append(body)
        return signature_verdict(found, self.policy, digest, repository, registries, bundles)
