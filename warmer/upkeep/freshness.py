"""Freshness decisions over plain values: has a tag moved, which tiers serve it stale and
since when, what must be renewed before it expires, and how a pinned reference stands.

Pure: no network, clock or database; ``now`` and every observation are passed in. The
I/O shells are :mod:`warmer.upkeep.refresh` (HEADs, ledger, warm runs),
:mod:`warmer.upkeep.verify` and :mod:`warmer.upkeep.pins`.

Words
    An *observation* (:class:`Seen`) is one resolution of a tag: the digest a place answered
    at a time. The upstream's observations, oldest first, are the tag's *history*.
    A tag has *moved* when the upstream now answers another digest than its last
    observation. A tier is *stale* when it answers another digest than the upstream does
    now; it has been stale at least since the upstream was first seen with the new digest
    (when that was before now), otherwise since the tag moved, i.e. since the last
    observation that still showed the old digest (the move happened after it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Seen:
    """One observation of a tag's digest."""

    digest: str
    at: datetime


@dataclass(frozen=True)
class TierAnswer:
    """What one mirror tier answered for a tag now (``digest`` None: it could not say)."""

    mirror: str
    tier: int
    digest: str | None
    error: str = ""


@dataclass(frozen=True)
class StaleTier:
    mirror: str
    tier: int
    served: str
    since: datetime | None  # None: no earlier observation to bound it
    seconds: float | None  # how long it has been stale at ``now``

    def as_dict(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "tier": self.tier,
            "served": self.served,
            "since": self.since.isoformat() if self.since else None,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Assessment:
    """The verdict on one tag after one round of HEADs."""

    digest: str  # the upstream's answer now
    moved: bool
    old_digest: str | None  # the digest of the last observation (when it differs: moved)
    moved_after: datetime | None  # the last observation that still showed the old digest
    new_since: datetime  # when the upstream was first seen with ``digest`` (this run: now)
    stale: tuple[StaleTier, ...]

    @property
    def drift(self) -> bool:
        return self.moved or bool(self.stale)


def current_run_start(history: Sequence[Seen], digest: str) -> datetime | None:
    """When the history's trailing run of ``digest`` began (None if it does not end in it)."""
    start = None
    for seen in reversed(history):
        if seen.digest != digest:
            break
        start = seen.at
    return start


def last_seen(history: Sequence[Seen], digest: str) -> datetime | None:
    """The last observation of ``digest`` in the history."""
    for seen in reversed(history):
        if seen.digest == digest:
            return seen.at
    return None


def assess(
    upstream_digest: str,
    history: Sequence[Seen],
    tiers: Iterable[TierAnswer],
    now: datetime,
) -> Assessment:
    """Compare the upstream's answer now with the tag's history and each tier's answer.

    ``history`` is the upstream's earlier observations, oldest first, *not* including now.
    A tier that could not answer is neither fresh nor stale (the caller reports its error).
    """
    last = history[-1] if history else None
    moved = last is not None and last.digest != upstream_digest
    old = last.digest if moved and last is not None else None
    moved_after = last.at if moved and last is not None else None
    run_start = current_run_start(history, upstream_digest)
    new_since = run_start if run_start is not None else now
    # A tier serving the old digest has done so since the upstream moved: since the first
    # observation of the new digest when one came before now, else since the move's bound.
    since = run_start if run_start is not None else moved_after
    stale = []
    for t in tiers:
        if t.digest is None or t.digest == upstream_digest:
            continue
        seconds = (now - since).total_seconds() if since is not None else None
        stale.append(StaleTier(t.mirror, t.tier, t.digest, since, seconds))
    return Assessment(upstream_digest, moved, old, moved_after, new_since, tuple(stale))


def foreign(served: str, history: Iterable[Seen], current: str) -> bool:
    """A tier answering a digest the upstream never had for that tag (verify: an incident)."""
    return served != current and all(s.digest != served for s in history)


def expiring(expires_at: datetime | None, now: datetime, margin: timedelta) -> bool:
    """Content whose ledger entry ends within ``margin`` of ``now`` (or already did)."""
    return expires_at is not None and expires_at <= now + margin


def needs_warm(
    assessment: Assessment,
    held_fresh: dict[str, bool],
) -> str | None:
    """Why a tag must be warmed now, or None.

    ``held_fresh`` maps each tier that serves the tag to whether the ledger holds the
    upstream's current top manifest there, warm, and not expiring within the renew margin.
    """
    if assessment.moved:
        return f"moved {short(assessment.old_digest)} -> {short(assessment.digest)}"
    if assessment.stale:
        return "stale at " + ", ".join(s.mirror for s in assessment.stale)
    missing = sorted(m for m, ok in held_fresh.items() if not ok)
    if missing:
        return "expires soon or not held at " + ", ".join(missing)
    return None


def short(digest: str | None) -> str:
    if not digest:
        return "(none)"
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


# -- pins -------------------------------------------------------------------------------------


def moved_away_at(history: Sequence[Seen], digest: str) -> datetime | None:
    """When the tag was first seen pointing elsewhere after its last observation at ``digest``
    (None when it never was seen at ``digest``, or still points there)."""
    seen_at = None
    for i, seen in enumerate(history):
        if seen.digest == digest:
            seen_at = i
    if seen_at is None:
        return None
    for seen in history[seen_at + 1 :]:
        if seen.digest != digest:
            return seen.at
    return None


@dataclass(frozen=True)
class PinAdvice:
    """How one static reference stands against its tag's current digest."""

    file: str
    line: int
    reference: str  # as found, canonical
    name: str  # familiar name with tag, e.g. python:3.12
    tag: str | None
    pinned: str | None
    current: str | None
    status: str  # current | moved | unpinned | digest-only | unknown
    moved_at: datetime | None
    ago_seconds: float | None
    pin: str | None  # the exact reference to pin to
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "reference": self.reference,
            "tag": self.tag,
            "pinned": self.pinned,
            "current": self.current,
            "status": self.status,
            "moved_at": self.moved_at.isoformat() if self.moved_at else None,
            "ago_seconds": self.ago_seconds,
            "pin": self.pin,
            "error": self.error,
        }


