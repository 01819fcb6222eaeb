"""Pacing of a mirror's parent link: the bytes of every sliding window stay within the cap.

What a request costs the parent link is modelled in *time*, not only in bytes. A cold blob
read from the relay through CNCF distribution 2.8 crosses the link twice (``parent_cost``):
once in the mirror's background store, which starts with the request and runs at the
link's full speed whatever we do, and once in the copy streamed to us. A blob read from
the mirror's storage (``warmer.warm.coldread``) crosses it once, all of it store: its
``parent_cost`` is paid as one lump and nothing of our read crosses the link
(``start(..., relayed=False)``). We choose only when each request starts (and how fast we
read a relayed copy); the pacer admits a start when the bytes
it will put on the link fit in every window of ``WINDOWS``, a window of ``w`` seconds
carrying at most ``rate x (w + burst)``.

When the bytes land: the link carries what was admitted one request after the other
(``landing``: after the first answer's lag and after what it carries already, at the
speed learnt from the first transfers, ``LinkSpeed``; concurrent transfers share it, but
a busy link delivers the same bytes by the same time either way). :class:`LinkWindows`
counts each piece in every window from its admission until the window has passed its
predicted end, so a piece landing *earlier* than predicted is still counted, and only one
landing later could slip past: every prediction leans late. The speed is a lower bound
(measured from admission, so including the wait for the first bytes; the cap while
unknown: a link slower than the cap holds it by itself).

Our copy is the part no prediction covers: the socket buffers between the parent and us
(the mirror's two, ours; Linux autotunes them to tens of MB on a connection that carried
fast reads: one benchmark run saw a 43 MB read all sent before we read any of it) take in
any part of it at the link's speed whatever our pace. So the long windows (``LONG`` and
up: 5 s and 10 s) *hold* each request's read from its start until we have read it (a byte
cannot land after we read it): they stay within the cap whatever the buffers do. A short
window cannot hold a read longer than its allowance (it would never fit); there, our read
is paced instead, assuming the parent runs ``READ_AHEAD`` ahead of it (measured on a fresh
connection): best effort, which holds when the buffers are no bigger than that. So a start
is charged its *lump* in the short windows (the store and the read-ahead), its store and
its held read in the long ones; a read chunk is charged in the short windows only, and
releases its bytes from the long windows' hold as landed now.

A start also waits until the link's predicted queue (what was admitted and has not crossed
it yet) is down to the first answer's lag plus ``AHEAD``: enough to keep the link busy, and
on a link no faster than the cap a read admitted long before it can flow would be held by
the long windows all that while (they then admit less than the link carries). The
predicted end of each start's bytes is kept (:func:`store_end`): the mirror is storing
the blob until then, so no other request for it goes to that mirror earlier.

Allowances: 1 s windows 2 x the cap, 5 s and 10 s windows 1.03 and 1.02 x the cap. A
lump larger than a window's allowance (a single blob whose background store alone exceeds
it) is the one unavoidable excess: it starts only when that window is empty, so such a
window holds that object and nothing else. Its cost is idle time: a 5 s window that must
take an 87 MB blob whole (cap 20 MB/s: 103 MB allowed) carries little else for about 5 s
before it and 5 s after it.
:class:`LinkPacer` is its asynchronous face, shared by every worker on one link: waiters
are served by ``priority`` (lowest first, then arrival), starts before reads, and a
waiter that cannot fit holds the others back (a big lump would starve otherwise), but
for reads while it waits for the long windows (reads only use the short ones, and the
bytes a long window holds for a read are released only by reading it), and but for a
start that fills a large share of a long window (``BIG``) in a run without a deadline
(``defer_big``: size, not plan order, decides there): it goes when the windows drain, at
the latest at the end of the run, where no window after it is left nearly idle. Waiting
for room for a lump of L bytes idles the link for about L / rate before it whoever waits:
a quarter of the 5 s window is 1.3 s (at half, a 47.8 MB lump in the benchmark left the
link idle for 3 s mid-run).

The window accounting and the landing prediction are pure and live in
:mod:`warmer.warm.linkwindows`; this module holds the link's speed, the charges and the
asynchronous pacer.

Hand-written because the rate limiters on PyPI count requests or enforce one window,
not byte amounts of very different sizes over several windows at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from warmer.store.ledger import RunItem
from warmer.warm.linkwindows import WINDOWS, LinkWindows, landing
from warmer.warm.slots import Priority

log = logging.getLogger("warmer.warm.pacing")

# Bytes of our read that the sockets between the parent and us (the mirror's two, ours)
# take in at link speed whatever our pace: measured on Linux loopback through distribution
# 2.8 with autotuned buffers, 10 MB on a fresh connection and up to 17 MB on one that
# carried fast reads before (more at times: the long windows do not rely on it). Reads
# shorter than this are part of the lump.
READ_AHEAD = 20 << 20
PROBE_MIN = 4 << 20  # bytes of a whole read that measures the link's speed
MAX_LAG = 1.0  # seconds: the longest first answer counted in a burst's predicted time
BIG = 0.25  # a start needing more than this share of a long window's allowance is big
RECHECK = 0.25  # seconds: the longest nap while only reads in progress can make room
# Seconds of predicted work (beyond the first answer's lag) the link may have queued when a
# start is admitted: enough to keep it busy, little enough that what the long windows hold
# for reads waiting behind the queue stays small (on a link no faster than the cap, a
# start admitted early is held for its whole wait: the windows then admit less).
AHEAD = 0.5
AHEAD_STORED = 1.5  # the same for a start with no read of ours across the link
READ: Priority = (1 << 30,)  # reads queue behind every start (whose keys are tuples)


class LinkSpeed:
    """The link's speed, learnt from the reads that ran unthrottled beside the mirror's
    store (those the read-ahead takes whole): from the request's admission to our last
    byte, the link carried at least our copy, and that of every such request admitted
    and read within that time. Not the store: measured at the benchmark's front, it often
    ends well after our read (counting it measured up to twice the link's speed). Each
    observation includes the wait for the first bytes, and the store beside it, traffic
    not counted (paced reads) or a busy client only make it measure less than the link's
    speed: the safe side, since a later landing is predicted. Not the fastest observed
    but the median of the recent ones counts: a short read that a burst of the link's own
    buffers carries (a token bucket's, a queue's) measures more than the link's speed.
    ``bytes_per_s`` is never below ``floor`` (the cap: a link slower than the cap holds it
    by itself), and the floor while nothing was measured. ``answered`` learns the lag
    between asking and the first bytes (the median counts too)."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor
        self.measured: float | None = None
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=64)
        self._lags: deque[float] = deque(maxlen=32)
        self._speeds: deque[float] = deque(maxlen=32)

    @property
    def bytes_per_s(self) -> float:
        return max(self.measured or 0.0, self.floor)

    def finished(self, started: float, ended: float, read: float) -> None:
        """A request admitted at ``started`` had its ``read`` bytes (our copy) read to the
        end at ``ended``."""
        self._recent.append((started, ended, read))
        if read < PROBE_MIN or ended <= started:
            return  # short transfers measure the round trip, not the link
        nested = sum(b for s, e, b in self._recent if s >= started and e <= ended)
        self._speeds.append(nested / (ended - started))
        speed = statistics.median(self._speeds)
        if self.measured is None or abs(speed - self.measured) > 0.05 * self.measured:
            # A lower bound of the link's speed (see above); what pacing uses is said too.
            log.info(
                "parent link: reads measured at %.1f MB/s; bursts predicted at %.1f MB/s",
                speed / 1e6,
                max(speed, self.floor) / 1e6,
            )
        self.measured = speed

    def answered(self, seconds: float) -> None:
        """A request's first bytes came ``seconds`` after it was admitted."""
        self._lags.append(min(seconds, MAX_LAG))

    @property
    def lag(self) -> float:
        """The usual wait for a request's first bytes (0 while unknown)."""
        return statistics.median(self._lags) if self._lags else 0.0


