"""What a warm run asks for, resolved: wanted images, registry clients, manifest trees.

Resolving is where a warm run spends upstream manifest requests: each tag's manifests are
fetched through the top tier of the region's chain (the top manifest by its tag, so the
mirror keeps the tag too), so the mirror keeps them and planning and warming together cost
one upstream GET per manifest. What the top tier answered here is noted (:class:`Learned`)
and the run does not ask it again: one manifest request per manifest per mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from warmer.config import Config, ConfigError, CredentialsRef, MirrorConfig
from warmer.oci.auth import CredentialRef, Credentials, CredentialsError, credentials_from_ref
from warmer.oci.manifest import ImageTree, Platform
from warmer.oci.reference import InvalidReference, Reference, parse
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.store.ledger import Ledger, RunItem
from warmer.warm import plan as planner
from warmer.warm.artifacts import Artifact, ArtifactPolicy, plan_blobs
from warmer.warm.discover import Discovery, OutOfRequests
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
    client = RegistryClient(
        target,
        credentials=credentials(m.credentials, target, f"mirrors.{name}"),
        retries=config.run.retries,
        timeout=config.run.timeout.total_seconds(),
        verify=m.tls.ca_file or m.tls.verify,
    )
    client.tags_by_head = m.kind == "distribution"  # see RegistryClient.get_manifest
    return client


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


@dataclass
class Learned:
    """What resolving learned from the top tiers, for the run that follows: ``manifests``
    maps (mirror, repository at the mirror, tag or digest asked for) to the digest it
    answered (the run counts those manifest items done without asking again), and
    ``requests`` counts what was sent to each mirror, (mirror, kind, method) -> n."""

    manifests: dict[tuple[str, str, str], str] = field(default_factory=dict)
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def note(self, mirror: str, repository: str, reference: str, tree: ImageTree) -> None:
        self.manifests[(mirror, repository, reference)] = tree.digest
        for digest, _ in tree.manifest_digests():
            self.manifests[(mirror, repository, digest)] = digest

    def answered(self, item: RunItem) -> bool:
        """Whether the top tier answered this manifest item (its tag or digest, its digest)
        while resolving: asking again would cost a round trip (by tag, one to its parent
        too). Not for a replica with its own cache: the balancer chose whom resolving asked."""
        if item.kind != "manifest" or item.instance:
            return False
        return self.manifests.get((item.mirror, item.repository, item.reference)) == item.digest

    def count(self, mirror: str, client: RegistryClient) -> None:
        for (kind, method), n in client.requests.items():
            self.requests[(mirror, kind, method)] += n


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
    learned: Learned | None = None,
) -> tuple[list[planner.WantedImage], list[planner.Skipped]]:
    """Resolve each wanted tag through the top tier of the region's chain.

    Through the top mirror rather than the upstream: the mirror fetches each manifest from
    the upstream once and keeps it, so planning and warming together spend one upstream
    manifest GET per manifest, and they are spent here. With a ``reserve``, each image
    first reserves what it may cost upstream (its index and one manifest per platform),
    waiting at the reserve until ``until`` (a ``time.monotonic()`` value; None waits for
    the limit window to reset); an image that could not get it is left out with the reason.
    With ``ready``, each image (or its reason to be left out) is also put there as soon as it
    is known, and ``None`` at the end. With ``learned``, what the top tiers answered and the
    requests sent to them are noted there.

    Each top manifest is asked for by its tag (the mirror keeps the tag, for pulls while
    the upstream is down), without first asking the upstream for the tag's digest: the
    mirror does that itself. The tags of one repository go one after the other, since
    aliases (latest, 3, 3.12) share a manifest and two concurrent cold GETs of it make the
    mirror fetch it twice; an alias of a tree resolved already costs one request (its
    platform manifests are not asked for again).
    """
    reg = config.region(region)
    platforms = [Platform.parse(p) for p in reg.platforms]
    tops = {config.chain(m)[0] for m in reg.mirrors}
    clients: dict[str, RegistryClient] = {}
    wanted: list[planner.WantedImage] = []
    skipped: list[planner.Skipped] = []
    sem = asyncio.Semaphore(concurrency)

    trees: dict[tuple[str, str, str], asyncio.Task[ImageTree]] = {}
    done: dict[tuple[str, str, str], ImageTree] = {}  # (mirror URL, repository, digest)
    policy = ArtifactPolicy.from_config(reg.artifacts)
    finders: dict[str, Discovery] = {}  # per top mirror; tags are asked upstream by HEAD
    probes: list[RegistryClient] = []  # the upstream clients of those HEADs
    examined: dict[tuple[str, str, str], asyncio.Task[tuple[list[Artifact], str | None]]] = {}

    async def spend(n: int) -> bool:
        if reserve is None:
            return True
        if not await reserve.spend(until, n):
            return False
        reserve.settle(n)
        return True

    async def fetch_tree(client: RegistryClient, repo: str, reference: str) -> ImageTree:
        async with sem:
            if reserve is not None and not await reserve.spend(until, 1 + len(platforms)):
                raise _Reserved(
                    f"{RESERVE_REASON}: {reserve.remaining} manifest requests left, "
                    f"keeping {reserve.reserve} for CI"
                )
            try:
                top = await client.get_manifest(repo, reference)
                known = done.get((client.url, repo, top.digest))
                if known is not None:
                    return known  # an alias: its platform manifests are known already
                tree = await client.tree(repo, reference, top, platforms)
                done[(client.url, repo, tree.digest)] = tree
                return tree
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
        # Tags of one repository one after the other (see above); digests at once.
        lookup = ref.reference
        key = (top, repo, lookup)
        async with contextlib.nullcontext() if ref.digest else by_tag[(top, repo)]:
            if key not in trees:
                trees[key] = asyncio.create_task(fetch_tree(client, repo, lookup))
            try:
                tree = await asyncio.shield(trees[key])
            except (_Reserved, _Unresolved) as exc:
                skip(planner.Skipped(str(ref), str(exc)))
                return
        if learned is not None:
            learned.note(top, repo, lookup, tree)
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
        if top not in finders:
            probes.append(upstream_client(config, upstream))
            probes[-1].retries = 0
            finders[top] = Discovery(client, policy, spend, probes[-1])
        artifacts = await attached(finders[top], top, ref, repo, tree)
        if isinstance(artifacts, planner.Skipped):
            skip(artifacts)
            return
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
                artifacts=artifacts,
            )
        )

    async def attached(
        finder: Discovery, top: str, ref: Reference, repo: str, tree: ImageTree
    ) -> tuple[planner.Blob, ...] | planner.Skipped:
        """The image's artifacts as plan entries, or why the image is left out: its
        signature does not verify under a verifying policy, or the reserve is reached.
        Aliases of one digest share one discovery (and one verdict)."""
        if not policy.active:
            return ()
        key = (top, repo, tree.digest)
        if key not in examined:
            examined[key] = asyncio.create_task(examine(finder, top, ref, repo, tree))
        try:
            found, why = await asyncio.shield(examined[key])
        except OutOfRequests:
            return planner.Skipped(str(ref), f"{RESERVE_REASON}: artifact lookups held back")
        except RegistryError as exc:
            if policy.verifying:
                return planner.Skipped(str(ref), f"cannot verify its signature: {exc}")
            log.warning("%s: artifacts not discovered: %s", ref, exc)
            return ()
        if why is None:
            return plan_blobs(found)
        return planner.Skipped(str(ref), f"signature does not verify: {why}")

    async def examine(
        finder: Discovery, top: str, ref: Reference, repo: str, tree: ImageTree
    ) -> tuple[list[Artifact], str | None]:
        """Discover (and under a verifying policy, verify) once per digest; a digest the
        top mirror holds warm whose signature no longer verifies is an incident."""
        digests = [d for d, _ in tree.manifest_digests()]
        found = await finder.find(repo, digests, ref.repository)
        if learned is not None:
            learned.manifests.update({(top, repo, a.tag or a.digest): a.digest for a in found})
        if not policy.verifying:
            return found, None
        up = config.upstreams[config.upstream_of(top)]
        registries = {ref.registry, *up.aliases, up.url.split("://", 1)[-1].split("/")[0]}
        why = await finder.verdict(repo, tree.digest, found, registries)
        held = [
            h for m in sorted(tops) for h in ledger.holding_rows(m, ref.repository, tree.digest)
            if h.state == "warm"
        ] if why else []  # fmt: skip
        if held:  # warmed before, so it verified then: re-signed or tampered
            ledger.record_incident(
                mirror=held[0].mirror, repository=ref.repository, digest=tree.digest,
                kind="signature", detail=f"{ref}: {why}"[:500], now=now, run_id=None,
            )  # fmt: skip
            log.error("INCIDENT %s (%s): signature no longer verifies: %s", ref, tree.digest, why)
        return found, why

    by_tag: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
    try:
        await asyncio.gather(*(one(w) for w in wants))
    finally:
        for name, c in clients.items():
            if learned is not None:
                learned.count(name, c)
            await c.aclose()
        for task in examined.values():
            task.cancel()
        await asyncio.gather(*examined.values(), return_exceptions=True)
        for c in probes:
            await c.aclose()
        if ready is not None:
            ready.put_nowait(None)
    wanted.sort(key=lambda w: w.image)
    return wanted, skipped
