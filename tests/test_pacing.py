"""The link pacer on a fake time line: sliding windows within the cap, lumps, reads, order."""

from __future__ import annotations

import asyncio
import heapq
import math
import random

import pytest

from warmer.store.ledger import RunItem
from warmer.warm.linkwindows import EMPTY, LinkWindows, landing
from warmer.warm.pacing import (
    AHEAD,
    PROBE_MIN,
    READ,
    READ_AHEAD,
    Charge,
    LinkPacer,
    LinkSpeed,
    paid_request,
    split_charge,
    store_end,
)
from warmer.warm.policy import busy_after_read
from warmer.warm.slots import Priority

pytestmark = pytest.mark.timeout(30)

MB = 1_000_000


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def pacer(rate: float) -> tuple[LinkPacer, FakeTime]:
    t = FakeTime()
    return LinkPacer(rate, clock=t.clock, sleep=t.sleep), t


def peak(events: list[tuple[float, float]], window: float) -> float:
    """The most bytes of ``events`` (time, bytes) in any window ``[t, t + window)``."""
    events = sorted(events)
    best, j, total = 0.0, 0, 0.0
    for t, n in events:
        total += n
        while events[j][0] <= t - window:
            total -= events[j][1]
            j += 1
        best = max(best, total)
    return best


def fits(w: LinkWindows, now: float, n: float) -> float:
    """When ``n`` bytes fit, looking again as often as ``wait`` says (as the pacer does)."""
    while (delay := w.wait(now, n)) > 0:
        now += delay
    return now


def blob(seq: int, size: int) -> RunItem:
    return RunItem(
        run_id=1, seq=seq, mirror="central", tier=0, image="i", kind="blob",
        upstream_repository="r",
        repository="r", reference=f"sha256:{seq:064x}", digest=f"sha256:{seq:064x}",
        size=size, parent_cost=2 * size,
    )  # fmt: skip


def test_windows_hold_every_sliding_window_with_lumps_of_any_size() -> None:
    rng = random.Random(7)
    rate = 20 * MB
    w = LinkWindows(rate)
    now, admitted = 0.0, []
    biggest = 0.0
    for _ in range(400):
        n = min(30 * MB, rng.lognormvariate(13.5, 1.4))  # ~100 kB .. 30 MB, heavy-tailed
        now = fits(w, now, n)
        w.record(now, n)  # all at once: the worst case for every window
        admitted.append((now, n))
        biggest = max(biggest, n)
    for window, allowed in w.allowance.items():
        # Within the allowance, except a single object bigger than it, which went alone.
        assert peak(admitted, window) <= max(allowed, biggest) * (1 + 1e-9)
    assert peak(admitted, 10.0) <= w.allowance[10.0] * (1 + 1e-9)
    # and not slower than the cap: the mean over the run is close to the rate
    assert sum(n for _, n in admitted) / now >= 0.9 * rate


def test_a_lump_bigger_than_a_window_goes_alone() -> None:
    rate = 10 * MB
    w = LinkWindows(rate)
    w.record(0.0, 2 * MB)
    # 30 MB is more than a 1 s window allows (20 MB): that window must be empty first.
    assert fits(w, 0.0, 30 * MB) == pytest.approx(1.0, abs=0.01)
    w.record(1.0, 30 * MB)
    # Nothing joins it while it fills a 1 s window beyond the allowance ...
    assert fits(w, 1.5, 1) == pytest.approx(2.0, abs=0.01)
    # ... and the 5 s window (51.5 MB) takes the rest only as it allows.
    assert fits(w, 2.0, 25 * MB) == pytest.approx(6.0, abs=0.01)  # when the 30 MB leave it