@dataclass(frozen=True)
class Charge:
    """How a request's cost on the link is paid: ``lump`` when it starts, ``paced`` as our
    read arrives (after its first ``prepaid`` bytes). A read with nothing paced runs
    unthrottled: it measures the link. The store is ``lump - prepaid``, our read
    ``prepaid + paced`` (what the long windows hold)."""

    lump: int
    paced: int
    prepaid: int

    @property
    def store(self) -> int:
        return self.lump - self.prepaid

    @property
    def read(self) -> int:
        return self.prepaid + self.paced


def split_charge(size: int, charge: int) -> Charge:
    """Pure: the lump and paced parts of a request that costs the link ``charge`` bytes,
    our read being ``size`` bytes of it (the rest is the mirror's background store)."""
    read = min(size, charge)
    if read <= 0:
        return Charge(charge, 0, 0)
    ahead = min(read, READ_AHEAD)
    return Charge(charge - read + ahead, read - ahead, ahead)


@dataclass
class _Reader:
    size: int
    prepaid: int
    whole: bool  # all of it paid up front (read unthrottled)
    link_bytes: int
    started: float
    held: int  # bytes the long windows still hold for it
    read: int = 0


@dataclass(eq=False)
class _Ask:
    """A waiter's bytes: ``n`` in the short windows, ``long`` in the long ones, ``held``
    more held there; ``link_bytes`` its time on the link (0: lands now)."""

    n: float
    long: float
    held: float
    link_bytes: float
    start: bool
    paid: asyncio.Future[None]
    seq: int | None = None  # the item a start is for (its store's predicted end is kept)


