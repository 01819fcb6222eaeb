"""``warmer verify``: find out whether what the ledger says is warm is there, and intact.

First the ledger is reconciled with the mirrors (``warmer.upkeep.reconcile``): content the
cheap evidence shows gone (a repository missing from a mirror's catalog, a blob HEAD the
mirror relayed from its parent) is a ``lost`` incident and is not read again. Then, for
each tier of the region's chains, a sample of what is still held is fetched again through
that tier (GET, streamed and hashed against its digest, nothing kept; served from the
mirror's storage, so nothing is warmed), and each tracked tag is HEADed at the upstream and
at the tiers that serve it:

* content not matching its digest is an incident (``digest-mismatch``);
* a tier answering a tag with a digest the upstream never had for that tag is an incident
  (``foreign-digest``);
* a tier answering an older digest the upstream did have is reported as stale (refresh's
  business, not an incident);
* content the tier no longer has is ``lost`` (found by the reconcile, or a 404 on re-read)
  and stops counting as warm.

Artifacts (signatures, attestations, SBOMs, referrers) are ordinary manifest and blob
holdings, re-read like the rest. Each artifact warmed *by its tag* (``sha256-<hex>.sig``,
the fallback tag ``sha256-<hex>``) is HEADed at its tier by that tag: a tier answering
another digest than the one warmed is stale when the upstream answers that digest too (the
tag was re-signed upstream: ``warmer refresh`` warms it), an incident (``foreign-digest``)
when it does not; a tier that no longer answers the tag (404) is an incident (``lost``):
a client verifying signatures would be refused there.

An incident is recorded in the ledger (:meth:`Ledger.record_incident`, which stops the item
counting as warm, so the next run plans it again) and reported with exactly what differs
and where. Nothing is repaired silently.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from warmer.config import Config
from warmer.oci.reference import InvalidReference, parse
from warmer.oci.registry import DigestMismatch, NotFound, RegistryClient, RegistryError
from warmer.store.ledger import Holding, Ledger, as_utc
from warmer.upkeep import freshness as fr
from warmer.upkeep.reconcile import Lost, ReconcileReport, reconcile
from warmer.warm.resolve import mirror_client, upstream_client

PER_TIER = 4  # objects re-read at once through one mirror instance


@dataclass(frozen=True)
class Finding:
    kind: str  # digest-mismatch | foreign-digest | stale | evicted
    mirror: str
    url: str
    repository: str
    digest: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mirror": self.mirror,
            "url": self.url,
            "repository": self.repository,
            "digest": self.digest,
            "detail": self.detail,
        }


@dataclass
class VerifyReport:
    objects: int = 0  # holdings re-read
    bytes: int = 0
    tags: int = 0  # tags compared with the upstream
    artifact_tags: int = 0  # artifact tags HEADed at the tiers that hold them
    incidents: list[Finding] = field(default_factory=list)
    stale: list[Finding] = field(default_factory=list)
    lost: ReconcileReport = field(default_factory=ReconcileReport)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.incidents and not self.lost.lost

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "bytes": self.bytes,
            "tags": self.tags,
            "artifact_tags": self.artifact_tags,
            "incidents": [f.as_dict() for f in self.incidents],
            "stale": [f.as_dict() for f in self.stale],
            "reconcile": self.lost.as_dict(),
            "errors": self.errors + self.lost.errors,
        }


def region_mirrors(config: Config, region: str | None) -> list[str]:
    regions = [region] if region is not None else sorted(config.regions)
    out: set[str] = set()
    for r in regions:
        for target in config.region(r).mirrors:
            out.update(config.chain(target))
    return sorted(out, key=lambda m: (config.tier(m), m))


def pick(rows: list[Holding], sample: float, seed: int | None) -> list[Holding]:
    """A reproducible sample (with ``seed``) of ``ceil(len * sample)`` holdings."""
    ordered = sorted(rows, key=lambda h: (h.mirror, h.instance, h.repository, h.digest))
    k = min(len(ordered), math.ceil(len(ordered) * sample))
    if k >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, k), key=lambda h: (h.mirror, h.digest))


class _Verifier:
    def __init__(self, config: Config, ledger: Ledger, now: datetime) -> None:
        self.config, self.ledger, self.now = config, ledger, now
        self.report = VerifyReport()
        self.clients: dict[str, RegistryClient] = {}
        self.gates: dict[str, asyncio.Semaphore] = {}

    def client(self, mirror: str, url: str) -> RegistryClient:
        if url not in self.clients:
            if mirror in self.config.upstreams:
                self.clients[url] = upstream_client(self.config, mirror)
            else:
                self.clients[url] = mirror_client(self.config, mirror, url)
            self.gates[url] = asyncio.Semaphore(PER_TIER)
        return self.clients[url]

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()

    def incident(self, f: Finding) -> None:
        self.ledger.record_incident(
            mirror=f.mirror, repository=f.repository, digest=f.digest, kind=f.kind,
            detail=f"{f.detail} (at {f.url})", now=self.now, run_id=None,
        )  # fmt: skip
        self.report.incidents.append(f)

    async def holding(self, h: Holding) -> None:
        m = self.config.mirrors[h.mirror]
        url = h.instance or m.url
        path = m.repository_for(h.repository)
        client = self.client(h.mirror, url)
        async with self.gates[url]:
            try:
                if h.kind == "manifest":
                    n = (await client.get_manifest(path, h.digest)).size
                else:
                    n = await client.fetch_blob(path, h.digest)
            except DigestMismatch as exc:
                self.incident(
                    Finding(
                        "digest-mismatch", h.mirror, url, h.repository, h.digest,
                        f"{h.kind} {path}@{h.digest} served by {h.mirror} hashes to "
                        f"{exc.actual}, not to its digest",
                    )
                )  # fmt: skip
                return
            except NotFound:
                evidence = f"{h.kind} {path}@{h.digest} is no longer at {h.mirror} (404)"
                self.ledger.record_lost([(h, evidence)], self.now)
                self.report.lost.lost.append(
                    Lost(h.mirror, url, h.repository, h.kind, h.digest, evidence)
                )
                return
            except RegistryError as exc:
                self.report.errors.append(f"{h.mirror} {path}@{h.digest}: {exc}")
                return
        self.report.objects += 1
        self.report.bytes += n

    async def tag(self, image: str, tag: str, mirrors: list[str]) -> None:
        try:
            ref = parse(f"{image}:{tag}")
        except InvalidReference as exc:
            self.report.errors.append(str(exc))
            return
        upstream = self.config.upstream_for_registry(ref.registry)
        if upstream is None:
            return
        tiers = [m for m in mirrors if self.config.upstream_of(m) == upstream]
        everywhere = self.ledger.resolutions(image, tag)
        seen_at = {r.where for r in everywhere}
        digests = {r.digest for r in everywhere}
        held = [
            m
            for m in tiers
            if m in seen_at or any(self.ledger.holding_rows(m, ref.repository, d) for d in digests)
        ]
        if not held:
            return
        up_url = self.config.upstreams[upstream].url
        try:
            current = (
                await self.client(upstream, up_url).head_manifest(ref.repository, tag)
            ).digest
        except RegistryError as exc:
            self.report.errors.append(f"{ref.familiar}: upstream {upstream}: {exc}")
            return
        history = [
            fr.Seen(r.digest, as_utc(r.observed_at) or self.now) for r in everywhere if r.tier == -1
        ] or [
            fr.Seen(r.digest, as_utc(r.observed_at) or self.now) for r in everywhere if r.tier == 0
        ]
        self.report.tags += 1
        for m in held:
            url = self.config.mirrors[m].url
            path = self.config.mirrors[m].repository_for(ref.repository)
            try:
                served = (await self.client(m, url).head_manifest(path, tag)).digest
            except RegistryError as exc:
                self.report.errors.append(f"{ref.familiar}: mirror {m}: {exc}")
                continue
            if served == current:
                continue
            if fr.foreign(served, history, current):
                self.incident(
                    Finding(
                        "foreign-digest", m, url, ref.repository, served,
                        f"{m} answers {ref.familiar} with {served}, a digest the upstream "
                        f"{upstream} never had for that tag (it has {current})",
                    )
                )  # fmt: skip
            else:
                self.report.stale.append(
                    Finding(
                        "stale", m, url, ref.repository, served,
                        f"{m} answers {ref.familiar} with {served}, an older digest of the tag "
                        f"(the upstream has {current}): `warmer refresh` renews it",
                    )
                )  # fmt: skip

    async def artifact(self, mirror: str, repository: str, tag: str, digest: str) -> None:
        """One artifact tag at the tier it was warmed through: still the digest warmed?"""
        m = self.config.mirrors[mirror]
        path = m.repository_for(repository)
        shown = f"{repository}:{tag}"
        try:
            served: str | None = (await self.client(mirror, m.url).head_manifest(path, tag)).digest
        except NotFound:
            served = None
        except RegistryError as exc:
            self.report.errors.append(f"{shown}: mirror {mirror}: {exc}")
            return
        self.report.artifact_tags += 1
        if served == digest:
            return
        if served is None:
            detail = f"{mirror} no longer answers {shown} (404); it was warmed as {digest}"
            self.incident(Finding("lost", mirror, m.url, repository, digest, detail))
            return
        upstream = self.config.upstream_of(mirror)
        try:
            current: str | None = (
                await self.client(upstream, self.config.upstreams[upstream].url).head_manifest(
                    repository, tag
                )
            ).digest
        except NotFound:
            current = None
        except RegistryError as exc:
            self.report.errors.append(f"{shown}: upstream {upstream}: {exc}")
            return
        if served == current:
            self.report.stale.append(
                Finding(
                    "stale", mirror, m.url, repository, served,
                    f"{mirror} answers {shown} with {served}, not the {digest} warmed: "
                    f"re-signed at the upstream {upstream}; `warmer refresh` warms it",
                )
            )  # fmt: skip
            return
        self.incident(
            Finding(
                "foreign-digest", mirror, m.url, repository, served,
                f"{mirror} answers {shown} with {served}: neither the {digest} warmed nor "
                f"what the upstream {upstream} has ({current or 'nothing'})",
            )
        )  # fmt: skip


async def verify(
    config: Config,
    ledger: Ledger,
    *,
    region: str | None,
    sample: float,
    now: datetime,
    seed: int | None = None,
    budget: int | None = None,
    until: float | None = None,
) -> VerifyReport:
    """Verify a ``sample`` (0 < sample <= 1) of the region's warm content; see the module doc."""
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be in (0, 1], not {sample}")
    mirrors = region_mirrors(config, region)
    found = await reconcile(config, ledger, mirrors, now=now, budget=budget, until=until)
    v = _Verifier(config, ledger, now)
    v.report.lost = found
    try:
        rows = pick(ledger.holdings(mirrors, now), sample, seed)
        await asyncio.gather(*(v.holding(h) for h in rows))
        for image, tag in ledger.tracked_tags():
            await v.tag(image, tag, mirrors)
        for mirror, repository, tag, digest in ledger.artifact_tags(mirrors):
            await v.artifact(mirror, repository, tag, digest)
    finally:
        await v.close()
    return v.report