def test_a_lump_bigger_than_a_window_is_not_starved_by_small_requests() -> None:
    w = LinkWindows(10 * MB)
    w.record(0.0, 2 * MB)
    now = 0.0
    # Manifest requests keep coming (2 kB every 50 ms): the 1 s window is never empty, but
    # holds next to nothing once the 2 MB have left it, and the 30 MB lump goes then.
    while w.wait(now, 30 * MB) > 0 and now < 10.0:
        w.record(now, 2_000)
        now += 0.05
    assert now == pytest.approx(1.0, abs=0.06)
    assert w.in_window(now, 1.0) <= EMPTY * w.allowance[1.0]


def test_a_lump_spread_over_its_time_on_the_link_counts_in_every_window_it_overlaps() -> None:
    a, b = LinkWindows(10 * MB), LinkWindows(10 * MB)
    a.record(0.0, 12 * MB)  # all at once
    b.record(0.0, 12 * MB, span=0.5)  # over half a second
    # Its pieces still to come count in the windows they will reach.
    assert a.in_window(0.0, 1.0) == b.in_window(0.0, 1.0) == 12 * MB
    assert a.in_window(0.9, 1.0) == b.in_window(0.9, 1.0) == 12 * MB
    assert a.in_window(1.2, 1.0) == 0
    assert 0 < b.in_window(1.2, 1.0) < 12 * MB  # its last bytes are still in that window
    # Another lump fits beside the first only where the first's pieces leave room.
    c = LinkWindows(10 * MB)
    c.record(0.0, 15 * MB, span=1.0)
    assert fits(c, 0.0, 15 * MB) > 0.5


def test_split_charge() -> None:
    # Nothing read through the link: the whole cost is a lump (manifests, tags).
    assert split_charge(0, 5000) == Charge(5000, 0, 0)
    # A read the buffers on the way take whole: all of it up front, read unthrottled.
    assert split_charge(4 * MB, 8 * MB) == Charge(8 * MB, 0, 4 * MB)
    # A bigger one: the background store and the read-ahead up front, the rest paced.
    big = 3 * READ_AHEAD
    assert split_charge(big, 2 * big) == Charge(big + READ_AHEAD, big - READ_AHEAD, READ_AHEAD)
    # A mirror that fetches once (multiplicity 1): only our read crosses the link.
    assert split_charge(big, big) == Charge(READ_AHEAD, big - READ_AHEAD, READ_AHEAD)


def test_link_speed_from_whole_reads() -> None:
    s = LinkSpeed(floor=10 * MB)
    assert s.bytes_per_s == 10 * MB and s.lag == 0.0  # unknown: the floor, no lag
    s.finished(0.0, 0.001, PROBE_MIN - 1)  # too short: it measures the round trip, not the link
    assert s.measured is None
    s.finished(1.0, 1.2, 10 * MB)  # 50 MB/s, and inside the next one's time ...
    s.finished(1.0, 1.4, 30 * MB)  # ... counted with it: (10 + 30) MB read in 0.4 s
    assert s.bytes_per_s == pytest.approx(75 * MB)  # the median of (50, 100)
    s.finished(5.0, 5.1, 30 * MB)  # a burst of buffers: faster than the link ...
    s.finished(6.0, 6.4, 24 * MB)
    assert s.bytes_per_s == pytest.approx(80 * MB)  # ... of (50, 100, 300, 60)
    s.finished(7.0, 7.4, 40 * MB)
    assert s.bytes_per_s == pytest.approx(100 * MB)  # ... of (50, 100, 300, 60, 100)
    s.answered(0.05)
    s.answered(0.05)
    s.answered(3.0)  # the median counts, and at most MAX_LAG
    assert s.lag == pytest.approx(0.05)
    t = LinkSpeed(floor=10 * MB)
    t.finished(0.0, 10.0, 20 * MB)  # slower than the cap: the cap is the floor
    assert t.bytes_per_s == 10 * MB


def test_the_link_speed_log_says_what_pacing_uses(caplog: pytest.LogCaptureFixture) -> None:
    # A read beside others measures less than the link: the log must not read as "the
    # link is slow" when pacing goes on predicting bursts at the cap.
    t = LinkSpeed(floor=40e6)
    with caplog.at_level("INFO", logger="warmer.warm.pacing"):
        t.finished(0.0, 2.0, 12e6)
    assert "reads measured at 6.0 MB/s; bursts predicted at 40.0 MB/s" in caplog.text


