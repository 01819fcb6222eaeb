"""Reconcile the ledger with what the mirrors really hold, without warming anything.

A pull-through mirror answers a request for content it lost (expired, wiped, replaced) by
fetching it from its parent: a plain GET "verifies" by re-warming, and says nothing. So the
evidence is gathered cheapest first, and content shown missing is never asked for:

1. **The catalog** (``GET /v2/_catalog``, one request per mirror instance): CNCF distribution
   lists the repositories in its own storage, so a wiped or replaced cache shows every
   repository missing, and none of their objects is requested. A repository stays listed
   after its content expired (measured on 2.8), so this step cannot see expiry.
2. **A blob HEAD** answered from the mirror's storage carries ``Accept-Ranges`` and
   ``Cache-Control``; one the mirror relays from its parent does not (measured on 2.8). A
   relayed HEAD makes the mirror fetch and store the blob in the background: its bytes
   cross the parent link, so they are counted and reported. Blobs are asked for smallest
   first within a *batch* (one mirror instance, one repository, first fetched within the
   same ten minutes, so expiring together on a ``first-fetch`` mirror); the first relayed
   answer marks the rest of its batch lost without asking (each ask could cost a blob).
3. **Manifests** look the same from storage and relayed (measured), so a manifest is
   judged with its batch: lost with it, held with it.

What was lost becomes a ``lost`` incident and its ledger row goes, so the next plan warms
it again. Rows the ledger already knows expired are not asked about, nor mirrors whose
``kind`` is not ``distribution`` (these beliefs were measured on CNCF distribution only).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from warmer.config import Config
from warmer.oci.registry import NotFound, RegistryClient, RegistryError, Unauthorized
from warmer.store.ledger import Holding, Ledger, as_utc
from warmer.warm.resolve import mirror_client

BATCH_SECONDS = 600  # objects first fetched this close together expire together
PER_INSTANCE = 4  # HEADs in flight per mirror instance


@dataclass(frozen=True)
class Lost:
    mirror: str
    url: str
    repository: str
    kind: str
    digest: str
    evidence: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "url": self.url,
            "repository": self.repository,
            "kind": self.kind,
            "digest": self.digest,
            "evidence": self.evidence,
        }


@dataclass
class ReconcileReport:
    checked: int = 0  # holdings whose presence was established or disproved
    held: int = 0
    lost: list[Lost] = field(default_factory=list)
    unchecked: int = 0  # left for later: budget or deadline reached
    requests: int = 0  # requests made to the mirrors
    wan_bytes: int = 0  # bytes the relayed HEADs made mirrors fetch from their parents
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "held": self.held,
            "lost": len(self.lost),
            "lost_objects": [x.as_dict() for x in self.lost],
            "unchecked": self.unchecked,
            "requests": self.requests,
            "wan_bytes": self.wan_bytes,
            "errors": self.errors,
        }


def batches(rows: list[Holding]) -> dict[tuple[str, str, str, int], list[Holding]]:
    """Holdings grouped by (mirror, instance, repository, first-fetch time slot)."""
    out: dict[tuple[str, str, str, int], list[Holding]] = defaultdict(list)
    for h in rows:
        first = as_utc(h.first_fetched_at) or as_utc(h.warmed_at)
        slot = int(first.timestamp()) // BATCH_SECONDS if first is not None else 0
        out[(h.mirror, h.instance, h.repository, slot)].append(h)
    return out


class _Reconciler:
    def __init__(
        self, config: Config, ledger: Ledger, now: datetime, budget: int | None, until: float | None
    ) -> None:
        self.config, self.ledger, self.now = config, ledger, now
        self.budget, self.until = budget, until
        self.report = ReconcileReport()
        self.clients: dict[str, RegistryClient] = {}
        self.gates: dict[str, asyncio.Semaphore] = {}
        self.found: list[tuple[Holding, Lost]] = []

    def client(self, mirror: str, url: str) -> RegistryClient:
        if url not in self.clients:
            self.clients[url] = mirror_client(self.config, mirror, url)
            self.gates[url] = asyncio.Semaphore(PER_INSTANCE)
        return self.clients[url]

    def lose(self, h: Holding, url: str, evidence: str) -> None:
        lost = Lost(h.mirror, url, h.repository, h.kind, h.digest, evidence)
        self.found.append((h, lost))
        self.report.lost.append(lost)
        self.report.checked += 1

    def keep(self, rows: list[Holding]) -> None:
        self.report.held += len(rows)
        self.report.checked += len(rows)

    async def listed(self, mirror: str, url: str) -> set[str] | None:
        """The repositories in the instance's storage, None when it does not list them."""
        try:
            self.report.requests += 1
            return set(await self.client(mirror, url).catalog())
        except (NotFound, Unauthorized):
            return None  # catalog disabled or not allowed: no evidence either way
        except RegistryError as exc:
            self.report.errors.append(f"{mirror} at {url}: catalog: {exc}")
            return None

    def affordable(self, size: int) -> bool:
        if self.until is not None and time.monotonic() >= self.until:
            return False
        return self.budget is None or self.report.wan_bytes + size <= self.budget

    async def batch(self, url: str, rows: list[Holding]) -> None:
        """HEAD the batch's blobs smallest first until one is relayed or missing."""
        blobs = sorted((h for h in rows if h.kind == "blob"), key=lambda h: (h.size, h.digest))
        if not blobs:
            self.keep(rows)  # manifests alone: no cheap evidence against them
            return
        m = self.config.mirrors[rows[0].mirror]
        client = self.client(rows[0].mirror, url)
        for h in blobs:
            if not self.affordable(h.size):
                self.report.unchecked += len(rows)
                return
            path = m.repository_for(h.repository)
            async with self.gates[url]:
                try:
                    self.report.requests += 1
                    stored = await client.blob_stored(path, h.digest)
                except RegistryError as exc:
                    self.report.errors.append(f"{h.mirror} {path}@{h.digest}: {exc}")
                    return
            if stored:
                continue
            if stored is False:
                self.report.wan_bytes += h.size
                why = f"{h.mirror} relayed blob {path}@{h.digest} from its parent (not stored)"
            else:
                why = f"{h.mirror} has no blob {path}@{h.digest}"
            self.lose(h, url, why)
            rest = [r for r in rows if r is not h]
            for other in rest:
                self.lose(other, url, f"first fetched with {h.digest[:19]}, which is gone: {why}")
            return
        self.keep(rows)

    async def run(self, rows: list[Holding]) -> None:
        by_instance: dict[tuple[str, str], list[Holding]] = defaultdict(list)
        for h in rows:
            by_instance[(h.mirror, h.instance or self.config.mirrors[h.mirror].url)].append(h)
        work = []
        for (mirror, url), held in sorted(by_instance.items()):
            m = self.config.mirrors[mirror]
            if m.kind != "distribution":  # its answers are no evidence: not asked
                self.report.unchecked += len(held)
                continue
            listed = await self.listed(mirror, url)
            present = []
            for h in held:
                if listed is not None and m.repository_for(h.repository) not in listed:
                    self.lose(
                        h, url, f"{m.repository_for(h.repository)} is not in {mirror}'s catalog"
                    )
                else:
                    present.append(h)
            for group in batches(present).values():
                work.append(self.batch(url, group))
        await asyncio.gather(*work)

    async def close(self) -> None:
        for c in self.clients.values():
            await c.aclose()


