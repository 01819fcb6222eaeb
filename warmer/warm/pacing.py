"""Pacing of a mirror's parent link: the bytes of every sliding window stay within the cap.

What a request costs the parent link is modelled in *time*, not only in bytes. A cold blob
through CNCF distribution 2.8 crosses the link twice (``parent_cost``): once in the
mirror's background store, which starts with the request and runs at the link's full
speed whatever we do, and once in the copy streamed to us, which our reads can throttle
(except the part the mirror and the sockets buffer ahead of our reads, ``READ_AHEAD``).
So a request is charged its *lump* (the background store and the read-ahead) when it
starts, spread over the time the link takes to carry it (the link's speed is learnt
from the first transfers, read unthrottled: ``LinkSpeed``), and the rest of our read
chunk by chunk as it arrives.

:class:`LinkWindows` (pure: times are passed in) admits bytes so that every sliding
window of ``WINDOWS`` carries at most ``rate x (window + burst)``, and it
does so exactly for what it was told: each window counts what was admitted in it, lumps
in pieces over their predicted time on the link. Allowances: 1 s windows 1.5 x the cap,
5 s and 10 s windows 1.02 and 1.01 x the cap. A lump larger than a window's allowance (a
single blob whose background store alone exceeds it) is the one unavoidable excess: it
starts only when that window is empty, so such a window holds that object and nothing else.
:class:`LinkPacer` is its asynchronous face, shared by every worker on one link: waiters
are served by ``priority`` (lowest first, then arrival), starts before reads, and a
waiter that cannot fit holds the others back (a big lump would starve otherwise).

Hand-written because the rate limiters on PyPI count requests or enforce one window,
not byte amounts of very different sizes over several windows at once.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from warmer.store.ledger import RunItem
from warmer.warm.slots import Priority

log = logging.getLogger("warmer.warm.pacing")

# The sliding windows held within the cap: (window, burst), both in seconds: a window may
# carry rate x (window + burst). 1 s windows get a wider burst: one blob's lump (its
# background store and read-ahead) is often bigger than a tenth of a second of the cap.
# The longer ones keep a margin for what the model cannot see (when exactly the parent
# sends what it was asked for).
WINDOWS: tuple[tuple[float, float], ...] = ((1.0, 0.5), (5.0, 0.1), (10.0, 0.1))
# Bytes of our read that the sockets between the parent and us (the mirror's two, ours)
# take in at link speed whatever our pace: measured on Linux loopback through distribution
# 2.8 with autotuned buffers, 10 MB on a fresh connection and up to 17 MB on one that
# carried fast reads before. Reads shorter than this are part of the lump.
READ_AHEAD = 20 << 20
PIECE = 1 << 20  # a lump is recorded in pieces of at most this many bytes ...
PIECE_S = 0.05  # ... and at most this many seconds of its time on the link
PROBE_MIN = 4 << 20  # link bytes (twice) of a whole read that measures the link's speed
MAX_LAG = 1.0  # seconds: the longest first answer counted in a burst's predicted time
READ: Priority = (1 << 30,)  # reads queue behind every start (whose keys are tuples)


class LinkWindows:
    """The bytes admitted on one link, and when more may go (pure: ``now`` is passed in).

    An admission of ``n`` bytes at ``now`` spanning ``span`` seconds is recorded as
    pieces ending over ``(now, now + span]``; a window ``(t - w, t]`` counts every piece
    that ends after ``t - w``, pieces still to come too: counted early, a lump cannot be
    joined by another in a window it may still reach (conservative: on a link no faster
    than the cap, it under-admits a little).
    """

    def __init__(self, rate: float, windows: tuple[tuple[float, float], ...] = WINDOWS):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.windows = tuple(sorted(w for w, _ in windows))
        self.allowance = {w: self.rate * (w + burst) for w, burst in windows}
        self._pieces: list[tuple[float, float]] = []  # (end, bytes), sorted by end
        self._first = {w: 0 for w in self.windows}  # index of the first piece in each window
        self._sums = {w: 0.0 for w in self.windows}

    def _add(self, end: float, n: float) -> None:
        i = bisect.bisect_right(self._pieces, (end, n))
        self._pieces.insert(i, (end, n))
        for w in self.windows:
            if i < self._first[w]:
                self._first[w] += 1  # it had left that window already
            else:
                self._sums[w] += n

    def _expire(self, now: float) -> None:
        for w in self.windows:
            i, s = self._first[w], self._sums[w]
            while i < len(self._pieces) and self._pieces[i][0] <= now - w:
                s -= self._pieces[i][1]
                i += 1
            self._first[w], self._sums[w] = i, max(0.0, s)
        drop = self._first[self.windows[-1]]
        if drop > 4096:  # every window has moved past them
            del self._pieces[:drop]
            self._first = {w: i - drop for w, i in self._first.items()}

    def in_window(self, now: float, window: float) -> float:
        self._expire(now)
        return self._sums[window]

    def wait(self, now: float, n: float) -> float:
        """Seconds from ``now`` until ``n`` bytes fit in every window (0: now)."""
        self._expire(now)
        until = now
        for w in self.windows:
            allowed = self.allowance[w]
            # Too big for the window on its own: it goes alone.
            over = self._sums[w] + min(n, allowed) - allowed
            if over <= 1e-6:
                continue
            shed, i = 0.0, self._first[w]
            while i < len(self._pieces):
                shed += self._pieces[i][1]
                if shed >= over - 1e-6:
                    break
                i += 1
            end = self._pieces[min(i, len(self._pieces) - 1)][0]
            until = max(until, end + w + 1e-6)
        return until - now

    def record(self, now: float, n: float, span: float = 0.0) -> None:
        """Admit ``n`` bytes at ``now``, on the link over the next ``span`` seconds."""
        if n <= 0:
            return
        self._expire(now)
        k = max(1, math.ceil(n / PIECE), math.ceil(span / PIECE_S))
        for j in range(k):
            self._add(now + span * (j + 1) / k, n / k)


class LinkSpeed:
    """The link's speed, learnt from the reads that ran unthrottled beside the mirror's
    store (those the read-ahead takes whole): from our
    first byte of a request to our last, the link carried the rest of its cost (both
    copies flow side by side) and that of every such request read within that time. The
    fastest observed counts, never below ``floor`` (the cap: a link slower than the cap
    holds it by itself). Traffic not counted (paced reads) or a busy client only make it
    measure less than the link's speed, which predicts longer bursts: the safe side.
    ``answered`` learns the lag between asking and the first bytes (the median counts)."""

    def __init__(self, floor: float = 0.0) -> None:
        self.floor = floor
        self.bytes_per_s: float | None = None
        self.observed = 0
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=64)
        self._lags: deque[float] = deque(maxlen=32)

    def finished(self, started: float, ended: float, link_bytes: float) -> None:
        """A request that cost the link ``link_bytes`` ran from ``started`` to ``ended``."""
        self._recent.append((started, ended, link_bytes))
        if link_bytes < 2 * PROBE_MIN or ended <= started:
            return  # short transfers measure the buffers on the way, not the link
        nested = sum(b for s, e, b in self._recent if s >= started and e <= ended)
        self.observed += 1
        speed = max(nested / (ended - started), self.floor)
        if self.bytes_per_s is None or speed > self.bytes_per_s * 1.05:
            self.bytes_per_s = speed
            log.info("parent link: measured %.1f MB/s", speed / 1e6)

    def answered(self, seconds: float) -> None:
        """A request's first bytes came ``seconds`` after it was admitted."""
        self._lags.append(min(seconds, MAX_LAG))

    def span(self, n: float) -> float:
        """Seconds until the link has carried ``n`` bytes asked for now: the slowest recent
        first answer, then ``n`` at the measured speed (all at once while unknown)."""
        lag = statistics.median(self._lags) if self._lags else 0.0
        return lag + (n / self.bytes_per_s if self.bytes_per_s else 0.0)