def test_landing_queues_behind_what_the_link_carries() -> None:
    # An idle link: after the first answer, at the link's speed.
    assert landing(10.0, 50 * MB, 0.1, 100 * MB, busy=0.0) == pytest.approx((10.1, 10.6))
    # A busy one: after what it was given before (a busy link delivers the same bytes by
    # the same time whether it carries them one after the other or side by side).
    assert landing(10.0, 50 * MB, 0.1, 100 * MB, busy=11.0) == pytest.approx((11.0, 11.5))


def test_a_read_is_held_by_the_long_windows_until_it_is_read() -> None:
    rate = 10 * MB
    w = LinkWindows(rate)
    allowed = w.allowance[5.0]  # 51.5 MB
    # A start: its store (20 MB) spread on the link, its read (20 MB) held in the long
    # windows, its lump (store and read-ahead, here the whole read) in the short one.
    w.record(0.0, 40 * MB, 0.4, after=0.1, long=20 * MB)
    w.hold(20 * MB)
    assert w.in_window(0.0, 1.0) == pytest.approx(40 * MB)
    assert w.in_window(0.0, 5.0) == w.in_window(0.0, 10.0) == pytest.approx(40 * MB)
    # The held bytes do not leave the long windows with time ...
    assert w.in_window(30.0, 5.0) == pytest.approx(20 * MB)
    # ... so what does not fit beside them waits for the read: no time is enough.
    assert w.wait(30.0, 1 * MB, long=allowed - 19 * MB) == math.inf
    assert w.wait(30.0, 1 * MB, long=allowed - 21 * MB) == 0  # what fits beside them goes
    # Read: they count as landed when read, and leave the window a window later.
    w.release(31.0, 20 * MB)
    assert w.in_window(31.0, 5.0) == pytest.approx(20 * MB)
    assert w.wait(31.0, 1 * MB, long=allowed - 19 * MB) == pytest.approx(5.0, abs=1e-3)
    assert w.in_window(36.1, 5.0) == 0
    # Reads are charged in the short windows only.
    w.record(40.0, 5 * MB, long=0)
    assert w.in_window(40.0, 1.0) == 5 * MB and w.in_window(40.0, 5.0) == 0


def test_long_windows_hold_when_the_buffers_take_every_read_whole() -> None:
    """Whatever the buffers between the parent and us take in (here: every read at once,
    the moment the link has carried it, however slowly we read it), the bytes landing
    in every long window stay within its allowance, on a link faster than assumed."""
    rng = random.Random(11)
    rate, true_speed = 20 * MB, 100 * MB
    w = LinkWindows(rate)
    lag, speed = 0.05, 80 * MB  # learnt: a lower bound of the link's speed
    now, busy, true_busy = 0.0, 0.0, 0.0
    landed: list[tuple[float, float]] = []
    reads: list[tuple[float, float]] = []  # (read at, bytes): releases still to come
    for _ in range(300):
        size = int(min(45 * MB, rng.lognormvariate(14.5, 1.2)))
        split = split_charge(size, 2 * size)
        while True:
            while reads and reads[0][0] <= now:
                at, n = heapq.heappop(reads)
                w.release(at, n)
            delay = w.wait(now, split.lump, long=split.store + split.read)
            if delay <= 0:
                break
            now = min(now + delay, reads[0][0] if reads else math.inf)
        first, last = landing(now, 2 * size, lag, speed, busy)
        busy = last
        w.record(now, split.lump, last - first, after=first - now, long=split.store)
        w.hold(split.read)
        # The truth: both copies land together at the true speed after the true lag ...
        t_first = max(now + 0.03, true_busy)
        true_busy = t_first + 2 * size / true_speed
        landed += [
            (t_first + (true_busy - t_first) * (j + 1) / 20, 2 * size / 20) for j in range(20)
        ]
        # ... and we read our copy slowly (paced), up to 3 s after it all landed.
        heapq.heappush(reads, (true_busy + rng.uniform(0.0, 3.0), split.read))
    for window in (5.0, 10.0):
        assert peak(landed, window) <= w.allowance[window] * (1 + 1e-9)
    # and not idle (reads held 1.5 s past their landing on average cost a quarter here)
    assert sum(n for _, n in landed) / true_busy >= 0.6 * rate


