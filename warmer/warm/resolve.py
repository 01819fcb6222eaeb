"""What a warm run asks for, resolved: wanted images, registry clients, manifest trees.

Resolving is where a warm run spends upstream manifest requests: each tag is pinned by a
HEAD to its upstream (not counted by Docker Hub), then its manifests are fetched through
the top tier of the region's chain, so the mirror keeps them and planning and warming
together cost one upstream GET per manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from warmer.config import Config, ConfigError, CredentialsRef, MirrorConfig
from warmer.oci.auth import CredentialRef, Credentials, CredentialsError, credentials_from_ref
from warmer.oci.manifest import ImageTree, Platform
from warmer.oci.reference import InvalidReference, Reference, parse
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.store.ledger import Ledger
from warmer.warm import plan as planner
from warmer.warm.reserve import RateReserve

log = logging.getLogger("warmer.warm.resolve")

RESERVE_REASON = "upstream rate-limit reserve"  # an image held back for CI, not a failure


@dataclass(frozen=True)
class Want:
    """An image someone wants warm, with its predicted value: ``score`` (pulls) and ``stay``
    (the share of them before the tag's expected move; see the planner's "Value")."""

    ref: Reference
    score: float = 1.0
    stay: float = 1.0


def credentials(ref: CredentialsRef | None, url: str, where: str = "") -> Credentials | None:
    """The credentials ``ref`` names; ``where`` (``upstreams.hub``) prefixes a
    CredentialsError's message, so it names the config key as well as the registry."""
    if ref is None:
        return None
    host = url.split("://", 1)[-1].split("/", 1)[0]
    try:
        return credentials_from_ref(
            CredentialRef(
                username=ref.username,
                username_env=ref.username_env,
                password_env=ref.password_env,
                password_file=ref.password_file,
                token_env=ref.token_env,
                docker_config=ref.docker_config or False,
            ),
            host,
        )
    except CredentialsError as exc:
        raise CredentialsError(f"{where}.credentials: {exc}" if where else str(exc)) from None


def mirror_client(config: Config, name: str, url: str | None = None) -> RegistryClient:
    m: MirrorConfig = config.mirrors[name]
    target = url or m.url
    return RegistryClient(
        target,
        credentials=credentials(m.credentials, target, f"mirrors.{name}"),
        retries=config.run.retries,
        timeout=config.run.timeout.total_seconds(),
        verify=m.tls.ca_file or m.tls.verify,
    )


def upstream_client(config: Config, name: str) -> RegistryClient:
    up = config.upstreams[name]
    return RegistryClient(
        up.url,
        credentials=credentials(up.credentials, up.url, f"upstreams.{name}"),
        retries=config.run.retries,
        timeout=config.run.timeout.total_seconds(),
        verify=up.tls.ca_file or up.tls.verify,
    )


def wants_from_args(images: Sequence[str]) -> list[Want]:
    out = []
    for text in images:
        try:
            out.append(Want(parse(text)))
        except InvalidReference as exc:
            raise ConfigError(str(exc)) from None
    return out


def wants_from_ranking(config: Config, region: str, top: int | None) -> list[Want]:
    """The stored ranking of ``region`` (from ``warmer rank``), best first."""
    try:
        from warmer.store.rankings import latest_ranking
    except ImportError:  # pragma: no cover - analytics is part of the distribution
        return []
    frame = latest_ranking(config.database.url, region)
    if frame is None or len(frame) == 0:
        return []
    if top:
        frame = frame.head(top)
    out = []
    for row in frame.itertuples():
        text = f"{row.image}:{row.tag}" if getattr(row, "tag", "") else str(row.image)
        try:
            stay = float(getattr(row, "stay", 1.0))
            out.append(Want(parse(text), float(row.score), 1.0 if stay != stay else stay))
        except InvalidReference:
            log.warning("ranking row %r is not a valid reference; skipped", text)
    return out


# Images as they resolve (or why not), then None: see ``resolve(ready=...)``.
Ready = asyncio.Queue[planner.WantedImage | planner.Skipped | None]


class _Reserved(Exception):
    """An image left out to keep the rate-limit reserve for CI."""


class _Unresolved(Exception):
    """An image whose manifests could not be fetched; the message says why."""


@asynccontextmanager
async def pinning(
    config: Config, wants: Sequence[Want], concurrency: int = 16
) -> AsyncIterator[dict[str, asyncio.Task[str | None]]]:
    """Each tag's digest by a HEAD to its upstream (HEAD is not counted by Docker Hub).

    Yields ``{str(ref): task}``; a task's result is the digest, or ``None`` when the
    upstream did not answer (that tag is resolved through the mirror by tag: an upstream
    the warmer cannot reach directly). The HEADs run while the caller goes on, so an image
    is resolved as soon as its own tag is pinned.
    """
    sem = asyncio.Semaphore(concurrency)
    clients: dict[str, RegistryClient] = {}

    async def head(w: Want, client: RegistryClient) -> str | None:
        async with sem:
            try:
                return (await client.head_manifest(w.ref.repository, w.ref.reference)).digest
            except RegistryError as exc:
                log.debug("HEAD %s upstream: %s; resolving through the mirror", w.ref, exc)
                return None

    tasks: dict[str, asyncio.Task[str | None]] = {}
    try:
        for w in wants:
            name = config.upstream_for_registry(w.ref.registry)
            if not w.ref.tag or w.ref.digest or name is None or str(w.ref) in tasks:
                continue
            if name not in clients:
                clients[name] = upstream_client(config, name)
                clients[name].retries = 0
            tasks[str(w.ref)] = asyncio.create_task(head(w, clients[name]))
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for client in clients.values():
            await client.aclose()