class LinkPacer:
    """The pacing of one parent link, shared by every worker on it (see the module)."""

    def __init__(
        self,
        rate: float,
        windows: tuple[tuple[float, float], ...] = WINDOWS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        defer_big: bool = False,
    ) -> None:
        self.window = LinkWindows(rate, windows)
        self.defer_big = defer_big  # see _serve (the run has no deadline: size decides)
        self.rate = self.window.rate
        self.speed = LinkSpeed(floor=self.rate)
        self._clock = clock
        self._sleep = sleep  # injectable with the clock, so tests run on a fake time line
        self._busy = 0.0  # until when the link carries what was admitted (predicted)
        # (priority, arrival, ask): served best first.
        self._waiters: list[tuple[Priority, int, _Ask]] = []
        self._arrivals = itertools.count()
        self._arrived = asyncio.Event()
        self._server: asyncio.Task[None] | None = None
        self._readers: dict[int, _Reader] = {}
        self.ends: dict[int, float] = {}  # item seq -> predicted end of its bytes on the link
        self._taken_at: dict[int, int] = {}  # item seq -> bytes admitted up to and with it
        # item seq -> predicted first bytes, and whether the link's queue (not the usual
        # lag) set them: corrected when the answer comes (see answered)
        self._firsts: dict[int, tuple[float, bool]] = {}
        self.taken = 0

    async def start(
        self, item: RunItem, charge: int, priority: Priority, *, relayed: bool = True
    ) -> None:
        """Pay what ``item``'s request costs the link up front (its lump; in the long
        windows its store and a hold on its read); its read is paced by :meth:`read`,
        and :meth:`finish` releases what it did not read. ``relayed=False``: we read the
        mirror's stored copy, not one streamed across the link; all of it is the store."""
        size = item.size if item.kind == "blob" and relayed else 0
        split = split_charge(size, charge)
        self.finish(item.seq)  # a retry: the earlier attempt is over
        await self.take(
            split.lump, priority, long=split.store, held=split.read, link_bytes=charge,
            start=True, seq=item.seq,
        )  # fmt: skip
        if split.read:
            whole = split.paced == 0
            reader = _Reader(size, split.prepaid, whole, charge, self._clock(), split.read)
            self._readers[item.seq] = reader

    async def read(self, seq: int, n: int) -> None:
        """``n`` more bytes of item ``seq``'s read arrived: they have crossed the link (the
        long windows count them as landed now); pay, in the short windows, for what the
        parent sends in their place (the buffers, ``prepaid`` bytes, stay full)."""
        reader = self._readers.get(seq)
        if reader is None:
            return  # nothing of it crosses the link, or all of it was paid
        before = reader.read
        reader.read += n
        now = self._clock()
        if not before:
            self.speed.answered(now - reader.started)
            self.answered(seq, now)
        self._release(reader, now, n)
        if reader.read >= reader.size:
            del self._readers[seq]
            if reader.whole:  # read unthrottled: it measures the link
                read = min(reader.size, reader.link_bytes)
                self.speed.finished(reader.started, now, read)
        if reader.whole:
            return
        # The buffers stay full: reading byte k lets the parent send byte k + prepaid now.
        ahead = reader.prepaid
        due = min(reader.read + ahead, reader.size) - min(before + ahead, reader.size)
        if due > 0:
            await self.take(due, READ, long=0)

    def finish(self, seq: int) -> None:
        """Item ``seq``'s request is over (read or not): the long windows stop holding
        what was not read, counted as landed now (a cut stream sent no more)."""
        reader = self._readers.pop(seq, None)
        if reader is not None:
            self._release(reader, self._clock(), reader.held)

    def _release(self, reader: _Reader, now: float, n: int) -> None:
        n = min(n, reader.held)
        if n <= 0:
            return
        reader.held -= n
        self.window.release(now, n)
        if self._waiters:
            self._arrived.set()  # room may have been made for a waiter held back by it

    async def take(
        self,
        n: float,
        priority: Priority = 0,
        *,
        long: float | None = None,
        held: float = 0.0,
        link_bytes: float = 0.0,
        start: bool = False,
        seq: int | None = None,
    ) -> None:
        """Admit ``n`` bytes on the link (``long`` in the long windows, default ``n``, and
        ``held`` more held there), landing over the time the link takes to carry
        ``link_bytes`` after what it carries already, waiting (by priority, then arrival)
        until every window has room."""
        long = n if long is None else long
        if n <= 0 and long <= 0 and held <= 0:
            return
        now = self._clock()
        if (
            not self._waiters
            and (not start or self._queued(now, held > 0) <= 0)
            and self.window.wait(now, n, long + held) <= 0
        ):
            self._pay(n, long, held, link_bytes, seq)
            return
        paid: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ask = _Ask(n, long, held, link_bytes, start, paid, seq)
        heapq.heappush(self._waiters, (priority, next(self._arrivals), ask))
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve())
        self._arrived.set()
        await paid  # cancelled: the server drops it unpaid

    def _pay(
        self, n: float, long: float, held: float, link_bytes: float, seq: int | None = None
    ) -> None:
        now = self._clock()
        after = span = 0.0
        if link_bytes:
            speed = self.speed.bytes_per_s
            first, last = landing(now, link_bytes, self.speed.lag, speed, self._busy)
            self._busy = last
            if seq is not None:
                self.ends[seq] = last
                self._taken_at[seq] = self.taken + int(n)
                self._firsts[seq] = (first, first > now + self.speed.lag)
            after, span = first - now, last - first
            log.debug("link: %.0f bytes over (%.3f, %.3f] at %.3f", n, after, span, now)
        self.window.record(now, n, span, after=after, long=long)
        self.window.hold(held)
        self.taken += int(n)

    def answered(self, seq: int, now: float) -> None:
        """Item ``seq``'s first bytes arrived at ``now``: its store started then too (the
        mirror starts it with our relay once its parent answers), so its predicted end
        moves by how far the usual lag was off, earlier or later. The usual lag is a
        median: under load (a queue for the mirror's pings of an anonymous parent) it
        runs to seconds that this answer may not have waited. An end set by the link's
        queue moves only later."""
        first = self._firsts.pop(seq, None)
        end = self.ends.get(seq)
        if first is None or end is None:
            return
        predicted, queued = first
        began = max(now, predicted) if queued else now
        self.ends[seq] = end + began - predicted

    def store_done(self, seq: int) -> float | None:
        """When item ``seq``'s store is predicted to have crossed the link, as of now: the
        prediction made at its admission (the link carrying what was admitted one after
        the other), later by the time the link takes for what was admitted after it
        (concurrent transfers share the link: each delays those already running), and
        never after the link's whole predicted queue. None: not admitted, or forgotten."""
        end = self.ends.get(seq)
        if end is None:
            return None
        after = self.taken - self._taken_at.get(seq, self.taken)
        return min(max(end, self._busy), end + after / self.speed.bytes_per_s)

    def forget(self, seq: int) -> float | None:
        """Item ``seq``'s predicted end, forgotten (its request is over)."""
        self._taken_at.pop(seq, None)
        self._firsts.pop(seq, None)
        return self.ends.pop(seq, None)

    def reprioritize(self, update: Callable[[Priority], Priority]) -> None:
        """Give every waiting start the priority ``update`` maps its own to (reads keep
        theirs); see PrioritySlots."""
        self._waiters = [(update(p) if ask.start else p, a, ask) for p, a, ask in self._waiters]
        heapq.heapify(self._waiters)
        self._arrived.set()  # the best waiter may have changed

    async def _serve(self) -> None:
        """Admit the best waiter as soon as it fits; look again on arrivals and releases."""
        while self._waiters:
            ask = self._waiters[0][2]
            if ask.paid.done():  # its taker was cancelled
                heapq.heappop(self._waiters)
                continue
            now = self._clock()
            short, long = self.window.waits(now, ask.n, ask.long + ask.held)
            queued = self._queued(now, ask.held > 0) if ask.start else 0.0
            delay = max(short, long, queued)
            if delay <= 0:
                heapq.heappop(self._waiters)
                self._pay(ask.n, ask.long, ask.held, ask.link_bytes, ask.seq)
                ask.paid.set_result(None)
                continue
            # It waits for the long windows at least as long as a read admitted now stays
            # in the short ones: reads go meanwhile, or as soon as one fits (they only use
            # the short windows, and what the long ones hold for a read only its reading
            # releases). A start that fills a large share of a long window holds no one back when
            # it may be deferred: holding the others back would idle the link for about a
            # window before it, and it goes when the windows drain, at the latest once the
            # rest of the run's work is done (no window after it is then left nearly idle).
            held_back: Callable[[_Ask], bool] | None = None
            if self.defer_big and self._fills_long(ask):
                held_back = self._fills_long
            elif long >= self.window.short_max or (queued > 0 and max(short, long) <= 0):
                held_back = _not_read  # reads only: they add nothing to the link's queue
            if held_back is not None:
                admitted, fits = self._admit_passing(now, held_back)
                if admitted:
                    continue
                delay = min(delay, fits)
            self._arrived.clear()
            nap = asyncio.ensure_future(self._sleep(delay if delay < math.inf else RECHECK))
            arrival = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({nap, arrival}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (nap, arrival):
                    task.cancel()

    def _queued(self, now: float, reads: bool = True) -> float:
        """Seconds until a start may go: the link's predicted queue (what was admitted and
        has not crossed it yet) is at most the first answer's lag plus ``AHEAD``, or
        ``AHEAD_STORED`` for a start with no read to hold (a blob read from storage: the
        long windows hold nothing for it while it waits in the queue)."""
        ahead = AHEAD if reads else AHEAD_STORED
        return max(0.0, self._busy - now - self.speed.lag - ahead)

    def _fills_long(self, ask: _Ask) -> bool:
        return ask.start and ask.long + ask.held > BIG * self.window.long_min

    def _admit_passing(self, now: float, held_back: Callable[[_Ask], bool]) -> tuple[bool, float]:
        """Admit the waiters that fit, best first, but those ``held_back`` says may not pass
        the best one, which waits (a deferred big start passes when it fits), until one
        does not fit (it holds the rest back).
        Returns whether any went, and the seconds until the next would fit (``inf``: none
        may pass)."""
        admitted: list[_Ask] = []
        fits = math.inf
        for _, _, ask in sorted(self._waiters, key=lambda w: (w[0], w[1])):
            if ask.paid.done():
                continue
            wait = self.window.wait(now, ask.n, ask.long + ask.held)
            if ask.start:
                wait = max(wait, self._queued(now, ask.held > 0))
            if held_back(ask):
                # A deferred start fills much of a window: it goes whenever it fits (at a
                # run's start, with the windows still empty), else lets the others pass.
                if held_back != self._fills_long or wait > 0:
                    continue
            elif wait > 0:
                fits = wait
                break
            self._pay(ask.n, ask.long, ask.held, ask.link_bytes, ask.seq)
            ask.paid.set_result(None)
            admitted.append(ask)
        if admitted:
            self._waiters = [w for w in self._waiters if w[2] not in admitted]
            heapq.heapify(self._waiters)
        return bool(admitted), fits


def _not_read(ask: _Ask) -> bool:
    """Not a read's chunk (charged in the short windows only)."""
    return bool(ask.start or ask.long or ask.held)


@contextlib.asynccontextmanager
async def paid_request(
    pacer: LinkPacer | None, item: RunItem, charge: int, priority: Priority, relayed: bool = True
) -> AsyncIterator[None]:
    """Around item's request: pay its cost to ``pacer`` before it starts (nothing to pay:
    at once) and, when it ends, have the link stop holding what it did not read."""
    if pacer is None or not charge:
        yield
        return
    await pacer.start(item, charge, priority, relayed=relayed)
    try:
        yield
    finally:
        pacer.finish(item.seq)


def store_end(pacer: LinkPacer | None, seq: int) -> float | None:
    """When item ``seq``'s bytes (the mirror's background store with them) are predicted
    to have crossed the link (``time.monotonic()``), or None: not paced. Forgotten once
    asked."""
    return None if pacer is None else pacer.forget(seq)


def paced(
    pacer: LinkPacer | None, seq: int, on_bytes: Callable[[int], Awaitable[None]]
) -> Callable[[int], Awaitable[None]]:
    """``on_bytes`` for item ``seq``'s read, paying each chunk to ``pacer`` first."""
    if pacer is None:
        return on_bytes

    async def pay_then(n: int) -> None:
        await pacer.read(seq, n)
        await on_bytes(n)

    return pay_then