async def test_reads_are_paced_beyond_the_read_ahead() -> None:
    p, t = pacer(10 * MB)
    small, big = blob(1, 6 * MB), blob(2, 3 * READ_AHEAD)
    await p.start(small, small.parent_cost, (1, 0, 0, 1))
    assert p.taken == 12 * MB  # whole: paid up front
    for _ in range(24):
        t.now += 0.005
        await p.read(1, MB // 4)
    assert p.taken == 12 * MB  # its read is not paid twice ...
    assert p.speed.bytes_per_s is not None and p.speed.bytes_per_s > 10 * MB  # ... it measured
    t.now += 20
    await p.start(big, big.parent_cost, (1, 0, 0, 2))
    lump = big.size + READ_AHEAD
    assert p.taken == 12 * MB + lump
    before = t.now
    chunk = 1 << 18
    for _ in range(big.size // chunk):
        await p.read(2, chunk)
    assert p.taken == 12 * MB + 2 * big.size  # the rest was paid as it was read ...
    assert t.now > before  # ... after waiting for room
    # and the last READ_AHEAD bytes were read for free: the parent had sent them already.


async def test_a_start_waiting_for_a_held_read_lets_that_read_go() -> None:
    p, t = pacer(10 * MB)
    big, small = blob(1, 3 * READ_AHEAD), blob(2, 6 * MB)
    await p.start(big, big.parent_cost, (1, 0, 0, 1))  # alone: more than a 5 s window
    assert p.window.in_window(t.now, 5.0) == pytest.approx(2 * big.size)  # store + held read
    counted: list[float] = []

    async def start_small() -> None:
        await p.start(small, small.parent_cost, (1, 0, 0, 2))
        counted.append(p.window.in_window(t.now, 5.0))

    waiter = asyncio.create_task(start_small())
    await asyncio.sleep(0)
    # The small start waits for the long windows to stop holding (enough of) the big read;
    # the read's chunks, behind it by priority, still go: held back, they would never
    # release it. (Before, this loop never ended.)
    chunk = 1 << 18
    for _ in range(big.size // chunk):
        await p.read(1, chunk)
    await waiter
    assert counted[0] <= p.window.allowance[5.0] + 1  # and it went when it fitted


async def test_paid_request_releases_what_was_not_read() -> None:
    p, t = pacer(10 * MB)
    item = blob(1, 8 * MB)
    async with paid_request(p, item, item.parent_cost, (1,)):
        await p.read(1, 2 * MB)  # then the stream is cut
    # Counted as landed now (a cut stream sends no more), no longer held ...
    assert p.window.in_window(t.now, 5.0) == pytest.approx(16 * MB)
    assert p.window.wait(t.now, 1, long=60 * MB) < math.inf
    t.now += 12  # its store's time on the link (at the cap while unmeasured), a window
    assert p.window.in_window(t.now, 10.0) == 0  # ... and gone a window later
    async with paid_request(None, item, item.parent_cost, (1,)):  # no cap: nothing to pay
        pass
    async with paid_request(p, item, 0, (1,)):  # nothing crosses the link
        pass
    assert p.taken == 16 * MB


async def admissions(
    p: LinkPacer, t: FakeTime, asks: list[tuple[str, float, Priority]]
) -> list[tuple[str, float]]:
    """Start ``asks`` (name, bytes, priority) at once, in that order (on the fake time
    line a nap moves the clock at once: all wait before the pacer looks); when each was
    admitted."""
    went: list[tuple[str, float]] = []

    async def go(name: str, n: float, priority: Priority) -> None:
        await p.take(n, priority, start=True)
        went.append((name, t.now))

    await asyncio.gather(*(go(name, n, priority) for name, n, priority in asks))
    return went


@pytest.mark.parametrize("defer", [True, False])
async def test_a_start_that_fills_a_long_window_holds_no_one_back_when_deferred(
    defer: bool,
) -> None:
    t = FakeTime()
    p = LinkPacer(10 * MB, clock=t.clock, sleep=t.sleep, defer_big=defer)
    await p.take(20 * MB)
    asks: list[tuple[str, float, Priority]] = [("big", 40 * MB, (1,))]
    asks += [(f"s{i}", 5 * MB, (2, i)) for i in range(4)]
    went = [name for name, _ in await admissions(p, t, asks)]
    # 40 MB need the 5 s window (51.5 MB) nearly empty: held to its turn, the others wait
    # for it (the link idles until the window drains); deferred, it goes when it fits.
    assert went == (["s0", "s1", "s2", "s3", "big"] if defer else ["big", "s0", "s1", "s2", "s3"])


async def test_a_start_needing_a_quarter_of_a_long_window_lets_the_others_pass() -> None:
    t = FakeTime()
    p = LinkPacer(10 * MB, clock=t.clock, sleep=t.sleep, defer_big=True)
    await p.take(40 * MB)
    # 15 MB (29 % of the 5 s window's 51.5 MB) do not fit beside the 40 MB: holding the
    # others back, the link would idle until the window drained; they pass meanwhile.
    asks: list[tuple[str, float, Priority]] = [("big", 15 * MB, (1,))]
    asks += [(f"s{i}", 2 * MB, (2, i)) for i in range(3)]
    went = [name for name, _ in await admissions(p, t, asks)]
    assert went == ["s0", "s1", "s2", "big"]


async def test_starts_go_before_reads_and_by_priority() -> None:
    p, _ = pacer(1 * MB)
    await p.take(3 * MB)  # fill the windows
    order: list[str] = []

    async def go(name: str, priority: Priority, start: bool) -> None:
        await p.take(100_000, priority, start=start)
        order.append(name)

    tasks = [asyncio.create_task(go("read", READ, False))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(go("bulk", (1, 0, 0, 5), True)))
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(go("light", (0, 0, 0, 9), True)))
    await asyncio.gather(*tasks)
    assert order == ["light", "bulk", "read"]


async def test_a_cancelled_waiter_is_not_charged() -> None:
    p, _ = pacer(1 * MB)
    await p.take(3 * MB)
    waiter = asyncio.create_task(p.take(500_000, (1,)))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await p.take(10, (1,))
    assert p.taken == 3 * MB + 10


async def test_reprioritize_reorders_starts_only() -> None:
    p, _ = pacer(1 * MB)
    order: list[str] = []
    await p.take(3 * MB)

    async def worker(name: str, priority: tuple[int, ...], start: bool) -> None:
        await p.take(100_000, priority, start=start)
        order.append(name)

    tasks = [asyncio.create_task(worker(n, (5, i), True)) for i, n in enumerate(["a", "b", "c"])]
    tasks.append(asyncio.create_task(worker("r", (2, 0), False)))
    await asyncio.sleep(0)
    p.reprioritize(lambda q: (1, 2) if q == (5, 2) else (9, 9))
    await asyncio.gather(*tasks)
    assert order == ["c", "r", "a", "b"]


def test_bad_rate() -> None:
    with pytest.raises(ValueError):
        LinkWindows(0)


async def test_a_start_waits_until_the_links_queue_is_short() -> None:
    """On a link no faster than the cap, a start goes when what was admitted before it is
    predicted to have nearly crossed the link (its lag plus AHEAD), not as soon as the
    windows have room: admitted early, its read would be held while it waits."""
    p, t = pacer(10 * MB)
    began = t.now
    await p.start(blob(1, 4 * MB), 8 * MB, (0,))  # 0.8 s on the link at the floor speed
    assert t.now == began and store_end(p, 1) == pytest.approx(began + 0.8)
    await p.start(blob(2, 4 * MB), 8 * MB, (1,))  # the windows have room for it at once
    assert t.now - began == pytest.approx(0.8 - AHEAD, abs=0.02)
    assert store_end(p, 2) == pytest.approx(began + 1.6, abs=0.02)  # queued behind it
    assert store_end(p, 2) is None and store_end(None, 2) is None  # asked once


async def test_a_stores_predicted_end_moves_with_its_answer() -> None:
    """The store starts when the mirror's parent answers (with our relay): the usual lag
    (a median of recent answers, seconds under a queue for an anonymous parent's pings)
    predicts that start at admission, and the item's own answer corrects it, earlier or
    later. A start set by the link's queue, not by the lag, does not move earlier."""
    p, t = pacer(10 * MB)
    for _ in range(5):
        p.speed.answered(1.0)  # the usual lag: 1 s
    began = t.now
    await p.start(blob(1, 1 * MB), 2 * MB, (0,))  # 0.2 s on the link after the lag
    assert p.store_done(1) == pytest.approx(began + 1.2)
    await p.start(blob(2, 1 * MB), 2 * MB, (1,))  # after blob 1 on the link (1.2 s)
    assert p.store_done(1) == pytest.approx(began + 1.4)  # they share the link
    assert p.store_done(2) == pytest.approx(began + 1.4)
    t.now = began + 0.1
    await p.read(1, 1000)  # answered after 0.1 s, not 1 s
    assert p.store_done(1) == pytest.approx(began + 0.5)  # 0.1 + 0.2 + blob 2's 0.2
    await p.read(2, 1000)
    assert p.store_done(2) == pytest.approx(began + 1.4)  # the queue set it: kept

    late, t = pacer(10 * MB)
    for _ in range(5):
        late.speed.answered(1.0)
    began = t.now
    await late.start(blob(3, 1 * MB), 2 * MB, (0,))
    t.now = began + 1.5
    await late.read(3, 1000)  # answered half a second later than the usual lag
    assert late.store_done(3) == pytest.approx(began + 1.7)


def test_a_blob_is_busy_until_its_store_has_crossed_the_link() -> None:
    # The read took 1 s and ended at 10; the link carries its store until 13.
    assert busy_after_read(10.0, 1.0, 0.4) == pytest.approx(10.0 + 0.4 + 0.25)
    assert busy_after_read(10.0, 1.0, 0.4, store_end=13.0) == pytest.approx(13.4)
    assert busy_after_read(10.0, 1.0, 0.4, store_end=9.0) == pytest.approx(10.65)


async def test_a_stored_read_is_one_lump_and_its_end_moves_with_what_follows() -> None:
    """A blob read from the mirror's storage (``relayed=False``): its whole charge is the
    store, nothing of it is a read to pace or hold; its predicted end moves later by the
    link's time for what is admitted after it (concurrent stores share the link), never
    past the link's whole queue."""
    p, t = pacer(10 * MB)
    began = t.now
    await p.start(blob(1, 8 * MB), 8 * MB, (0,), relayed=False)
    assert p._readers == {}  # no read of it crosses the link
    assert p.store_done(1) == pytest.approx(began + 0.8)  # at the floor speed (the cap)
    await p.start(blob(2, 4 * MB), 4 * MB, (1,), relayed=False)
    # Blob 2 shares the link with blob 1 from its start: blob 1 ends later by 0.4 s, and
    # no later than everything admitted (blob 2's own predicted end).
    assert p.store_done(1) == pytest.approx(began + 1.2, abs=0.02)
    assert p.store_done(2) == pytest.approx(store_end(p, 2) or 0.0, abs=0.02)
    assert p.store_done(2) is None  # forgotten once its request is over
    assert store_end(p, 1) == pytest.approx(began + 0.8) and p.store_done(1) is None