async def resolve(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    now: datetime,
    concurrency: int = 16,
    reserve: RateReserve | None = None,
    until: float | None = None,
    ready: Ready | None = None,
) -> tuple[list[planner.WantedImage], list[planner.Skipped]]:
    """Resolve each wanted tag through the top tier of the region's chain.

    Through the top mirror rather than the upstream: the mirror fetches each manifest from
    the upstream once and keeps it, so planning and warming together spend one upstream
    manifest GET per manifest, and they are spent here. With a ``reserve``, each image
    first reserves what it may cost upstream (its index and one manifest per platform),
    waiting at the reserve until ``until`` (a ``time.monotonic()`` value; None waits for
    the limit window to reset); an image that could not get it is left out with the reason.
    With ``ready``, each image (or its reason to be left out) is also put there as soon as it
    is known, and ``None`` at the end.
    """
    reg = config.region(region)
    platforms = [Platform.parse(p) for p in reg.platforms]
    tops = {config.chain(m)[0] for m in reg.mirrors}
    clients: dict[str, RegistryClient] = {}
    wanted: list[planner.WantedImage] = []
    skipped: list[planner.Skipped] = []
    sem = asyncio.Semaphore(concurrency)

    trees: dict[tuple[str, str, str], asyncio.Task[ImageTree]] = {}

    async def fetch_tree(client: RegistryClient, repo: str, reference: str) -> ImageTree:
        async with sem:
            if reserve is not None and not await reserve.spend(until, 1 + len(platforms)):
                raise _Reserved(
                    f"{RESERVE_REASON}: {reserve.remaining} manifest requests left, "
                    f"keeping {reserve.reserve} for CI"
                )
            try:
                return await client.resolve(repo, reference, platforms)
            except RegistryError as exc:
                why = await reserve.explain(exc) if reserve is not None else str(exc)
                raise _Unresolved(f"cannot resolve: {why}") from None
            finally:
                if reserve is not None:
                    reserve.settle(1 + len(platforms))

    def skip(why: planner.Skipped) -> None:
        skipped.append(why)
        if ready is not None:
            ready.put_nowait(why)

    def found(image: planner.WantedImage) -> None:
        wanted.append(image)
        if ready is not None:
            ready.put_nowait(image)

    async def one(want: Want) -> None:
        ref = want.ref
        upstream = config.upstream_for_registry(ref.registry)
        if upstream is None:
            skip(planner.Skipped(str(ref), f"no upstream configured for {ref.registry}"))
            return
        top = next((t for t in sorted(tops) if config.upstream_of(t) == upstream), None)
        if top is None:
            skip(planner.Skipped(str(ref), f"no mirror of {region} proxies {upstream}"))
            return
        if top not in clients:
            clients[top] = mirror_client(config, top)
        client = clients[top]
        repo = config.mirrors[top].repository_for(ref.repository)
        # A tag pinned by the upstream HEAD is fetched by digest: aliases of one manifest
        # then share one fetch (one upstream GET) however many tags point at it. Unpinned
        # tags of one repository go one after the other: aliases (latest, 3, 3.12) share a
        # manifest, and two concurrent cold GETs of it by tag make the mirror fetch it twice.
        pin = pins.get(str(ref))
        pinned = await pin if pin is not None else None
        lookup = pinned or ref.reference
        key = (top, repo, lookup)
        async with contextlib.nullcontext() if pinned else by_tag[(top, repo)]:
            if key not in trees:
                trees[key] = asyncio.create_task(fetch_tree(client, repo, lookup))
            try:
                tree = await asyncio.shield(trees[key])
            except (_Reserved, _Unresolved) as exc:
                skip(planner.Skipped(str(ref), str(exc)))
                return
        if ref.tag:
            ledger.record_resolution(
                image=ref.name,
                tag=ref.tag,
                digest=tree.digest,
                media_type=tree.media_type,
                where=top,
                tier=0,
                now=now,
            )
        manifests = tuple(
            planner.Blob(d, size, "manifest", "") for d, size in tree.manifest_digests()
        )
        blobs = tuple(planner.Blob(d.digest, d.size, "blob", d.media_type) for d in tree.blobs())
        found(
            planner.WantedImage(
                image=str(ref),
                upstream=upstream,
                repository=ref.repository,
                tag=ref.tag,
                digest=tree.digest,
                score=want.score,
                manifests=manifests,
                blobs=blobs,
                stay=want.stay,
            )
        )

    by_tag: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
    try:
        async with pinning(config, wants) as pins:
            await asyncio.gather(*(one(w) for w in wants))
    finally:
        for c in clients.values():
            await c.aclose()
        if ready is not None:
            ready.put_nowait(None)
    wanted.sort(key=lambda w: w.image)
    return wanted, skipped