def pin_advice(
    *,
    file: str,
    line: int,
    reference: str,
    name: str,
    tag: str | None,
    pinned: str | None,
    current: str | None,
    history: Sequence[Seen],
    now: datetime,
    error: str = "",
) -> PinAdvice:
    """The advice for one reference. ``name`` is ``image:tag`` as it should be written;
    ``current`` is the tag's digest now (None when it could not be resolved: ``error``)."""
    pin = f"{name}@{current}" if tag and current else None
    moved_at = None
    if tag is None:
        status = "digest-only"
    elif current is None:
        status = "unknown"
    elif pinned is None:
        status = "unpinned"
    elif pinned == current:
        status = "current"
    else:
        status = "moved"
        moved_at = moved_away_at(history, pinned)
    ago = (now - moved_at).total_seconds() if moved_at is not None else None
    return PinAdvice(
        file, line, reference, name, tag, pinned, current, status, moved_at, ago, pin, error
    )


# -- artifacts (signatures, attestations, SBOMs, referrers) -----------------------------------

ARTIFACT_NAMES = {".sig": "signature", ".att": "attestation", ".sbom": "SBOM"}


def artifact_name(tag: str) -> str:
    """What an artifact tag holds: signature, attestation, SBOM, or referrers (the fallback
    tag ``sha256-<hex>``)."""
    for suffix, name in ARTIFACT_NAMES.items():
        if tag.endswith(suffix):
            return name
    return "referrers"


@dataclass(frozen=True)
class ArtifactChange:
    """An artifact tag of an unchanged image whose upstream digest some tier lacks:
    new (no tier held it) or re-signed (a tier held another digest under the tag)."""

    tag: str
    digest: str  # what the upstream answers now
    old_digest: str | None  # what a tier held under the tag before (re-signed), else None
    mirrors: tuple[str, ...]  # tiers that do not hold ``digest`` under the tag

    @property
    def resigned(self) -> bool:
        return self.old_digest is not None

    @property
    def reason(self) -> str:
        name = artifact_name(self.tag)
        if self.old_digest is not None:
            what = "re-signed" if name == "signature" else f"{name} changed"
            return f"{what} {self.tag} {short(self.old_digest)} -> {short(self.digest)}"
        return f"new {name} {self.tag}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "digest": self.digest,
            "old_digest": self.old_digest,
            "mirrors": list(self.mirrors),
            "reason": self.reason,
        }


def artifact_changes(
    upstream: dict[str, str | None],
    held: dict[tuple[str, str], str],
    tiers: Sequence[str],
) -> list[ArtifactChange]:
    """The artifact tags to warm: ``upstream`` maps each tag asked to its digest there
    (None: absent), ``held`` maps (tier, tag) to the digest the ledger holds warm there
    under the tag. A tag the upstream lacks is not a change (a signature removed upstream
    stays where it was warmed)."""
    out = []
    for tag, digest in upstream.items():
        if digest is None:
            continue
        lacking = tuple(m for m in tiers if held.get((m, tag)) != digest)
        if not lacking:
            continue
        old = next((held[(m, tag)] for m in lacking if (m, tag) in held), None)
        out.append(ArtifactChange(tag, digest, old, lacking))
    return out
