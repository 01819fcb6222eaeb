"""``warmer pins PATH``: how the references in Dockerfiles and other files stand against
their tags' current digests.

Static references are found by :func:`analytics.staticrefs.scan_paths`. For each tagged
reference the upstream is asked for the tag's digest now (HEAD: not counted by Docker Hub's
rate limit); a reference pinned ``tag@sha256:...`` to a digest the tag has since moved away
from is reported with when that happened (from the ledger's resolution history and drift
events), and every tagged reference gets the exact ``image:tag@sha256:...`` to pin to.
Read-only: nothing is recorded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from analytics.staticrefs import StaticRef, scan_paths
from warmer.config import Config
from warmer.oci.reference import Reference
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.store.ledger import Ledger, as_utc
from warmer.upkeep import freshness as fr
from warmer.warm.resolve import upstream_client


@dataclass
class PinsReport:
    advice: list[fr.PinAdvice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def moved(self) -> list[fr.PinAdvice]:
        return [a for a in self.advice if a.status == "moved"]

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for a in self.advice:
            counts[a.status] = counts.get(a.status, 0) + 1
        return {
            "references": [a.as_dict() for a in self.advice],
            "counts": counts,
            "warnings": self.warnings,
        }


def _history(ledger: Ledger, ref: Reference, upstream: str, now: datetime) -> list[fr.Seen]:
    """The tag's observations at the upstream, plus the drift events' old -> new moves."""
    assert ref.tag is not None
    seen = [
        fr.Seen(r.digest, as_utc(r.observed_at) or now)
        for r in ledger.resolutions(ref.name, ref.tag, upstream)
    ]
    for d in ledger.drifts(image=ref.name):
        if d.tag != ref.tag or not d.old_digest:
            continue
        detected = as_utc(d.detected_at)
        moved_after = as_utc(d.moved_after)
        if detected is None:
            continue
        seen.append(fr.Seen(d.old_digest, moved_after or detected))
        seen.append(fr.Seen(d.new_digest, detected))
    return sorted(seen, key=lambda s: s.at)


async def pins(
    config: Config, ledger: Ledger, paths: list[Path], *, now: datetime, concurrency: int = 8
) -> PinsReport:
    report = PinsReport()
    found: list[StaticRef] = []
    report.warnings.extend(scan_paths(paths, found.append))
    clients: dict[str, RegistryClient] = {}
    current: dict[tuple[str, str], tuple[str | None, str]] = {}
    sem = asyncio.Semaphore(concurrency)

    async def resolve(ref: Reference) -> None:
        assert ref.tag is not None
        upstream = config.upstream_for_registry(ref.registry)
        if upstream is None:
            current[(ref.name, ref.tag)] = (None, f"no upstream configured for {ref.registry}")
            return
        client = clients.setdefault(upstream, upstream_client(config, upstream))
        async with sem:
            try:
                head = await client.head_manifest(ref.repository, ref.tag)
            except RegistryError as exc:
                current[(ref.name, ref.tag)] = (None, str(exc))
                return
        current[(ref.name, ref.tag)] = (head.digest, upstream)

    tagged = {(s.reference.name, s.reference.tag): s.reference for s in found if s.reference.tag}
    try:
        await asyncio.gather(
            *(resolve(Reference(r.registry, r.repository, r.tag)) for r in tagged.values())
        )
    finally:
        for c in clients.values():
            await c.aclose()
    for s in sorted(found, key=lambda s: (s.file, s.line)):
        ref = s.reference
        bare = Reference(ref.registry, ref.repository, ref.tag)
        digest, info = current.get((ref.name, ref.tag or ""), (None, ""))
        history = _history(ledger, ref, info, now) if ref.tag and digest else []
        report.advice.append(
            fr.pin_advice(
                file=s.file,
                line=s.line,
                reference=str(ref),
                name=bare.familiar,
                tag=ref.tag,
                pinned=ref.digest,
                current=digest,
                history=history,
                now=now,
                error="" if digest or not ref.tag else info,
            )
        )
    return report
