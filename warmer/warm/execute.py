"""Carry out a plan: parallel, capped, tier-ordered, verified fetches through the mirrors.

The executor decides nothing about *what* to fetch (that is ``warmer.warm.plan``); it only
carries run items out, in plan order, under these rules (their decisions are the pure
functions of ``warmer.warm.policy``; this module does the I/O and reads the clock):

* one :class:`Lane` per mirror instance: its client and a bounded number of requests
  (the mirror's ``link.concurrency``);
* a pacer per mirror's parent *link* (``warmer.warm.pacing``), shared by its instances:
  a request's ``parent_cost`` (a cold blob read from the relay is pulled twice by
  distribution 2.8) is paid in time when it starts, our read held until it has arrived
  (``paid_request``);
* a large cold blob is read from the mirror's storage, the request that starts its store
  closed at once (``warmer.warm.coldread``): its parent carries it once;
* never two requests for the same digest through the same mirror instance at once, and
  none until the mirror has presumably stored the last one: CNCF distribution 2.8 stores a
  cold blob in a background fetch that may end a second after our read, and while it runs
  (its ``inflight`` set is keyed by digest alone) it answers a request for the same digest
  by fetching it again without storing it, even under another repository, which then never
  gets its copy. So after a cold blob the digest stays busy for ``settle`` (0.4 s) plus a
  quarter of our read's time, or past the store's predicted end on a paced link;
* a child tier's request waits for the parent tier's item for the same object and for
  that busy time (otherwise the parent fetches the blob a third time from its own parent);
* at the end, blobs shared by several repositories of a per-repository cache are
  confirmed with a HEAD: a distribution mirror answers from its storage with
  ``Accept-Ranges``/``Cache-Control``; an answer without them means the copy was lost to
  the race above, and that HEAD has the mirror fetch and store it (counted as
  ``restored``); a copy answered from storage was held already and is not asked about;
* every byte hashed against its digest while streaming, nothing written to disk; a
  mismatch is an incident, never warm;
* the deadline: no item starts after it; in-flight ones get a grace period, then are
  aborted and left pending for ``--resume``;
* the upstream rate-limit reserve: cold manifest fetches at the top tier count upstream;
  when the remaining count reaches the reserve they wait (one log line) until it recovers
  or the deadline passes;
* the event loop never waits for the database: every state change is handed to a
  ``warmer.store.writer.LedgerWriter``, which commits them in order, in batches, on its
  own thread; the few reads (the run's items at the start, the counts at the end) run in
  a thread too. When :meth:`Executor.run` returns or raises, the writer has committed
  everything (or its error is what ``run`` raises), so a killed run loses at most the
  blobs in flight and the last batch of bookkeeping (see the writer's durability note).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any

from warmer.config import Config
from warmer.oci.registry import DigestMismatch, RateLimited, RegistryClient, RegistryError
from warmer.store.ledger import (
    HoldingRecord,
    IncidentRecord,
    InflightReset,
    ItemUpdate,
    Ledger,
    LedgerOp,
    RunItem,
    utcnow,
)
from warmer.store.writer import LedgerWriter
from warmer.warm import coldread, policy
from warmer.warm.lane import Lane, confirm_shared, lane_key, read_manifest, sleep_until, stored_read
from warmer.warm.pacing import LinkPacer, paced, paid_request, store_end
from warmer.warm.policy import SETTLE
from warmer.warm.reserve import RateReserve
from warmer.warm.resolve import Learned
from warmer.warm.slots import Priority, PrioritySlots
from warmer.warm.startorder import StartKey, is_light, start_keys
from warmer.warm.stats import MovedTag, RunStats
from warmer.warm.topology import stored_from

log = logging.getLogger("warmer.warm.execute")

ProgressHook = Callable[[str, RunItem, int], None]
ABORTED = "aborted at the deadline"  # the reason of an item cancelled in flight

__all__ = ["SETTLE", "Executor", "Lane", "ProgressHook", "RunStats"]


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
        learned: Learned | None = None,
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
        self._learned = learned  # what the top tiers answered while resolving
        self._lanes: dict[str, Lane] = {}
        self._buckets: dict[str, LinkPacer] = {}  # mirror -> its parent link's pacer
        self._items: dict[int, RunItem] = {}
        self._rank: dict[int, StartKey] = {}  # seq -> start key (slot and link priority)
        self._events: dict[int, asyncio.Event] = {}  # seq -> set when the item is settled
        self._outcome: dict[int, str] = {}  # seq -> final state
        self._answered: dict[int, float] = {}  # seq -> when its relayed blob's answer came
        self._tasks: list[asyncio.Task[None]] = []
        self._until: float | None = None  # the deadline on the monotonic clock
        self._writer: LedgerWriter | None = None  # while ``run`` runs

    def _lane(self, mirror: str, instance: str) -> Lane:
        key = lane_key(mirror, instance)
        lane = self._lanes.get(key)
        if lane is None:
            m = self.config.mirrors[mirror]
            # All instances of a mirror pull over the same parent link: one bucket for them.
            bucket = self._buckets.get(mirror)
            if bucket is None and m.link.bandwidth:
                bucket = self._buckets[mirror] = LinkPacer(
                    m.link.bandwidth, defer_big=self.deadline is None
                )
            slots = policy.lane_slots(m.link.concurrency)
            lane = Lane(
                mirror=mirror,
                instance=instance,
                client=self._client_factory(mirror, instance or m.url),
                slots=PrioritySlots(slots.total),
                light_slots=asyncio.Semaphore(slots.light),
                bulk_slots=PrioritySlots(slots.bulk),
                bucket=bucket,
                ttl=m.ttl,
                expiry=m.expiry,
                scope=m.cache_scope,
                fetch_multiplicity=m.fetch_multiplicity,
                stored_from=stored_from(m.cold_blobs, m.fetch_multiplicity),
            )
            self._lanes[key] = lane
        return lane

    def _record(self, op: LedgerOp) -> None:
        """Hand a write to the ledger writer (never waits for the database)."""
        assert self._writer is not None, "ledger writes happen while run() runs"
        self._writer.submit(op)

    async def run(self, more: AsyncIterator[Sequence[RunItem]] | None = None) -> RunStats:
        """Carry out the run's pending items, and those ``more`` yields while they run
        (the continuation of a plan whose first images were ready first; see
        ``warmer.warm.plan``'s Continuation): each batch is started in its own start order,
        after the items already known.

        Returns (or raises) once every write of the run is committed; a write that could
        not be committed raises ``warmer.store.writer.LedgerWriteError``."""
        started = time.monotonic()
        writer = self._writer = LedgerWriter(self.ledger)
        try:
            try:
                # Items a killed process left running are pending again: in memory now, in
                # the ledger with the writer's first batch (reads need no write lock).
                self._record(InflightReset(self.run_id))
                items = await asyncio.to_thread(self.ledger.items, self.run_id)
                for item in items:
                    if item.state == "running":
                        item.state = "pending"
                self._until = policy.monotonic_deadline(
                    self.deadline, now=utcnow(), now_mono=time.monotonic()
                )
                self._schedule(items)
                if more is not None:
                    async for batch in more:
                        self._schedule(batch)
                await self._finish_all()
            except BaseException:
                # Cancelled from outside (service shutdown, lost lease), the feed failed or
                # the ledger could not be written: asyncio.wait does not cancel the items,
                # so cancel them here; each goes back to pending.
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                raise
            finally:
                await self._close()
        finally:
            await _to_the_end(asyncio.to_thread(writer.close))
        self.stats.seconds = time.monotonic() - started
        rows = await asyncio.to_thread(self.ledger.items, self.run_id)
        self.stats.count_run(rows)
        if self.reserve is not None:
            self.stats.upstream_requests_reserved = self.reserve.spent
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

            for lane in self._lanes.values():
                lane.slots.reprioritize(update)
                lane.bulk_slots.reprioritize(update)
            for bucket in self._buckets.values():
                bucket.reprioritize(update)
        # Created in start order: the first to ask for a free slot get it without queueing.
        fresh = [i for i in new if i.seq in self._rank and i.seq not in self._outcome]
        for item in sorted(fresh, key=lambda i: self._rank[i.seq]):
            self._tasks.append(
                asyncio.create_task(self._item(item, self._events, self._outcome, self._until))
            )

    async def _finish_all(self) -> None:
        """Wait for every item (the deadline's grace cuts the rest), confirm shared blobs,
        then wait until the mirrors have presumably stored the last blobs read."""
        tasks, until = self._tasks, self._until
        if not tasks:
            return  # nothing pending (all warm, or all done before a resume)
        if until is None:
            await asyncio.gather(*tasks)
        else:
            hard = policy.grace_left(time.monotonic(), until, self.grace.total_seconds())
            finished, pending = await asyncio.wait(tasks, timeout=hard)
            if pending:
                self.stats.deadline_hit = True
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for task in finished:
                task.result()
        if not self.stats.deadline_hit:
            await confirm_shared(list(self._lanes.values()), self.stats, self.settle, until)
            # End when the mirrors have presumably stored the last blobs read, so what
            # the ledger calls warm is there for the next client (and `verify`).
            busy = [t for lane in self._lanes.values() for t in lane.busy_until.values()]
            await sleep_until(min(max(busy, default=0.0), until or float("inf")))

    async def _close(self) -> None:
        for lane in self._lanes.values():
            self.stats.add_requests(self.config.tier(m := lane.mirror), m, lane.client.requests)
            await lane.client.aclose()

    def _progress(self, what: str, item: RunItem, n: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(what, item, n)

    async def _item(
        self,
        item: RunItem,
        events: dict[int, asyncio.Event],
        outcome: dict[int, str],
        until: float | None,
    ) -> None:
        assert item.id is not None
        try:
            deps: list[int] = json.loads(item.depends_on)
            for dep in deps:
                if dep in events:
                    await events[dep].wait()
            verdict, parent = policy.after_parents(deps, outcome)
            if verdict == "wait":
                # The parent tier's item was cut by the deadline: stay pending for --resume.
                self._record(ItemUpdate(item.id, {"reason": f"waits for item {parent}"}))
                return
            if verdict == "skip":
                self._finish(item, "skipped", f"parent item {parent} did not complete")
                outcome[item.seq] = "skipped"
                return
            await sleep_until(max((self._busy_until(d) for d in deps), default=0.0))
            lane = self._lane(item.mirror, item.instance)
            # The digest lock first: a task waiting for another repository's fetch of the same
            # blob must not sit on one of the mirror's slots meanwhile.
            async with lane.inflight[item.digest]:
                await sleep_until(lane.busy_until.get(item.digest, 0.0))
                state = await self._start(item, lane, until)
            outcome[item.seq] = state
        except asyncio.CancelledError:
            # Aborted past the deadline's grace: back to pending for --resume.
            self._record(ItemUpdate(item.id, {"state": "pending", "reason": ABORTED}))
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
        lane = self._lanes.get(lane_key(dep.mirror, dep.instance))
        return 0.0 if lane is None else lane.busy_until.get(dep.digest, 0.0)

    async def _start(self, item: RunItem, lane: Lane, until: float | None) -> str:
        """Take a slot and the link's bytes, then fetch; "pending" when the window ended first."""
        assert item.id is not None
        key = self._rank[item.seq]
        share = policy.slot_share(is_light(item), key[1])
        relayed = not stored_read(item, lane)
        gate: AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        slot: AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        # On a paced link a stored read's requests take a slot each and its wait for the
        # store none (the pacer bounds the stores in flight); elsewhere the slot is the store.
        if relayed or lane.bucket is None:
            slot = lane.slots.hold(key)
            if share == "light":
                gate = lane.light_slots
            elif share == "bulk":
                gate = lane.bulk_slots.hold(key)
        async with gate, slot:
            charge = policy.link_charge(item.parent_cost, capped=lane.bucket is not None)
            if charge and not self._before(until, item):
                return "pending"
            # Its key now: a part of the plan that joined meanwhile may have changed it.
            async with paid_request(lane.bucket, item, charge, self._rank[item.seq], relayed):
                if not self._before(until, item):
                    # The link was busy until past the deadline: no blob starts after it.
                    return "pending"
                started = time.monotonic()
                state = await self._fetch(item, lane, until, relayed)
            end = store_end(lane.bucket, item.seq)
            answered = self._answered.pop(item.seq, started)
            held = (item.repository, item.digest) in lane.from_storage
            if state == "done" and item.kind == "blob" and not held:
                # The mirror may still be storing it: since its answer (see STORE_LAG).
                now = time.monotonic()
                busy = policy.busy_after_read(now, now - answered, self.settle, end) - now
                lane.busy_until[item.digest] = now + busy
                log.debug("%s %s@%s: answered in %.3fs, read in %.3fs more; busy %.3fs",
                          item.mirror, item.repository, item.digest, answered - started,
                          now - answered, busy)  # fmt: skip
            return state

    def _before(self, until: float | None, item: RunItem) -> bool:
        assert item.id is not None
        if policy.may_start(time.monotonic(), until):
            return True
        self.stats.deadline_hit = True
        self._record(ItemUpdate(item.id, {"reason": "window ended before it started"}))
        self._progress("deadline", item)
        return False

    async def _fetch(
        self, item: RunItem, lane: Lane, until: float | None, relayed: bool = True
    ) -> str:
        """Fetch one item, waiting out a 429's Retry-After while the deadline allows."""
        assert item.id is not None
        for _ in range(self.config.run.retries + 1):
            try:
                return await self._fetch_once(item, lane, relayed)
            except RateLimited as exc:
                wait = policy.retry_wait(exc.retry_after, now=time.monotonic(), until=until)
                if wait is None:
                    told = exc.retry_after
                    why = f"; Retry-After {told:.0f}s" if told is not None else ""
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

    async def _fetch_once(self, item: RunItem, lane: Lane, relayed: bool = True) -> str:
        assert item.id is not None
        item.attempts += 1
        self._record(
            ItemUpdate(
                item.id,
                {
                    "state": "running",
                    "attempts": item.attempts,
                    "started_at": utcnow(),
                    "reason": "",
                },
            )
        )
        self._progress("start", item)
        # Whether each answer for the blob came from the mirror's storage (None first: a
        # triggered store, whose answer is never seen).
        stored: list[bool | None] = []
        try:
            if self._learned is not None and self._learned.answered(item):  # not asked again
                n = self.stats.learned(item.size)
            elif item.kind == "manifest":
                got, n = await read_manifest(lane, item)
                if got != item.digest:
                    return self._moved(item, lane, got, n)
            else:
                n = await self._read_blob(item, lane, stored, relayed)
        except DigestMismatch as exc:
            self._record(
                IncidentRecord(
                    mirror=item.mirror,
                    repository=item.upstream_repository,
                    digest=item.digest,
                    kind="digest-mismatch",
                    detail=str(exc),
                    now=utcnow(),
                    run_id=self.run_id,
                )
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
        if item.kind == "blob" and not (stored and stored[0]):  # not held before: stored now
            lane.fetched[item.digest].add(item.repository)
        now = utcnow()
        # The holding before the item's state: the ledger is always a prefix of these
        # writes, so an item it shows done has its holding recorded.
        self._record(
            HoldingRecord(
                mirror=item.mirror,
                instance=item.instance,
                repository=item.upstream_repository,
                kind=item.kind,
                digest=item.digest,
                size=n,
                now=now,
                ttl=lane.ttl,
                run_id=self.run_id,
                expiry=lane.expiry,
                fetched=None if not stored or stored[0] is None else not stored[0],
            )
        )
        self._record(ItemUpdate(item.id, {"state": "done", "bytes": n, "finished_at": now}))
        self.stats.bytes_by_mirror[item.mirror] += n
        self.stats.bytes_by_tier[item.tier] += n
        self.stats.parent_bytes_by_mirror[item.mirror] += item.parent_cost
        self._progress("done", item, n)
        return "done"

    async def _read_blob(
        self, item: RunItem, lane: Lane, stored: list[bool | None], relayed: bool
    ) -> int:
        """Read a blob item: its stored copy (see ``coldread``), or the one relayed, as
        ``_start`` decided (and charged) it: a lane that stops dropping relays meanwhile
        does not change an item already admitted as a stored read."""

        async def counted(k: int) -> None:
            self._progress("bytes", item, k)

        pacer = lane.bucket
        slot: AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if not relayed:
            stored.append(None)  # the trigger: the mirror fetched it now, or held it already
            asks: list[int] = []
            n = await coldread.read_stored(
                lane.client, item, on_bytes=counted, on_answer=stored.append,
                speed=lane.store_speed,
                predicted=lambda: None if pacer is None else pacer.store_done(item.seq),
                slot=lambda: self._request_slot(item, lane), asks=asks,
            )  # fmt: skip
            self.stats.stored_asks += len(asks)
            if n is not None:
                self.stats.stored_reads += 1
                lane.from_storage.add((item.repository, item.digest))
                return n
            log.warning(
                "%s still relayed %s@%s after %d asks: reading the relayed copy",
                item.mirror, item.repository, item.digest, coldread.ASKS,
            )  # fmt: skip
            if lane.store_speed.keeps_nothing() and lane.stored_from is not None:
                lane.stored_from = None
                log.warning(
                    "%s does not seem to store a blob whose relayed copy was dropped: "
                    "reading relayed copies for the rest of the run (cold_blobs = "
                    "\"relay\" in mirrors.%s says so for good; `warmer probe` measures it)",
                    item.mirror, item.mirror,
                )  # fmt: skip
            relay = item.size * lane.fetch_multiplicity
            self.stats.parent_bytes_by_mirror[item.mirror] += relay
            self.stats.stored_fallbacks += 1
            if pacer is not None:
                await pacer.start(item, relay, self._rank[item.seq])
            slot = self._request_slot(item, lane)

        def answer(from_storage: bool | None) -> None:
            stored.append(from_storage)
            self._answered[item.seq] = time.monotonic()

        began = time.monotonic()
        async with slot:
            n = await lane.client.fetch_blob(
                item.repository, item.digest, on_bytes=paced(pacer, item.seq, counted),
                on_answer=answer, size=item.size,
            )  # fmt: skip
        if stored and stored[-1]:
            lane.from_storage.add((item.repository, item.digest))
        elif pacer is None:  # a relayed read at the link's own pace: how fast it stores
            lane.store_speed.relayed(n, time.monotonic() - began)
        return n

    def _request_slot(self, item: RunItem, lane: Lane) -> AbstractAsyncContextManager[Any]:
        """A slot for one request of a stored read on a paced link (see ``_start``)."""
        if lane.bucket is None:
            return contextlib.nullcontext()  # the read holds one throughout
        return lane.slots.hold(self._rank[item.seq])

    def _moved(self, item: RunItem, lane: Lane, got: str, size: int) -> str:
        """A tag that resolves to ``got`` at fetch time where the plan had ``item.digest``.

        What the mirror fetched is recorded (under ``got``, its own digest); the item fails
        with the reason, never counted under the planned digest. The warm asks the upstream
        whether the tag moved (then records the drift and plans the new image) or the tier
        serves a stale digest (see ``warmer.warm.run``)."""
        assert item.id is not None
        now = utcnow()
        self._record(
            HoldingRecord(
                mirror=item.mirror, instance=item.instance, repository=item.upstream_repository,
                kind="manifest", digest=got, size=size, now=now, ttl=lane.ttl,
                run_id=self.run_id, expiry=lane.expiry,
            )
        )  # fmt: skip
        self.stats.moved.append(MovedTag(item.image, item.reference, item.digest, got))
        reason = (
            f"tag moved since planning: {item.reference} now resolves to {got} "
            f"(planned {item.digest}); the next run warms the new image"
        )
        log.warning("%s %s: %s", item.mirror, item.repository, reason)
        self._finish(item, "failed", reason)
        return "failed"

    def _finish(self, item: RunItem, state: str, reason: str) -> None:
        assert item.id is not None
        values = {"state": state, "reason": reason[:500], "finished_at": utcnow()}
        self._record(ItemUpdate(item.id, values))
        self._progress(state, item)


async def _to_the_end(work: Awaitable[None]) -> None:
    """Await ``work`` to its end even if cancelled meanwhile, then re-raise the cancel.

    For closing the ledger writer: ``Executor.run`` promises a complete ledger when it
    returns or raises, a second cancel (a service shutting down) included."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
