"""``warmer refresh``: re-resolve tracked tags with HEAD only, and warm what moved.

The imperative shell around :mod:`warmer.upkeep.freshness`. For every mutable tag the stored
ranking or the ledger tracks:

1. HEAD the upstream (not counted by Docker Hub's rate limit; never a GET) and record it;
2. HEAD, top tier first, each mirror tier that serves the tag (the ledger holds a version of
   it there) and record what it answers. CNCF distribution answers a HEAD by tag by HEADing
   its parent, so it is never stale; a mirror with a metadata cache can be;
3. a tier serving an old digest is stale: when the config names an invalidation hook for it,
   call the hook and HEAD again;
4. a tag that moved, is served stale, or whose warm content expires within
   ``[refresh] renew_before`` (only tags still ranked, or every tracked tag when the region
   has no stored ranking) is warmed through the tiers by the warm run ``warmer run`` makes
   (:func:`warmer.warm.run.warm`): inside the region's budget, the links' bandwidth caps
   and the upstream rate-limit reserve, held content not fetched again. Through a top
   tier that still serves the tag stale, the new digest is warmed by digest;
5. the old digest is marked superseded (its resolutions, and the old top manifest's
   holdings at the tiers) unless another tracked tag of the repository still points to it,
   and a drift event is recorded (tag, old -> new, when detected, which tiers were stale
   and for how long).

Artifacts (signatures, attestations, SBOMs, referrers: :mod:`warmer.warm.artifacts`) of
a tag that did not move are checked too, where a region's policy warms them: HEAD at the
upstream of each cosign tag (``sha256-<hex>.sig`` / ``.att`` / ``.sbom``) and fallback tag
(``sha256-<hex>``) of the image's digest and of its platform manifests held at the top
tier; a digest a serving tier does not hold under that tag (a new signature, or a re-signed
tag: then a drift on the artifact tag) warms the image through the tiers, which discovers
and warms the artifact (and, under a verifying policy, records a ``signature`` incident if
it no longer verifies).

Upstream manifest GETs are spent only in step 4 (the top tier fetches each manifest it
does not hold once); ``RefreshReport.upstream_counted_requests`` counts them as the
top-tier manifest items of the warm plans.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from warmer.config import Config, ConfigError
from warmer.oci.cosign import artifact_tag, fallback_tag
from warmer.oci.manifest import INDEX_TYPES
from warmer.oci.reference import InvalidReference, Reference, parse
from warmer.oci.registry import NotFound, RegistryClient, RegistryError
from warmer.store.ledger import Holding, Ledger, as_utc
from warmer.upkeep import freshness as fr
from warmer.upkeep.invalidate import run_hook
from warmer.warm.artifacts import ArtifactPolicy
from warmer.warm.resolve import Want, mirror_client, upstream_client, wants_from_ranking
from warmer.warm.run import RegionBusy, monotonic_deadline, warm

log = logging.getLogger("warmer.upkeep.refresh")


@dataclass
class Tracked:
    """A mutable tag to keep fresh, the regions that track it and the tiers it may live on."""

    ref: Reference  # with a tag, without a digest
    upstream: str
    score: float = 1.0
    regions: set[str] = field(default_factory=set)
    ranked: bool = False
    tiers: set[str] = field(default_factory=set)  # mirrors of those regions' chains


@dataclass
class TagResult:
    image: str
    tag: str
    digest: str | None = None
    moved: bool = False
    old_digest: str | None = None
    stale: list[dict[str, Any]] = field(default_factory=list)
    warm_reason: str | None = None
    error: str = ""
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # fr.ArtifactChange dicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "tag": self.tag,
            "digest": self.digest,
            "moved": self.moved,
            "old_digest": self.old_digest,
            "stale": self.stale,
            "warm_reason": self.warm_reason,
            "error": self.error,
            "artifacts": self.artifacts,
        }


@dataclass
class RefreshReport:
    started_at: datetime
    checked: int = 0
    moved: int = 0
    drift_events: int = 0
    stale_tiers: int = 0
    warmed_items: int = 0
    upstream_counted_requests: int = 0
    renewed: int = 0  # tags warmed only because their content expires soon
    superseded: int = 0
    invalidations: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Ranked images from a registry with no upstream in the config: nothing to check there
    # (reported, not a failure of the refresh).
    untracked: list[str] = field(default_factory=list)
    tags: list[TagResult] = field(default_factory=list)
    deadline_hit: bool = False
    deferred: int = 0  # tags that need warming, left for the next window (check-only)
    artifact_heads: int = 0  # upstream HEADs of artifact tags (not counted by Docker Hub)
    artifacts_new: int = 0  # artifact tags of unchanged images new at the upstream
    artifacts_resigned: int = 0  # artifact tags whose digest changed (a drift each)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.get("failed", 0) == 0 for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "checked": self.checked,
            "moved": self.moved,
            "drift_events": self.drift_events,
            "stale_tiers": self.stale_tiers,
            "warmed_items": self.warmed_items,
            "upstream_counted_requests": self.upstream_counted_requests,
            "renewed": self.renewed,
            "superseded": self.superseded,
            "invalidations": self.invalidations,
            "runs": self.runs,
            "errors": self.errors,
            "untracked": self.untracked,
            "deadline_hit": self.deadline_hit,
            "deferred": self.deferred,
            "artifact_heads": self.artifact_heads,
            "artifacts_new": self.artifacts_new,
            "artifacts_resigned": self.artifacts_resigned,
            "ok": self.ok,
            "tags": [t.as_dict() for t in self.tags if t.moved or t.stale or t.warm_reason],
        }


# -- what is tracked --------------------------------------------------------------------------


def _region_tiers(config: Config, region: str, upstream: str) -> set[str]:
    return {
        m
        for target in config.region(region).mirrors
        for m in config.chain(target)
        if config.upstream_of(m) == upstream
    }


def tracked_tags(
    config: Config, ledger: Ledger, regions: Sequence[str], report: RefreshReport
) -> tuple[list[Tracked], set[str]]:
    """Tags of the stored rankings of ``regions`` and tags with a resolution in the ledger.

    Returns them with the set of regions that have a stored ranking.
    """
    found: dict[str, Tracked] = {}
    ranked_regions: set[str] = set()

    def add(ref: Reference, region: str, score: float, ranked: bool) -> None:
        upstream = config.upstream_for_registry(ref.registry)
        if upstream is None:
            report.untracked.append(f"{ref}: no upstream configured for {ref.registry}")
            return
        tiers = _region_tiers(config, region, upstream)
        if not tiers:
            return
        t = found.setdefault(str(ref), Tracked(ref, upstream))
        t.regions.add(region)
        t.tiers |= tiers
        if ranked:
            t.score = max(t.score, score) if t.ranked else score
            t.ranked = True

    for region in regions:
        for want in wants_from_ranking(config, region, None):
            ranked_regions.add(region)
            if want.ref.tag and not want.ref.digest:
                add(want.ref, region, want.score, True)
    for image, tag in ledger.tracked_tags():
        try:
            ref = parse(f"{image}:{tag}")
        except InvalidReference as exc:
            report.errors.append(f"ledger resolution {image}:{tag}: {exc}")
            continue
        for region in regions:
            add(ref, region, 1.0, False)
    return sorted(found.values(), key=lambda t: str(t.ref)), ranked_regions


# -- one tag ----------------------------------------------------------------------------------


class _Checker:
    """HEADs one tag at the upstream and its serving tiers, records, decides."""

    def __init__(
        self, config: Config, ledger: Ledger, now: datetime, report: RefreshReport,
        held: dict[tuple[str, str, str], Holding], ranked_regions: set[str],
    ) -> None:  # fmt: skip
        self.config, self.ledger, self.now, self.report = config, ledger, now, report
        self.held = held
        self.ranked_regions = ranked_regions
        self.policies = {
            r: p for r in config.regions
            if (p := ArtifactPolicy.from_config(config.region(r).artifacts)).active
        }  # fmt: skip
        self.artifact_held: dict[tuple[str, str, str], str] = {}  # (mirror, repo, tag) -> digest
        self.margin = config.refresh.renew_before
        self.clients: dict[str, RegistryClient] = {}
        self.to_warm: list[tuple[Tracked, Want, str]] = []
        self.supersede: list[tuple[Tracked, str, set[str]]] = []
        self.current: set[tuple[str, str]] = set()  # (image, digest) tags point to now

    def client(self, where: str) -> RegistryClient:
        if where not in self.clients:
            if where in self.config.upstreams:
                self.clients[where] = upstream_client(self.config, where)
            else:
                self.clients[where] = mirror_client(self.config, where)
        return self.clients[where]

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()

    def _serving(self, t: Tracked, digests: set[str]) -> list[str]:
        """Tiers holding (in any state) a version of the tag, or that answered it before."""
        out = []
        repo = t.ref.repository
        for m in t.tiers:
            if any((m, repo, d) in self.held for d in digests) or self.ledger.last_resolution(
                t.ref.name, t.ref.tag or "", m
            ):
                out.append(m)
        return sorted(out, key=lambda m: (self.config.tier(m), m))

    async def _head(self, where: str, repository: str, tag: str) -> tuple[str | None, str]:
        try:
            head = await self.client(where).head_manifest(repository, tag)
        except RegistryError as exc:
            return None, str(exc)
        return head.digest, head.media_type

    def _record(self, t: Tracked, where: str, tier: int, digest: str, media_type: str) -> None:
        self.ledger.record_resolution(
            image=t.ref.name, tag=t.ref.tag or "", digest=digest, media_type=media_type,
            where=where, tier=tier, now=self.now,
        )  # fmt: skip

    async def check(self, t: Tracked) -> TagResult:
        ref, tag = t.ref, t.ref.tag or ""
        result = TagResult(ref.name, tag)
        history = [
            fr.Seen(r.digest, as_utc(r.observed_at) or self.now)
            for r in self.ledger.resolutions(ref.name, tag, t.upstream)
        ]
        everywhere = self.ledger.resolutions(ref.name, tag)
        if not history:
            # Never seen at the upstream: what the warm engine saw through the top tier.
            history = [
                fr.Seen(r.digest, as_utc(r.observed_at) or self.now)
                for r in everywhere
                if r.tier == 0
            ]
        digest, media_type = await self._head(t.upstream, ref.repository, tag)
        self.report.checked += 1
        if digest is None:
            result.error = f"{ref.familiar}: upstream {t.upstream}: {media_type}"
            self.report.errors.append(result.error)
            return result
        result.digest = digest
        self.current.add((ref.name, digest))
        self._record(t, t.upstream, -1, digest, media_type)
        known = {r.digest for r in everywhere} | {digest}
        answers = []
        for m in self._serving(t, known):
            path = self.config.mirrors[m].repository_for(ref.repository)
            served, mt = await self._head(m, path, tag)
            if served is None:
                self.report.errors.append(f"{ref.familiar}: mirror {m}: {mt}")
            else:
                self._record(t, m, self.config.tier(m), served, mt)
            answers.append(fr.TierAnswer(m, self.config.tier(m), served, "" if served else mt))
        verdict = fr.assess(digest, history, answers, self.now)
        result.moved, result.old_digest = verdict.moved, verdict.old_digest
        still_stale = await self._invalidate(t, verdict, result)
        held_fresh = self._held_fresh(t, digest, [a.mirror for a in answers])
        result.warm_reason = fr.needs_warm(verdict, held_fresh)
        if not result.warm_reason and not verdict.drift:
            t, result.warm_reason = await self._artifacts(t, digest, media_type, answers, result)
        if result.warm_reason:
            top_stale = any(self.config.tier(m) == 0 for m in still_stale)
            # Through a top tier still serving the old digest, warm the new one by digest.
            want_ref = ref.with_digest(digest) if top_stale else ref
            self.to_warm.append((t, Want(want_ref, t.score), result.warm_reason))
            if not verdict.drift and not result.artifacts:
                self.report.renewed += 1
        if verdict.moved and verdict.old_digest:
            self.report.moved += 1
            self.supersede.append((t, verdict.old_digest, {a.mirror for a in answers}))
        if verdict.drift:
            old = verdict.old_digest or (verdict.stale[0].served if verdict.stale else "")
            self.ledger.record_drift(
                image=ref.name, tag=tag, upstream=t.upstream, old_digest=old,
                new_digest=digest, detected_at=self.now, moved_after=verdict.moved_after,
                stale_tiers=result.stale,
            )  # fmt: skip
            self.report.drift_events += 1
            self.report.stale_tiers += len(verdict.stale)
        return result

    async def _artifacts(
        self, t: Tracked, digest: str, media_type: str, answers: list[fr.TierAnswer],
        result: TagResult,
    ) -> tuple[Tracked, str | None]:  # fmt: skip
        """HEAD the image's artifact tags at the upstream; a tag a serving tier (of a region
        warming artifacts) lacks is why to warm: ``t`` narrowed to those regions."""
        regions = {r for r in t.regions if r in self.policies}
        tiers = {r: _region_tiers(self.config, r, t.upstream) for r in regions}
        serving = sorted({a.mirror for a in answers if a.digest == digest}
                         & {m for ms in tiers.values() for m in ms})  # fmt: skip
        if not serving:
            return t, None
        kinds = sorted({k for r in regions for k in self.policies[r].tag_kinds()})
        subjects = [digest, *await self._platforms(t, digest, media_type, serving)]
        tags = [artifact_tag(s, k) for s in subjects for k in kinds] + [
            fallback_tag(s) for s in subjects
        ]
        found = await asyncio.gather(*(self._head_artifact(t, tag) for tag in tags))
        repo = t.ref.repository
        held = {(m, tag): d for (m, r, tag), d in self.artifact_held.items() if r == repo}
        changes = fr.artifact_changes(dict(zip(tags, found, strict=True)), held, serving)
        for c in changes:
            result.artifacts.append(c.as_dict())
            if c.old_digest is None:
                self.report.artifacts_new += 1
                continue
            self.report.artifacts_resigned += 1
            self.report.drift_events += 1
            self.ledger.record_drift(
                image=t.ref.name, tag=c.tag, upstream=t.upstream, old_digest=c.old_digest,
                new_digest=c.digest, detected_at=self.now, moved_after=None, stale_tiers=[],
            )  # fmt: skip
            log.warning("%s: %s", t.ref.familiar, c.reason)
        if not changes:
            return t, None
        lacking = {m for c in changes for m in c.mirrors}
        needed = {r for r, ms in tiers.items() if ms & lacking}
        return replace(t, regions=needed), "; ".join(c.reason for c in changes)

    async def _platforms(
        self, t: Tracked, digest: str, media_type: str, serving: list[str]
    ) -> list[str]:
        """The platform manifests of an index that the top tier holds (read there by digest:
        held, so no upstream request), whose own artifacts are looked for too."""
        top = next((m for m in serving if self.config.tier(m) == 0), None)
        repo = t.ref.repository
        if media_type not in INDEX_TYPES or top is None or (top, repo, digest) not in self.held:
            return []
        path = self.config.mirrors[top].repository_for(repo)
        try:
            index = await self.client(top).get_manifest(path, digest)
        except RegistryError as exc:
            self.report.errors.append(f"{t.ref.familiar}: mirror {top}: {exc}")
            return []
        return [d.digest for d in index.manifests if (top, repo, d.digest) in self.held]

    async def _head_artifact(self, t: Tracked, tag: str) -> str | None:
        """The digest of an artifact tag at the upstream (HEAD), None when it has none."""
        self.report.artifact_heads += 1
        try:
            return (await self.client(t.upstream).head_manifest(t.ref.repository, tag)).digest
        except NotFound:
            return None
        except RegistryError as exc:
            self.report.errors.append(f"{t.ref.familiar}: upstream {t.upstream} {tag}: {exc}")
            return None

    async def _invalidate(self, t: Tracked, verdict: fr.Assessment, result: TagResult) -> list[str]:
        """Call the hooks of stale tiers and HEAD again; returns the tiers still stale."""
        ref, tag = t.ref, t.ref.tag or ""
        still = []
        for s in verdict.stale:
            entry = s.as_dict()
            hook = self.config.mirrors[s.mirror].invalidate
            fresh = False
            if hook is not None:
                path = self.config.mirrors[s.mirror].repository_for(ref.repository)
                outcome = await run_hook(
                    hook, image=ref.name, repository=path, tag=tag, digest=verdict.digest
                )
                served, mt = await self._head(s.mirror, path, tag)
                if served is not None:
                    self._record(t, s.mirror, s.tier, served, mt)
                fresh = served == verdict.digest
                entry.update(invalidated=outcome.ok, hook=outcome.detail, fresh_after=fresh)
                self.report.invalidations.append(
                    {"mirror": s.mirror, "image": ref.familiar, **outcome.as_dict(),
                     "fresh_after": fresh}
                )  # fmt: skip
            else:
                entry.update(invalidated=False, hook=None, fresh_after=False)
            if not fresh:
                still.append(s.mirror)
            result.stale.append(entry)
            log.warning(
                "%s serves %s for %s, the upstream has %s%s",
                s.mirror, fr.short(s.served), ref.familiar, fr.short(verdict.digest),
                " (fresh after invalidation)" if fresh else "",
            )  # fmt: skip
        return still

    def _held_fresh(self, t: Tracked, digest: str, serving: list[str]) -> dict[str, bool]:
        """Per serving tier: the current top manifest is held warm past the renew margin."""
        renews = t.ranked or not (t.regions & self.ranked_regions)
        out = {}
        for m in serving:
            h = self.held.get((m, t.ref.repository, digest))
            ok = h is not None and h.state == "warm" and h.verified
            # Only a mirror whose hits renew its copy gains from a warm before expiry.
            if ok and h is not None and renews and self.config.mirrors[m].expiry == "last-access":
                ok = not fr.expiring(as_utc(h.expires_at), self.now, self.margin)
            elif ok and h is not None:
                expires = as_utc(h.expires_at)
                ok = expires is None or expires > self.now
            out[m] = ok
        return out


# -- the whole refresh ------------------------------------------------------------------------


async def refresh(
    config: Config,
    ledger: Ledger,
    *,
    region: str | None,
    now: datetime,
    deadline: datetime | None = None,
    warm_moved: bool = True,
) -> RefreshReport:
    """Refresh the tags tracked for ``region`` (every region when None); see the module doc.

    ``warm_moved=False`` checks and records only (drift, stale tiers, superseded digests):
    the scheduler uses it outside maintenance windows, and the next warm in a window
    plans the new digests.
    """
    report = RefreshReport(started_at=now)
    regions = [region] if region is not None else sorted(config.regions)
    for r in regions:
        config.region(r)  # ConfigError naming the known regions
    tracked, ranked_regions = tracked_tags(config, ledger, regions, report)
    mirrors = {m for t in tracked for m in t.tiers}
    held: dict[tuple[str, str, str], Holding] = {}
    for h in ledger.manifest_holdings(mirrors):
        key = (h.mirror, h.repository, h.digest)
        if key not in held or h.state == "warm":
            held[key] = h
    checker = _Checker(config, ledger, now, report, held, ranked_regions)
    for mirror, repo, tag, digest in ledger.artifact_tags(mirrors):
        checker.artifact_held[(mirror, repo, tag)] = digest
    mono = monotonic_deadline(deadline)
    sem = asyncio.Semaphore(config.refresh.concurrency)

    async def in_sequence(group: list[Tracked]) -> None:
        # Tags of one repository one after the other: aliases share manifests, and two
        # concurrent cold requests for one manifest make a mirror fetch it twice.
        for t in group:
            if mono is not None and time.monotonic() >= mono:
                report.deadline_hit = True
                return
            async with sem:
                report.tags.append(await checker.check(t))

    groups: dict[tuple[str, str], list[Tracked]] = {}
    for t in tracked:
        groups.setdefault((t.ref.registry, t.ref.repository), []).append(t)
    try:
        await asyncio.gather(*(in_sequence(g) for g in groups.values()))
    finally:
        await checker.close()
    if warm_moved:
        await _warm(config, ledger, checker.to_warm, regions, now, deadline, report)
    else:
        report.deferred = len(checker.to_warm)
    for t, old, _serving in checker.supersede:
        if (t.ref.name, old) in checker.current:
            continue  # another tracked tag of the repository still points to it
        report.superseded += ledger.supersede(
            image=t.ref.name, tag=t.ref.tag or "", digest=old, repository=t.ref.repository,
            mirrors=t.tiers, now=now,
        )  # fmt: skip
    report.tags.sort(key=lambda r: (r.image, r.tag))
    return report


async def _warm(
    config: Config,
    ledger: Ledger,
    to_warm: list[tuple[Tracked, Want, str]],
    regions: Sequence[str],
    now: datetime,
    deadline: datetime | None,
    report: RefreshReport,
) -> None:
    """One warm run per region over the tags that need it, through the warm engine."""
    for region in regions:
        wants = [w for t, w, _ in to_warm if region in t.regions]
        if not wants:
            continue
        if deadline is not None and now >= deadline:
            report.deadline_hit = True
            return
        try:
            outcome = await warm(
                config, ledger, region, wants, now=now, deadline=deadline,
                renew_within=config.refresh.renew_before,
            )  # fmt: skip
        except ConfigError as exc:
            report.errors.append(f"region {region}: {exc}")
            continue
        except RegionBusy as exc:  # that run (or the next) warms what moved
            report.errors.append(str(exc))
            continue
        report.errors += [f"{s.image}: {s.reason}" for s in outcome.unresolved]
        report.errors += [f"{s.image}: {s.reason}" for s in outcome.held_back]
        for prepared in outcome.passes:
            report.upstream_counted_requests += sum(
                1 for i in prepared.plan.items if i.tier == 0 and i.kind == "manifest"
            )
        for run_id, stats in outcome.runs:
            items = len(ledger.items(run_id))
            report.warmed_items += stats.done
            report.deadline_hit = report.deadline_hit or stats.deadline_hit
            report.runs.append({"region": region, "run": run_id, "items": items, **stats.as_dict()})
            if stats.failed or stats.incidents:
                report.errors.append(
                    f"region {region}: run {run_id}: {stats.failed} item(s) failed, "
                    f"{stats.incidents} incident(s)"
                )
