"""Carry out a plan: parallel, capped, tier-ordered, verified fetches through the mirrors.

The executor decides nothing about *what* to fetch (that is ``warmer.warm.plan``); it only
carries run items out, in plan order, under these rules:

* a bounded number of requests per mirror instance (the link's ``concurrency``);
* a token bucket per link, charged with what a request will cost the mirror's parent link
  (``parent_cost``: a cold blob through CNCF distribution 2.8 is pulled twice, at full
  speed, whatever our read rate) before it starts;
* never two requests for the same digest through the same mirror instance at once, and
  none until the mirror has presumably stored the last one: CNCF distribution 2.8 stores a
  cold blob in a background fetch that may end a second after our read, and while it runs
  (its ``inflight`` set is keyed by digest alone) it answers a request for the same digest
  by fetching it again without storing it, even under another repository, which then never
  gets its copy. So after a cold blob the digest stays busy for ``settle`` (0.4 s) plus
  a quarter of the time our read took;
* a child tier's request waits for the parent tier's item for the same object and for
  that busy time (otherwise the parent fetches the blob a third time from its own parent);
* at the end, blobs shared by several repositories of a per-repository cache are
  confirmed with a HEAD: a distribution mirror answers from its storage with
  ``Accept-Ranges``/``Cache-Control``; an answer without them means the copy was lost to
  the race above, and that HEAD has the mirror fetch and store it (counted as
  ``restored``);
* every byte hashed against its digest while streaming, nothing written to disk; a
  mismatch is an incident, never warm;
* the deadline: no item starts after it; in-flight ones get a grace period, then are
  aborted and left pending for ``--resume``;
* the upstream rate-limit reserve: cold manifest fetches at the top tier count upstream;
  when the remaining count reaches the reserve they wait (one log line) until it recovers
  or the deadline passes;
* every state change goes to the ledger, so a killed run loses at most what was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from warmer.config import Config
from warmer.oci.registry import DigestMismatch, RateLimited, RegistryClient, RegistryError
from warmer.store.ledger import Ledger, RunItem, utcnow
from warmer.warm.pacing import TokenBucket
from warmer.warm.reserve import RateReserve
from warmer.warm.slots import Priority, PrioritySlots
from warmer.warm.startorder import StartKey, is_light, start_keys

log = logging.getLogger("warmer.warm.execute")

ProgressHook = Callable[[str, RunItem, int], None]
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After fails the item (resume later)
# A cold blob's digest stays busy for settle + STORE_LAG x our read time after the read: the
# mirror's background copy runs beside ours on the same link and ends a moment later
# (measured lags: median ~0, rarely up to the read time; the confirmation catches those).
STORE_LAG = 0.25
SETTLE = 0.4  # seconds: the fixed part of that busy time
CHAIN_SLOTS = 2  # slots of a link that blobs on no chain of shared blobs leave free
CONFIRM_TRIES = 8  # HEADs per shared blob at the end of a run (see Executor._confirm_shared)
CONFIRM_BACKOFF = 0.25  # seconds before the second HEAD, doubling up to 4 s (~16 s in all)


@dataclass
class RunStats:
    """What a run did; printed as the summary and stored with the run."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    incidents: int = 0
    bytes_by_mirror: Counter[str] = field(default_factory=Counter)
    bytes_by_tier: Counter[int] = field(default_factory=Counter)
    parent_bytes_by_mirror: Counter[str] = field(default_factory=Counter)
    upstream_manifest_gets: int = 0
    seconds: float = 0.0
    deadline_hit: bool = False
    restored: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "incidents": self.incidents,
            "bytes_by_mirror": dict(self.bytes_by_mirror),
            "bytes_by_tier": {str(k): v for k, v in sorted(self.bytes_by_tier.items())},
            "parent_bytes_by_mirror": dict(self.parent_bytes_by_mirror),
            "upstream_manifest_gets": self.upstream_manifest_gets,
            "seconds": round(self.seconds, 3),
            "deadline_hit": self.deadline_hit,
            "restored": self.restored,
        }