@dataclass(frozen=True)
class Charge:
    """How a request's cost on the link is paid: ``lump`` when it starts, ``paced`` as our
    read arrives (after its first ``prepaid`` bytes). A read with nothing paced runs
    unthrottled: it measures the link."""

    lump: int
    paced: int
    prepaid: int


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
    read: int = 0
    first: float = 0.0  # when its first bytes came
    first_bytes: int = 0


class LinkPacer:
    """The pacing of one parent link, shared by every worker on it (see the module)."""

    def __init__(
        self,
        rate: float,
        windows: tuple[tuple[float, float], ...] = WINDOWS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.window = LinkWindows(rate, windows)
        self.rate = self.window.rate
        self.speed = LinkSpeed(floor=self.rate)
        self._clock = clock
        self._sleep = sleep  # injectable with the clock, so tests run on a fake time line
        # (priority, arrival, bytes, span, is_start, future): served best first.
        self._waiters: list[tuple[Priority, int, float, float, bool, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._arrived = asyncio.Event()
        self._server: asyncio.Task[None] | None = None
        self._readers: dict[int, _Reader] = {}
        self.taken = 0

    async def start(self, item: RunItem, charge: int, priority: Priority) -> None:
        """Pay what ``item``'s request costs the link up front (its lump); its read is
        paced afterwards by :meth:`read`."""
        size = item.size if item.kind == "blob" else 0
        split = split_charge(size, charge)
        await self.take(split.lump, priority, span=self.speed.span(split.lump), start=True)
        if size and charge:
            reader = _Reader(size, split.prepaid, split.paced == 0, charge, self._clock())
            self._readers[item.seq] = reader

    async def read(self, seq: int, n: int) -> None:
        """``n`` more bytes of item ``seq``'s read arrived: pay for what the parent sends in
        their place (the buffers between it and us, ``prepaid`` bytes, stay full)."""
        reader = self._readers.get(seq)
        if reader is None:
            return  # nothing of it crosses the link, or all of it was paid
        before = reader.read
        reader.read += n
        if not before:
            reader.first, reader.first_bytes = self._clock(), n
            self.speed.answered(reader.first - reader.started)
        if reader.read >= reader.size:
            del self._readers[seq]
            if reader.whole:  # read unthrottled: it measures the link
                # Both copies flow side by side from our first byte to our last.
                rest = reader.link_bytes * (reader.size - reader.first_bytes) / reader.size
                self.speed.finished(reader.first, self._clock(), rest)
        if reader.whole:
            return
        # The buffers stay full: reading byte k lets the parent send byte k + prepaid now.
        ahead = reader.prepaid
        due = min(reader.read + ahead, reader.size) - min(before + ahead, reader.size)
        if due > 0:
            await self.take(due, READ)

    async def take(
        self, n: float, priority: Priority = 0, *, span: float = 0.0, start: bool = False
    ) -> None:
        """Admit ``n`` bytes on the link over ``span`` seconds, waiting (by priority, then
        arrival) until every window has room."""
        if n <= 0:
            return
        if not self._waiters and self.window.wait(self._clock(), n) <= 0:
            self._pay(n, span)
            return
        paid: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), n, span, start, paid))
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve())
        self._arrived.set()
        await paid  # cancelled: the server drops it unpaid

    def _pay(self, n: float, span: float) -> None:
        if span or n > PIECE:
            log.debug("link: %.0f bytes over %.3fs at %.3f", n, span, self._clock())
        self.window.record(self._clock(), n, span)
        self.taken += int(n)

    def reprioritize(self, update: Callable[[Priority], Priority]) -> None:
        """Give every waiting start the priority ``update`` maps its own to (reads keep
        theirs); see PrioritySlots."""
        self._waiters = [
            (update(p) if s else p, a, n, span, s, paid) for p, a, n, span, s, paid in self._waiters
        ]
        heapq.heapify(self._waiters)
        self._arrived.set()  # the best waiter may have changed

    async def _serve(self) -> None:
        """Admit the best waiter as soon as it fits; look again on arrivals."""
        while self._waiters:
            _, _, n, span, _, paid = self._waiters[0]
            if paid.done():  # its taker was cancelled
                heapq.heappop(self._waiters)
                continue
            delay = self.window.wait(self._clock(), n)
            if delay <= 0:
                heapq.heappop(self._waiters)
                self._pay(n, span)
                paid.set_result(None)
                continue
            self._arrived.clear()
            nap = asyncio.ensure_future(self._sleep(delay))
            arrival = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({nap, arrival}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (nap, arrival):
                    task.cancel()


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
