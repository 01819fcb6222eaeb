"""A mirror instance's side of a warm run (:class:`Lane`), and the end-of-run confirmation
of blobs shared by several repositories of a per-repository cache (see
``warmer.warm.execute`` for the rules both follow)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from warmer.oci.registry import RegistryClient, RegistryError
from warmer.store.ledger import RunItem
from warmer.warm import policy
from warmer.warm.coldread import StoreSpeed
from warmer.warm.pacing import LinkPacer
from warmer.warm.policy import CONFIRM_TRIES
from warmer.warm.slots import PrioritySlots
from warmer.warm.stats import RunStats

log = logging.getLogger("warmer.warm.execute")


@dataclass
class Lane:
    """One mirror instance's side of a run: its client, its slots, and the pacer of
    its mirror's parent link (shared with the mirror's other instances)."""

    mirror: str
    instance: str
    client: RegistryClient
    slots: PrioritySlots
    light_slots: asyncio.Semaphore  # manifests and small blobs: see policy.LaneSlots
    bulk_slots: PrioritySlots  # blobs on no chain of shared blobs
    bucket: LinkPacer | None  # the parent link's; None when the link has no cap
    ttl: timedelta | None
    expiry: str  # the mirror's expiry policy (MirrorConfig.expiry)
    scope: str
    fetch_multiplicity: int
    stored_from: int | None  # blobs this big are read from storage (see coldread)
    store_speed: StoreSpeed = field(default_factory=StoreSpeed)
    # (repository, digest) of blobs we read from its storage in this run: held
    from_storage: set[tuple[str, str]] = field(default_factory=set)
    inflight: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # digest -> monotonic time until which the mirror is presumed still storing it
    busy_until: dict[str, float] = field(default_factory=dict)
    # blob items fetched through this instance in this process: digest -> repositories
    fetched: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # manifests fetched through it in this process: (repository, digest) -> size
    manifests: dict[tuple[str, str], int] = field(default_factory=dict)


async def read_manifest(lane: Lane, item: RunItem) -> tuple[str, int]:
    """Fetch a manifest item through ``lane``: the digest the mirror has for its reference,
    and its size. A tag whose manifest this run already fetched through the lane (another
    tag of it: ``latest`` beside ``12``) is asked for with a HEAD alone where tags go by
    HEAD (see ``RegistryClient.get_manifest``): the mirror serves the manifest from its
    storage and keeps the tag; a GET would fetch nothing new."""
    client, key = lane.client, (item.repository, item.digest)
    again = client.tags_by_head and key in lane.manifests and item.reference != item.digest
    if again and (await client.head_manifest(item.repository, item.reference)).digest == key[1]:
        return item.digest, lane.manifests[key]
    known = item.digest if client.tags_by_head else None
    manifest = await client.get_manifest(item.repository, item.reference, known)
    lane.manifests[(item.repository, manifest.digest)] = len(manifest.body)
    return manifest.digest, len(manifest.body)


async def confirm_shared(
    lanes: list[Lane], stats: RunStats, settle: float, until: float | None
) -> None:
    """HEAD each blob that several repositories of a per-repository cache asked for in
    this run: one whose copy was lost to the mirror's in-flight race is fetched again."""

    async def confirm(lane: Lane, repository: str, digest: str) -> None:
        # Bounded: a HEAD while the mirror still stores the digest for someone else is
        # relayed without being kept; the next one, once nothing is in flight, stores it.
        # One digest at a time per mirror, as the items: a lost copy's HEAD has the
        # mirror fetch it, and a second HEAD meanwhile would be relayed again.
        lost = False
        for attempt in range(CONFIRM_TRIES):
            async with lane.inflight[digest]:
                await sleep_until(lane.busy_until.get(digest, 0.0))
                if not policy.may_start(time.monotonic(), until):
                    return
                asked = time.monotonic()
                async with lane.slots.hold(0):
                    try:
                        stored = await lane.client.blob_stored(repository, digest)
                    except RegistryError as exc:
                        log.warning(
                            "%s: could not confirm %s@%s: %s",
                            lane.mirror, repository, digest, exc,
                        )  # fmt: skip
                        return
                if not policy.ask_again(stored):
                    return
                now = time.monotonic()
                lane.busy_until[digest] = policy.busy_after_relay(now, now - asked, attempt, settle)
            if not lost:
                lost = True
                stats.restored += 1
                log.warning(
                    "%s had not kept %s@%s (it was storing the same blob for another "
                    "repository); asking again",
                    lane.mirror,
                    repository,
                    digest,
                )

    checks = [
        confirm(lane, repository, digest)
        for lane in lanes
        for repository, digest in policy.shared_copies(lane.scope, lane.fetched)
        if (repository, digest) not in lane.from_storage  # read from storage: held
    ]
    await asyncio.gather(*checks)


def stored_read(item: RunItem, lane: Lane) -> bool:
    """Whether ``item`` is read from the mirror's storage, its relayed copy dropped."""
    return item.kind == "blob" and lane.stored_from is not None and item.size >= lane.stored_from


def lane_key(mirror: str, instance: str) -> str:
    return f"{mirror}\0{instance}"


async def sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