async def reconcile(
    config: Config,
    ledger: Ledger,
    mirrors: list[str],
    *,
    now: datetime,
    budget: int | None = None,
    until: float | None = None,
) -> ReconcileReport:
    """Check the ledger's unexpired holdings at ``mirrors`` with the cheapest evidence (see
    the module doc); record what was lost. ``budget``: parent-link bytes the relayed HEADs
    may cost; ``until``: a ``time.monotonic()`` limit. What is left is counted unchecked."""
    r = _Reconciler(config, ledger, now, budget, until)
    try:
        await r.run(ledger.holdings(mirrors, now))
    finally:
        await r.close()
    if r.found:
        ledger.record_lost([(h, lost.evidence) for h, lost in r.found], now)
    return r.report


@dataclass(frozen=True)
class Expiring:
    """Content of one mirror that expires before the next window of a region it serves:
    on a ``first-fetch`` mirror, the first window after that is when it is warmed again."""

    mirror: str
    next_window: datetime
    objects: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "mirror": self.mirror,
            "next_window": self.next_window.isoformat(),
            "objects": self.objects,
            "bytes": self.bytes,
        }


def expiring_before_next_window(config: Config, ledger: Ledger, now: datetime) -> list[Expiring]:
    """Per mirror, the held content whose expiry comes before the next window opens (the
    earliest next window of the regions whose chains include the mirror)."""
    from warmer.windows import WindowSpec, next_windows

    starts: dict[str, datetime] = {}
    for name, region in config.regions.items():
        specs = [WindowSpec.coerce(w) for w in region.windows]
        later = [w.start for w in next_windows(specs, now, 2) if w.start > now]
        if not later:
            continue
        for target in config.region(name).mirrors:
            for mirror in config.chain(target):
                starts[mirror] = min(starts.get(mirror, later[0]), later[0])
    expiring: dict[str, list[Holding]] = defaultdict(list)
    for h in ledger.holdings(starts, now):  # one query for every mirror
        if (expires := as_utc(h.expires_at)) is not None and expires < starts[h.mirror]:
            expiring[h.mirror].append(h)
    return [
        Expiring(m, start, len(expiring[m]), sum(h.size for h in expiring[m]))
        for m, start in sorted(starts.items())
    ]
