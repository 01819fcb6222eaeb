"""An async client for the OCI distribution API: manifests, blobs, tags, pushes.

:class:`RegistryClient` adds the distribution API's operations to
:class:`warmer.oci.transport.RegistryTransport` (challenge auth, retries with jittered backoff,
redirects that never carry the Authorization header to another host, rate-limit headers).
Every manifest and blob read is checked against its digest.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import IO

import httpx

from warmer.oci.auth import Credentials, repository_scope
from warmer.oci.listing import RegistryListing
from warmer.oci.manifest import (
    MANIFEST_ACCEPT,
    SCHEMA1_TYPES,
    Descriptor,
    ImageTree,
    Manifest,
    ManifestFormatError,
    ManifestHead,
    Platform,
    digest_of,
    new_hasher,
    parse_manifest,
    select_platforms,
    sha256_digest,
)
from warmer.oci.ratelimit import RateLimit
from warmer.oci.transport import (
    MAX_ERROR_BODY,
    DigestMismatch,
    InvalidResponse,
    NoMatchingPlatform,
    NotFound,
    RateLimited,
    RegistryError,
    TransientError,
    Unauthorized,
    Unreachable,
    UnsupportedManifest,
    _detail,
    _is_digest,
    _Retry,
    read_at_most,
    safe_url,
)
from warmer.oci.validate import (
    InvalidValue,
    check_content_type,
    check_digest,
    check_size_text,
)

__all__ = [
    "Credentials",
    "Descriptor",
    "DigestMismatch",
    "ImageTree",
    "InvalidResponse",
    "Manifest",
    "ManifestHead",
    "NoMatchingPlatform",
    "NotFound",
    "Platform",
    "RateLimit",
    "RateLimited",
    "RegistryClient",
    "RegistryError",
    "TransientError",
    "Unauthorized",
    "Unreachable",
    "UnsupportedManifest",
]

log = logging.getLogger(__name__)
UPLOAD_CHUNK = 16 * 1024 * 1024  # bytes per PATCH of a streamed upload


def served_from_storage(headers: httpx.Headers) -> bool:
    """Whether a blob answer came from the registry's own storage: CNCF distribution serves
    a stored blob through Go's file server (``Accept-Ranges``, ``Cache-Control``) and relays
    one it does not hold from its parent without them (measured on 2.8, HEAD and GET)."""
    return "accept-ranges" in headers or "cache-control" in headers


class RegistryClient(RegistryListing):
    """The distribution API of one registry at ``base_url`` (e.g. ``http://127.0.0.1:5000``).

    ``RegistryClient(base_url, *, credentials=None, http=None, retries=4, timeout=60.0,
    verify=True, backoff=0.5, max_backoff=30.0)``; use it as ``async with``. ``last_ratelimit``
    holds the rate-limit headers last seen from this registry (``None`` until one is seen).
    """

    # Whether get_manifest(..., known=) asks a tag with a HEAD after a GET by digest (set for
    # CNCF distribution mirrors, whose behaviour it relies on).
    tags_by_head = False

    # --- pulling ------------------------------------------------------------------------

    # --- values from the registry's headers, checked ------------------------------------

    def _digest_header(self, resp: httpx.Response, what: str) -> str | None:
        """Docker-Content-Digest, checked; ``None`` when absent or empty."""
        value = resp.headers.get("docker-content-digest")
        if not value:
            return None
        try:
            return check_digest(value, "Docker-Content-Digest")
        except InvalidValue as exc:
            raise self.invalid(what, exc) from None

    def _type_header(self, resp: httpx.Response, what: str) -> str:
        """Content-Type's media type without parameters, checked; ``""`` when absent."""
        try:
            return check_content_type(resp.headers.get("content-type"))
        except InvalidValue as exc:
            raise self.invalid(what, exc) from None

    def _length_header(self, resp: httpx.Response, what: str) -> int:
        """Content-Length, checked; 0 when absent."""
        value = resp.headers.get("content-length")
        if value is None:
            return 0
        try:
            return check_size_text(value, "Content-Length")
        except InvalidValue as exc:
            raise self.invalid(what, exc) from None

    async def ping(self) -> None:
        """``GET /v2/``: succeeds when the registry answers and accepts our credentials."""
        await self._call("GET", "/v2/", (), f"registry API at {self.url}/v2/")

    async def head_manifest(self, repository: str, reference: str) -> ManifestHead:
        """HEAD a manifest (not counted by Docker Hub's rate limit)."""
        what = f"manifest {repository}:{reference}"
        resp = await self._call(
            "HEAD",
            self._path(repository, "manifests", reference),
            [repository_scope(repository, "pull")],
            what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        digest = self._digest_header(resp, what)
        media_type = self._type_header(resp, what)
        size = self._length_header(resp, what)
        if media_type in SCHEMA1_TYPES:
            raise UnsupportedManifest(f"{what} at {self.url} is Docker schema 1, not supported")
        if _is_digest(reference) and digest and digest != reference:
            raise DigestMismatch(what, reference, digest)
        if not digest and _is_digest(reference):
            digest = reference
        if not digest:
            # The registry did not say; only a GET can tell (and it is counted upstream).
            log.debug("%s: no Docker-Content-Digest on HEAD, falling back to GET", what)
            m = await self.get_manifest(repository, reference)
            return ManifestHead(m.digest, m.media_type, m.size)
        return ManifestHead(digest, media_type, size)

    async def get_manifest(
        self, repository: str, reference: str, known: str | None = None
    ) -> Manifest:
        """GET a manifest; its sha256 is checked against the digest asked for or announced.

        With ``known`` (the digest the tag ``reference`` is expected to point to) and
        ``tags_by_head`` set: GET by that digest, then HEAD the tag. A pull-through CNCF
        distribution keeps the tag either way, but a GET by tag of a manifest it lacks asks
        its parent for the tag twice (it fetches the manifest by the tag too: measured on
        2.8), and each ask is a round trip there (with an anonymous parent, a re-ping too).
        A tag that points elsewhere now is then fetched by tag: its current manifest.
        """
        if known is not None and self.tags_by_head and not _is_digest(reference):
            manifest = await self.get_manifest(repository, known)
            if (await self.head_manifest(repository, reference)).digest == known:
                return manifest
        what = (
            f"manifest {repository}:{reference}"
            if not _is_digest(reference)
            else (f"manifest {repository}@{reference}")
        )
        resp = await self._call(
            "GET",
            self._path(repository, "manifests", reference),
            [repository_scope(repository, "pull")],
            what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        body = resp.content
        ctype = self._type_header(resp, what)
        if ctype in SCHEMA1_TYPES:
            raise UnsupportedManifest(
                f"{what} at {self.url} is Docker schema 1 ({ctype}), not supported; "
                "re-push it as Docker v2 schema 2 or OCI"
            )
        announced = self._digest_header(resp, what)
        expected = reference if _is_digest(reference) else announced
        try:
            actual = digest_of(body, expected or "sha256:0")
        except ManifestFormatError as exc:
            raise UnsupportedManifest(f"{what} at {self.url}: {exc}") from None
        if expected and actual != expected:
            raise DigestMismatch(what, expected, actual)
        try:
            return parse_manifest(body, actual, ctype)
        except ManifestFormatError as exc:
            raise UnsupportedManifest(f"{what} at {self.url}: {exc}") from None

    async def resolve(
        self, repository: str, reference: str, platforms: Sequence[Platform] = ()
    ) -> ImageTree:
        """A tag or digest with the platform manifests selected (default linux/amd64).

        A single-platform manifest is returned as is (its platform is in its config blob,
        which is not fetched here).
        """
        top = await self.get_manifest(repository, reference)
        return await self.tree(repository, reference, top, platforms)

    async def tree(
        self, repository: str, reference: str, top: Manifest, platforms: Sequence[Platform] = ()
    ) -> ImageTree:
        """:meth:`resolve` from its top manifest ``top`` (fetched already as ``reference``):
        the platform manifests of an index are fetched, a single manifest is the tree."""
        if not top.is_index:
            desc = Descriptor(top.media_type, top.digest, top.size)
            return ImageTree(
                repository, reference, top.digest, top.media_type, top.size, None, [(desc, top)]
            )
        chosen = select_platforms(top.manifests, platforms)
        if not chosen:
            asked = ", ".join(str(p) for p in platforms) or "linux/amd64"
            have = ", ".join(sorted({str(d.platform) for d in top.manifests if d.platform}))
            raise NoMatchingPlatform(
                f"{repository}:{reference} ({top.digest}) has no manifest for {asked}"
                f" (it has: {have or 'none'})"
            )
        bodies = await asyncio.gather(*(self.get_manifest(repository, d.digest) for d in chosen))
        for d, m in zip(chosen, bodies, strict=True):
            if m.is_index:
                raise UnsupportedManifest(f"{repository}@{d.digest}: nested index not supported")
        return ImageTree(
            repository,
            reference,
            top.digest,
            top.media_type,
            top.size,
            top,
            list(zip(chosen, bodies, strict=True)),
        )

    async def _blob_head(
        self, repository: str, digest: str, scopes: Sequence[str]
    ) -> httpx.Response | None:
        """HEAD a blob: the response, or ``None`` when the registry does not have it."""
        resp = await self._call(
            "HEAD",
            self._path(repository, "blobs", digest),
            scopes,
            f"blob {repository}@{digest}",
            ok=(200, 404),
        )
        return None if resp.status_code == 404 else resp

    async def blob_size(self, repository: str, digest: str) -> int | None:
        """HEAD a blob: its size, or ``None`` when the registry does not have it."""
        resp = await self._blob_head(repository, digest, [repository_scope(repository, "pull")])
        return None if resp is None else self._length_header(resp, f"blob {repository}@{digest}")

    async def blob_stored(self, repository: str, digest: str) -> bool | None:
        """HEAD a blob through a pull-through mirror: did it answer from its own storage?

        CNCF distribution answers a blob it holds with ``Accept-Ranges`` and ``Cache-Control``
        (Go's file server), and one it relays from its parent without them (measured on
        2.8). ``True``: held; ``False``: relayed (the HEAD itself has the mirror fetch and
        store it); ``None``: not there.
        """
        resp = await self._blob_head(repository, digest, [repository_scope(repository, "pull")])
        if resp is None:
            return None
        return served_from_storage(resp.headers)

    async def blob_headers(
        self, repository: str, digest: str, method: str = "GET"
    ) -> httpx.Headers | None:
        """One blob request (``GET``, body read and dropped, or ``HEAD``) and its answer's
        headers (None: 404), whether a mirror answered from storage or relayed: for
        ``warmer probe``."""
        resp = await self._call(
            method, self._path(repository, "blobs", digest),
            [repository_scope(repository, "pull")], f"blob {repository}@{digest}", ok=(200, 404),
        )  # fmt: skip
        return None if resp.status_code == 404 else resp.headers

    async def fetch_blob(
        self,
        repository: str,
        digest: str,
        *,
        sink: Callable[[bytes], None] | None = None,
        on_bytes: Callable[[int], Awaitable[None]] | None = None,
        on_answer: Callable[[bool], None] | None = None,
        size: int | None = None,
        chunk_size: int = 256 * 1024,
    ) -> int:
        """Stream a blob, hashing on the fly; returns its size, or raises DigestMismatch.
        See :meth:`_blob`."""
        got = await self._blob(repository, digest, sink, on_bytes, on_answer, size, chunk_size)
        assert got is not None  # a relayed answer is read unless dropped
        return got

    async def trigger_blob(self, repository: str, digest: str) -> None:
        """Ask a pull-through mirror for a blob and close the connection at once: CNCF
        distribution 2.8 starts its background store of a blob it does not hold and finds
        nobody to relay it to (see :meth:`fetch_stored_blob`). Nothing is read."""
        try:
            check_digest(digest)
        except (InvalidValue, ManifestFormatError) as exc:
            raise RegistryError(f"blob {repository}@{digest}: {exc}") from None
        url = httpx.URL(self.url + self._path(repository, "blobs", digest))
        scopes = [repository_scope(repository, "pull")]
        await self._retrying(lambda: self.trigger(url, scopes))

    async def fetch_stored_blob(
        self,
        repository: str,
        digest: str,
        *,
        on_bytes: Callable[[int], Awaitable[None]] | None = None,
        on_answer: Callable[[bool], None] | None = None,
        size: int | None = None,
    ) -> int | None:
        """Like :meth:`fetch_blob`, but an answer a mirror relays from its parent (not
        served from its storage, see :func:`served_from_storage`) is dropped unread: the
        connection is closed after its headers and ``None`` returned. CNCF distribution
        2.8 keeps storing the blob in its background fetch (measured, one request alone:
        the parent sent the blob once and under 1.5 MB of the dropped copy; more in a busy
        run, see ``warmer.warm.coldread``), so a later call reads the stored copy."""
        return await self._blob(repository, digest, None, on_bytes, on_answer, size, drop=True)

    async def _blob(
        self,
        repository: str,
        digest: str,
        sink: Callable[[bytes], None] | None,
        on_bytes: Callable[[int], Awaitable[None]] | None,
        on_answer: Callable[[bool], None] | None,
        size: int | None,
        chunk_size: int = 256 * 1024,
        *,
        drop: bool = False,
    ) -> int | None:
        """Stream a blob, hashing on the fly; returns its size, or raises DigestMismatch.

        With ``size`` (the descriptor's), an answer longer than that is cut off as invalid
        rather than read to its end. ``on_answer(stored)`` is called once, with whether the
        first answer came from the registry's own storage (see :func:`served_from_storage`).

        ``on_bytes(n)`` is awaited after each chunk read (a bandwidth throttle goes there);
        ``sink`` receives the verified-so-far bytes in order. A connection lost mid-blob is
        retried with ``Range`` from where it stopped (or by skipping what was already read
        when the server ignores ranges), so the sink never sees a byte twice.
        """
        what = f"blob {repository}@{digest}"
        try:
            hasher = new_hasher(check_digest(digest))
        except (InvalidValue, ManifestFormatError) as exc:
            raise RegistryError(f"{what}: {exc}") from None
        url = httpx.URL(self.url + self._path(repository, "blobs", digest))
        scopes = [repository_scope(repository, "pull")]
        received = 0
        dropped = False

        async def once() -> None:
            nonlocal received, dropped
            headers = {"Range": f"bytes={received}-"} if received else {}
            resp = await self._attempt("GET", url, scopes, headers, stream=True)
            try:
                if resp.status_code == 404:
                    resp = await read_at_most(resp, MAX_ERROR_BODY)
                    raise NotFound(f"{what} not found at {self.url} ({_detail(resp)})")
                if resp.status_code not in (200, 206):
                    resp = await read_at_most(resp, MAX_ERROR_BODY)
                    raise RegistryError(
                        f"{what}: unexpected answer from {self.url} ({_detail(resp)})"
                    )
                skip = received if resp.status_code == 200 else 0
                if not received:
                    stored = served_from_storage(resp.headers)
                    if on_answer is not None:
                        on_answer(stored)
                    if drop and not stored:
                        dropped = True
                        return  # closed unread (finally below)
                async for chunk in resp.aiter_bytes(chunk_size):
                    if on_bytes is not None:
                        await on_bytes(len(chunk))
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    if size is not None and received + len(chunk) > size:
                        raise InvalidResponse(f"{what}: {self.url} sent more than its {size} bytes")
                    hasher.update(chunk)
                    received += len(chunk)
                    if sink is not None:
                        sink(chunk)
            except httpx.TransportError as exc:
                raise _Retry(
                    f"{type(exc).__name__} after {received} bytes", safe_url(url)
                ) from None
            finally:
                await resp.aclose()

        await self._retrying(once)
        if dropped:
            return None
        actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(what, digest, actual)
        return received

    # --- pushing (seeding the sandbox, importing bundles) --------------------------------

    async def push_blob(
        self, repository: str, data: bytes, *, chunk_size: int | None = None
    ) -> Descriptor:
        """Upload a blob (skipped when present): one PUT, or PATCHes of ``chunk_size``."""
        digest = sha256_digest(data)
        desc = Descriptor("application/octet-stream", digest, len(data))
        scopes = [repository_scope(repository, "pull", "push")]
        if await self._blob_head(repository, digest, scopes) is not None:
            return desc
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        await self.upload_blob(
            repository, digest, len(data), io.BytesIO(data), chunk_size=chunk_size or len(data)
        )
        return desc

    async def upload_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        stream: IO[bytes],
        *,
        chunk_size: int = UPLOAD_CHUNK,
        on_bytes: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Upload ``size`` bytes read from ``stream`` as blob ``digest`` (POST, then one PUT
        when it fits in ``chunk_size``, else a PATCH per chunk and a closing PUT), never
        holding more than a chunk in memory. The registry checks the digest at the close."""
        scopes = [repository_scope(repository, "pull", "push")]
        what = f"blob upload {repository}@{digest}"
        octet = {"Content-Type": "application/octet-stream"}
        resp = await self._call(
            "POST", self._path(repository, "blobs", "uploads/"), scopes, what, ok=(202,)
        )
        location = self._location(resp, what)
        offset = 0
        while size > chunk_size:
            chunk = stream.read(chunk_size)
            if not chunk:
                break
            headers = {**octet, "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
            # An upload session's offset moves with each PATCH: a blind retry could corrupt it.
            resp = await self._call(
                "PATCH", location, scopes, what, ok=(202,), headers=headers, content=chunk,
                retry=False,
            )  # fmt: skip
            location = self._location(resp, what)
            offset += len(chunk)
            n = len(chunk)
            # httpx keeps a Response <-> stream reference cycle that holds the request body
            # until the cycle collector runs: without this a 1 GiB layer could sit in memory
            # as dozens of dead chunks. A young-generation collection is enough.
            del chunk, resp
            gc.collect(1)
            if on_bytes is not None:
                await on_bytes(n)
        rest = b"" if size > chunk_size else stream.read()
        await self._call(
            "PUT", location, scopes, what, ok=(201,), headers=octet, content=rest,
            params={"digest": digest},
        )  # fmt: skip
        if rest and on_bytes is not None:
            await on_bytes(len(rest))

    def _location(self, resp: httpx.Response, what: str) -> str:
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: {self.url} gave no upload location")
        return str(self.follow(resp, location, what))

    async def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Cross-repository mount; ``False`` when the registry would rather take an upload."""
        scopes = [
            repository_scope(repository, "pull", "push"),
            repository_scope(from_repository, "pull"),
        ]
        what = f"mount of {digest} from {from_repository} into {repository}"
        resp = await self._call(
            "POST",
            self._path(repository, "blobs", "uploads/"),
            scopes,
            what,
            ok=(201, 202),
            params={"mount": digest, "from": from_repository},
        )
        if resp.status_code == 201:
            return True
        # The registry opened an upload session instead; cancel it rather than leak it.
        location = resp.headers.get("location")
        if location:
            try:
                await self._call(
                    "DELETE",
                    str(self.follow(resp, location, what)),
                    scopes,
                    what,
                    ok=(204, 404),
                    retry=False,
                )
            except RegistryError as exc:
                log.debug("%s: could not cancel upload session: %s", what, exc)
        return False

    async def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        what = f"manifest push {repository}:{reference}"
        resp = await self._call(
            "PUT",
            self._path(repository, "manifests", reference),
            [repository_scope(repository, "pull", "push")],
            what,
            ok=(200, 201),
            headers={"Content-Type": media_type},
            content=body,
        )
        computed = sha256_digest(body)
        announced = self._digest_header(resp, what)
        if announced and announced.startswith("sha256:") and announced != computed:
            raise DigestMismatch(what, computed, announced)
        return announced or computed