@dataclass
class Link:
    """One mirror instance's side of a run: its client, its concurrency and its parent link."""

    mirror: str
    instance: str
    client: RegistryClient
    slots: PrioritySlots
    light_slots: asyncio.Semaphore  # manifests and small blobs: at most half the slots
    bulk_slots: PrioritySlots  # blobs on no chain: all but CHAIN_SLOTS of the slots
    bucket: TokenBucket | None
    ttl: timedelta | None
    scope: str
    inflight: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # digest -> monotonic time until which the mirror is presumed still storing it
    busy_until: dict[str, float] = field(default_factory=dict)
    # blob items fetched through this instance in this process: digest -> repositories
    fetched: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


class Executor:
    """Runs the pending items of one run (new or resumed)."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        run_id: int,
        *,
        deadline: datetime | None = None,
        grace: timedelta | None = None,
        settle: float = SETTLE,
        on_progress: ProgressHook | None = None,
        reserve: RateReserve | None = None,
        client_factory: Callable[[str, str], RegistryClient],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.run_id = run_id
        self.deadline = deadline
        self.grace = grace if grace is not None else config.run.deadline_grace
        self.settle = settle
        self.on_progress = on_progress
        self.reserve = reserve
        self.stats = RunStats()
        self._client_factory = client_factory
        self._links: dict[str, Link] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._items: dict[int, RunItem] = {}
        self._rank: dict[int, StartKey] = {}  # seq -> start key (slot and link priority)
        self._events: dict[int, asyncio.Event] = {}  # seq -> set when the item is settled
        self._outcome: dict[int, str] = {}  # seq -> final state
        self._tasks: list[asyncio.Task[None]] = []
        self._deadline_at: float | None = None  # the deadline as a monotonic time

    def _link(self, mirror: str, instance: str) -> Link:
        key = _link_key(mirror, instance)
        link = self._links.get(key)
        if link is None:
            m = self.config.mirrors[mirror]
            # All instances of a mirror pull over the same parent link: one bucket for them.
            bucket = self._buckets.get(mirror)
            if bucket is None and m.link.bandwidth:
                bucket = self._buckets[mirror] = TokenBucket(m.link.bandwidth)
            link = Link(
                mirror=mirror,
                instance=instance,
                client=self._client_factory(mirror, instance or m.url),
                slots=PrioritySlots(m.link.concurrency),
                light_slots=asyncio.Semaphore(max(1, m.link.concurrency // 2)),
                bulk_slots=PrioritySlots(
                    max(1, m.link.concurrency - min(CHAIN_SLOTS, m.link.concurrency // 2))
                ),
                bucket=bucket,
                ttl=m.ttl,
                scope=m.cache_scope,
            )
            self._links[key] = link
        return link

    def _deadline_mono(self) -> float | None:
        if self.deadline is None:
            return None
        return time.monotonic() + (self.deadline - utcnow()).total_seconds()

    async def run(self, more: AsyncIterator[Sequence[RunItem]] | None = None) -> RunStats:
        """Carry out the run's pending items, and those ``more`` yields while they run
        (the continuation of a plan whose first images were ready first; see
        ``warmer.warm.plan``'s Continuation): each batch is started in its own start order,
        after the items already known."""
        started = time.monotonic()
        self.ledger.reset_inflight(self.run_id)
        if self.reserve is not None:
            await self.reserve.refresh()
        self._deadline_at = self._deadline_mono()
        self._schedule(self.ledger.items(self.run_id))
        try:
            if more is not None:
                async for batch in more:
                    self._schedule(batch)
            await self._finish_all()
        except BaseException:
            # Cancelled from outside (service shutdown, lost lease) or the feed failed:
            # asyncio.wait does not cancel the items, so cancel them here; each goes back to
            # pending.
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise
        finally:
            await self._close()
        self.stats.seconds = time.monotonic() - started
        final = Counter(i.state for i in self.ledger.items(self.run_id))
        self.stats.done, self.stats.failed = final["done"], final["failed"]
        self.stats.skipped, self.stats.pending = final["skipped"], final["pending"]
        if self.reserve is not None:
            self.stats.upstream_manifest_gets = self.reserve.spent
        return self.stats

    def _schedule(self, items: Sequence[RunItem]) -> None:
        """Start a task per pending item of ``items`` not known yet.

        The start keys are computed again over every item not finished yet, so a later
        part's light items and its chains of shared blobs (a digest the earlier part fetches
        under other repositories counts in the chain) go before the earlier part's bulk
        rather than after all of it. Keys are absolute: an item queued for a slot or for the
        link with its earlier key compares with the new ones.
        """
        new = [i for i in items if i.seq not in self._items]
        for item in new:
            self._items[item.seq] = item
            self._events[item.seq] = asyncio.Event()
            if item.state in ("done", "failed", "skipped"):
                self._outcome[item.seq] = item.state
                self._events[item.seq].set()
        unfinished = [
            i for i in self._items.values() if i.seq not in self._outcome and i.state == "pending"
        ]
        self._rank.update(start_keys(unfinished, by_size=self.deadline is None))
        if len(new) < len(self._items):  # a later part: requeue the waiters with new keys

            def update(key: Priority) -> Priority:
                return self._rank.get(key[-1], key) if isinstance(key, tuple) else key

            for link in self._links.values():
                link.slots.reprioritize(update)
                link.bulk_slots.reprioritize(update)
            for bucket in self._buckets.values():
                bucket.reprioritize(update)
        # Created in start order: the first to ask for a free slot get it without queueing.
        fresh = [i for i in new if i.seq in self._rank and i.seq not in self._outcome]
        for item in sorted(fresh, key=lambda i: self._rank[i.seq]):
            self._tasks.append(
                asyncio.create_task(
                    self._item(item, self._events, self._outcome, self._deadline_at)
                )
            )

    async def _finish_all(self) -> None:
        """Wait for every item (the deadline's grace cuts the rest), confirm shared blobs,
        then wait until the mirrors have presumably stored the last blobs read."""
        tasks, deadline_mono = self._tasks, self._deadline_at
        if not tasks:
            return  # nothing pending (all warm, or all done before a resume)
        if deadline_mono is None:
            await asyncio.gather(*tasks)
        else:
            hard = deadline_mono + self.grace.total_seconds() - time.monotonic()
            finished, pending = await asyncio.wait(tasks, timeout=max(0.0, hard))
            if pending:
                self.stats.deadline_hit = True
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for task in finished:
                task.result()
        if not self.stats.deadline_hit:
            await self._confirm_shared(deadline_mono)
            # End when the mirrors have presumably stored the last blobs read, so what
            # the ledger calls warm is there for the next client (and `verify`).
            busy = [t for link in self._links.values() for t in link.busy_until.values()]
            await _sleep_until(min(max(busy, default=0.0), deadline_mono or float("inf")))

    async def _close(self) -> None:
        for link in self._links.values():
            await link.client.aclose()

    def _progress(self, what: str, item: RunItem, n: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(what, item, n)

    async def _item(
        self,
        item: RunItem,
        events: dict[int, asyncio.Event],
        outcome: dict[int, str],
        deadline: float | None,
    ) -> None:
        assert item.id is not None
        try:
            deps = json.loads(item.depends_on)
            for dep in deps:
                if dep in events:
                    await events[dep].wait()
            waiting = [d for d in deps if outcome.get(d) == "pending"]
            if waiting:
                # The parent tier's item was cut by the deadline: stay pending for --resume.
                self.ledger.update_item(item.id, reason=f"waits for item {waiting[0]}")
                return
            bad = [d for d in deps if outcome.get(d, "done") != "done"]
            if bad:
                self._finish(item, "skipped", f"parent item {bad[0]} did not complete")
                outcome[item.seq] = "skipped"
                return
            await _sleep_until(max((self._busy_until(d) for d in deps), default=0.0))
            link = self._link(item.mirror, item.instance)
            # The digest lock first: a task waiting for another repository's fetch of the same
            # blob must not sit on one of the mirror's slots meanwhile.
            async with link.inflight[item.digest]:
                await _sleep_until(link.busy_until.get(item.digest, 0.0))
                state = await self._start(item, link, deadline)
            outcome[item.seq] = state
        except asyncio.CancelledError:
            # Aborted past the deadline's grace: back to pending for --resume.
            self.ledger.update_item(item.id, state="pending", reason="aborted at the deadline")
            raise
        finally:
            if item.seq in events and item.seq in outcome:
                events[item.seq].set()
            elif item.seq in events:
                outcome.setdefault(item.seq, "pending")
                events[item.seq].set()

    def _busy_until(self, seq: int) -> float:
        """Until when the mirror of item ``seq`` is presumed still storing its object."""
        dep = self._items.get(seq)
        if dep is None:
            return 0.0
        link = self._links.get(_link_key(dep.mirror, dep.instance))
        return 0.0 if link is None else link.busy_until.get(dep.digest, 0.0)

    async def _start(self, item: RunItem, link: Link, deadline: float | None) -> str:
        """Take a slot and the link's bytes, then fetch; "pending" when the window ended first."""
        assert item.id is not None
        key = self._rank[item.seq]
        # Light items go first but may hold at most half the slots: they wait on round trips,
        # not bandwidth, and the blobs behind them should fill the link meanwhile. Blobs on
        # no chain leave CHAIN_SLOTS to the chains: a bulk blob holds its slot while it
        # waits for the link's bytes, and the next copy of a shared blob must not wait for
        # a whole round of them.
        gate: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if is_light(item):
            gate = link.light_slots
        elif key[1] == 0:
            gate = link.bulk_slots.hold(key)
        async with gate, link.slots.hold(key):
            if link.bucket is not None and item.parent_cost > 0:
                if not self._before(deadline, item):
                    return "pending"
                # Its key now: a part of the plan that joined meanwhile may have changed it.
                await link.bucket.take(item.parent_cost, self._rank[item.seq])
            if not self._before(deadline, item):
                # The link was busy until past the deadline: no blob starts after it.
                return "pending"
            started = time.monotonic()
            state = await self._fetch(item, link, deadline)
            if state == "done" and item.kind == "blob":
                took = time.monotonic() - started
                link.busy_until[item.digest] = time.monotonic() + self.settle + STORE_LAG * took
                link.fetched[item.digest].add(item.repository)
            return state

    def _before(self, deadline: float | None, item: RunItem) -> bool:
        assert item.id is not None
        if deadline is None or time.monotonic() < deadline:
            return True
        self.stats.deadline_hit = True
        self.ledger.update_item(item.id, reason="window ended before it started")
        self._progress("deadline", item)
        return False

    async def _confirm_shared(self, deadline: float | None) -> None:
        """HEAD each blob that several repositories of a per-repository cache asked for in
        this run: one whose copy was lost to the mirror's in-flight race is fetched again."""

        async def confirm(link: Link, repository: str, digest: str) -> None:
            # Bounded: a HEAD while the mirror still stores the digest for someone else is
            # relayed without being kept; the next one, once nothing is in flight, stores it.
            # One digest at a time per mirror, as the items: a lost copy's HEAD has the
            # mirror fetch it, and a second HEAD meanwhile would be relayed again.
            lost = False
            for attempt in range(CONFIRM_TRIES):
                async with link.inflight[digest]:
                    await _sleep_until(link.busy_until.get(digest, 0.0))
                    if deadline is not None and time.monotonic() >= deadline:
                        return
                    asked = time.monotonic()
                    async with link.slots.hold(0):
                        try:
                            stored = await link.client.blob_stored(repository, digest)
                        except RegistryError as exc:
                            log.warning(
                                "%s: could not confirm %s@%s: %s",
                                link.mirror, repository, digest, exc,
                            )  # fmt: skip
                            return
                    if stored is not False:
                        return
                    # Relayed: that HEAD has the mirror store it, unless someone else's store
                    # is still in flight. Back off (0.25 s doubling to 4 s) before asking again.
                    took = time.monotonic() - asked
                    backoff = min(CONFIRM_BACKOFF * 2**attempt, 4.0)
                    link.busy_until[digest] = time.monotonic() + max(self.settle + took, backoff)
                if not lost:
                    lost = True
                    self.stats.restored += 1
                    log.warning(
                        "%s had not kept %s@%s (it was storing the same blob for another "
                        "repository); asking again",
                        link.mirror,
                        repository,
                        digest,
                    )

        checks = [
            confirm(link, repository, digest)
            for link in self._links.values()
            if link.scope == "repository"
            for digest, repositories in link.fetched.items()
            if len(repositories) > 1
            for repository in sorted(repositories)
        ]
        await asyncio.gather(*checks)

    async def _fetch(self, item: RunItem, link: Link, deadline: float | None) -> str:
        """Fetch one item, waiting out a 429's Retry-After while the deadline allows."""
        assert item.id is not None
        for _ in range(self.config.run.retries + 1):
            try:
                return await self._fetch_once(item, link)
            except RateLimited as exc:
                wait = exc.retry_after
                late = deadline is not None and time.monotonic() + (wait or 0) >= deadline
                if wait is None or wait > MAX_RETRY_AFTER or late:
                    why = f"; Retry-After {wait:.0f}s" if wait is not None else ""
                    self._finish(item, "failed", f"{exc}{why}")
                    log.warning("%s %s@%s: %s", item.mirror, item.repository, item.digest, exc)
                    return "failed"
                log.warning(
                    "%s: rate limited on %s; retrying after %.0fs (Retry-After)",
                    item.mirror,
                    item.repository,
                    wait,
                )
                await asyncio.sleep(wait)
        self._finish(item, "failed", "rate limited: still refused after waiting out Retry-After")
        return "failed"

    async def _fetch_once(self, item: RunItem, link: Link) -> str:
        assert item.id is not None
        item.attempts += 1
        self.ledger.update_item(
            item.id, state="running", attempts=item.attempts, started_at=utcnow(), reason=""
        )
        self._progress("start", item)
        try:
            if item.kind == "manifest":
                manifest = await link.client.get_manifest(item.repository, item.reference)
                got, n = manifest.digest, len(manifest.body)
                if got != item.digest:
                    # A tag that moved since planning: warm, but say so; the planner sees
                    # the new digest next time.
                    log.warning(
                        "%s: %s at %s now resolves to %s (planned %s)",
                        item.mirror,
                        item.reference,
                        item.repository,
                        got,
                        item.digest,
                    )
            else:

                async def counted(k: int) -> None:
                    self._progress("bytes", item, k)

                n = await link.client.fetch_blob(item.repository, item.digest, on_bytes=counted)
        except DigestMismatch as exc:
            now = utcnow()
            self.ledger.record_incident(
                mirror=item.mirror,
                repository=item.upstream_repository,
                digest=item.digest,
                kind="digest-mismatch",
                detail=str(exc),
                now=now,
                run_id=self.run_id,
            )
            self.stats.incidents += 1
            log.error("INCIDENT %s %s@%s: %s", item.mirror, item.repository, item.digest, exc)
            self._finish(item, "failed", f"incident: {exc}")
            return "failed"
        except RateLimited:
            raise
        except RegistryError as exc:
            reason = str(exc)
            if item.tier == 0 and self.reserve is not None:
                reason = await self.reserve.explain(exc)
            self._finish(item, "failed", reason)
            log.warning("%s %s@%s failed: %s", item.mirror, item.repository, item.digest, reason)
            return "failed"
        now = utcnow()
        self.ledger.record_holding(
            mirror=item.mirror,
            instance=item.instance,
            repository=item.upstream_repository,
            kind=item.kind,
            digest=item.digest,
            size=n,
            now=now,
            ttl=link.ttl,
            run_id=self.run_id,
        )
        self.ledger.update_item(item.id, state="done", bytes=n, finished_at=now)
        self.stats.bytes_by_mirror[item.mirror] += n
        self.stats.bytes_by_tier[item.tier] += n
        self.stats.parent_bytes_by_mirror[item.mirror] += item.parent_cost
        self._progress("done", item, n)
        return "done"

    def _finish(self, item: RunItem, state: str, reason: str) -> None:
        assert item.id is not None
        self.ledger.update_item(item.id, state=state, reason=reason[:500], finished_at=utcnow())
        self._progress(state, item)


def _link_key(mirror: str, instance: str) -> str:
    return f"{mirror}\0{instance}"


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
