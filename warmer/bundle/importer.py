"""Import an air-gap bundle into a registry: verify every file, then push what is missing.

Order: every checksum is verified before anything is sent; a delta's omitted blobs are
checked at the target (HEAD) before anything is sent; then blobs (HEAD first: skipped when
present, mounted from another repository of the same import when possible, else uploaded
in chunks from the file), then platform manifests by digest, then indexes, then tags, then
the image's artifacts: referrers by digest, signatures, attestations and SBOMs by their tag
(``sha256-<hex>.sig``), the referrers fallback index (tag ``sha256-<hex>``) last, since a
registry refuses an index naming manifests it does not hold. Every step checks first, so
importing the same bundle again pushes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from warmer.bundle.bundlefile import ArtifactRecord, Bundle, file_problems
from warmer.bundle.ocilayout import blob_relpath
from warmer.bundle.source import BundleSource, actual_checksums, read_bundle
from warmer.oci.auth import repository_scope
from warmer.oci.registry import NotFound, RegistryClient, RegistryError

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT = 5.0  # seconds for one name lookup of the guard


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
    artifacts_pushed: int = 0
    artifacts_skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _normal_url(url: str) -> str:
    url = url.strip().rstrip("/").lower()
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if url.startswith(scheme) and url.endswith(port):
            url = url[: -len(port)]
    return url


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) a URL connects to: lower case, no trailing dot, default port by scheme."""
    try:
        u = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError):
        return None
    if u.scheme not in ("http", "https") or not u.host:
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    return u.host.lower().rstrip("."), port


def _lookup(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _addresses(host: str, port: int) -> set[str]:
    """Where ``host`` leads: its addresses, every loopback (and unspecified) one as
    ``"loopback"`` (127.0.0.0/8 and ::1 all reach this machine), IPv4-mapped IPv6 as IPv4.
    A name that does not resolve (in ``RESOLVE_TIMEOUT``) stands for itself."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        found = pool.submit(_lookup, host, port).result(timeout=RESOLVE_TIMEOUT)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return {host}
    finally:
        pool.shutdown(wait=False)
    out: set[str] = set()
    for text in found:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            out.add(text)
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        out.add("loopback" if ip.is_loopback or ip.is_unspecified else str(ip))
    return out


def same_endpoint(a: str, b: str) -> bool:
    """Whether URLs ``a`` and ``b`` reach the same listener: same port (80/443 implied by
    the scheme) and a resolved address in common, so ``http://localhost:5000``,
    ``http://127.1:5000``, ``http://[::1]:5000`` and ``HTTP://127.0.0.1.:5000/`` are one."""
    ea, eb = _endpoint(a), _endpoint(b)
    if ea is None or eb is None:
        return _normal_url(a) == _normal_url(b)
    if ea[1] != eb[1]:
        return False
    if ea[0] == eb[0]:
        return True
    return bool(_addresses(*ea) & _addresses(*eb))


def check_not_pull_through(target_url: str, mirrors: Mapping[str, Iterable[str]]) -> None:
    """Refuse ``target_url`` when it is (a replica of) a mirror: ``mirrors`` maps name -> URLs.

    Compared by where the URLs lead (see :func:`same_endpoint`), not as strings.
    """
    for name, urls in mirrors.items():
        for url in urls:
            if same_endpoint(target_url, url):
                raise PullThroughTarget(
                    f"{target_url} is the pull-through mirror {name!r} in the config ({url}): "
                    "a mirror caches its parent and must not be pushed to; import into its "
                    "upstream instead"
                )


# What a pull-through cache answers to a push, measured: CNCF distribution 2.8 (Debian's
# docker-registry) with ``proxy: remoteurl:`` in its config answers
#   POST /v2/<repo>/blobs/uploads/  ->  HTTP 405
#   {"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}
# (and the same to a manifest PUT and to a mount), where the same registry without the proxy
# section answers 202 with an upload Location. tests/test_bundle.py checks both answers.
PULL_THROUGH_STATUS = 405
PULL_THROUGH_CODE = "UNSUPPORTED"


def _error_codes(resp: httpx.Response) -> list[str]:
    try:
        errors = json.loads(resp.content).get("errors") or []
        return [str(e.get("code", "")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return []


async def probe_push(client: RegistryClient, repository: str) -> None:
    """Ask the target whether it takes pushes before anything is sent: open an upload
    session in ``repository`` and cancel it. Raise :class:`PullThroughTarget` when it
    answers as a pull-through cache does (HTTP 405, or a registry error code UNSUPPORTED)."""
    scopes = [repository_scope(repository, "pull", "push")]
    path = f"/v2/{repository}/blobs/uploads/"
    what = f"push probe {repository}"
    try:
        resp = await client._call("POST", path, scopes, what, ok=(202, 201, PULL_THROUGH_STATUS))
    except RegistryError as exc:
        if PULL_THROUGH_CODE in str(exc):
            raise PullThroughTarget(
                f"{client.url} refused a push with {PULL_THROUGH_CODE} ({exc}): it behaves "
                "as a pull-through cache; import into its upstream instead"
            ) from None
        raise
    codes = _error_codes(resp)
    if resp.status_code == PULL_THROUGH_STATUS or PULL_THROUGH_CODE in codes:
        shown = ", ".join(c for c in codes if c) or "no error code"
        raise PullThroughTarget(
            f"{client.url} answered a push (POST {path}) with HTTP {resp.status_code} {shown}, "
            "as a pull-through cache does: a mirror must not be pushed to; import into its "
            "upstream instead"
        )
    location = resp.headers.get("location")
    if resp.status_code == 202 and location:
        try:
            await client._call(
                "DELETE", str(resp.url.join(location)), scopes, what, ok=(204, 404), retry=False
            )
        except RegistryError as exc:
            log.debug("%s: could not cancel the probe's upload session: %s", what, exc)


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
        for blob in image.all_blobs():
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
    if bundle.images:
        await probe_push(client, target_repository(prefix, bundle.images[0].repository))
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
        for blob in image.all_blobs():
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
    for image in bundle.images:  # after every image: an artifact may sign another's digest
        repo = target_repository(prefix, image.repository)
        for a in sorted(image.artifacts, key=_push_order):
            if await _present(client, repo, a):
                report.artifacts_skipped += 1
                continue
            with source.open(blob_relpath(a.digest)) as f:
                body = f.read()
            await client.put_manifest(repo, a.tag or a.digest, body, a.media_type)
            report.artifacts_pushed += 1
    return report


def _push_order(a: ArtifactRecord) -> int:
    """Referrers (by digest) first, then tagged artifacts, then fallback indexes."""
    return 2 if a.kind == "referrers" else 0 if a.tag is None else 1


async def _present(client: RegistryClient, repo: str, a: ArtifactRecord) -> bool:
    """Whether the target already has the artifact under its tag (or digest)."""
    try:
        return (await client.head_manifest(repo, a.tag or a.digest)).digest == a.digest
    except NotFound:
        return False
