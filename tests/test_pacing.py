"""The link pacer on a fake time line: sliding windows within the cap, lumps, reads, order."""

from __future__ import annotations

import asyncio
import random

import pytest

from warmer.store.ledger import RunItem
from warmer.warm.pacing import (
    PROBE_MIN,
    READ,
    READ_AHEAD,
    Charge,
    LinkPacer,
    LinkSpeed,
    LinkWindows,
    split_charge,
)
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
    # 30 MB is more than a 1 s window allows (12 MB): that window must be empty first.
    assert fits(w, 0.0, 30 * MB) == pytest.approx(1.0, abs=0.01)
    w.record(1.0, 30 * MB)
    # Nothing joins it while it fills a 1 s window beyond the allowance ...
    assert fits(w, 1.5, 1) == pytest.approx(2.0, abs=0.01)
    # ... and the 5 s window (52 MB) takes the rest only as it allows.
    assert fits(w, 2.0, 25 * MB) == pytest.approx(6.0, abs=0.01)  # when the 30 MB leave it


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
    c.record(0.0, 10 * MB, span=1.0)
    assert fits(c, 0.0, 10 * MB) > 0.5


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
    assert s.span(10 * MB) == 0.0  # unknown: all at once
    s.finished(0.0, 0.001, PROBE_MIN)  # too short: it measures the buffers, not the link
    assert s.bytes_per_s is None
    s.finished(1.0, 1.2, 10 * MB)  # inside the next one's time: counted with it
    s.finished(1.0, 1.4, 30 * MB)
    assert s.bytes_per_s == pytest.approx(100 * MB)  # (10 + 30) MB in 0.4 s
    s.finished(5.0, 10.0, 20 * MB)  # slower than the cap: the cap is the floor
    assert s.bytes_per_s == pytest.approx(100 * MB)
    s.answered(0.05)
    s.answered(0.05)
    s.answered(3.0)  # the median counts, and at most MAX_LAG
    assert s.span(10 * MB) == pytest.approx(0.05 + 0.1)
    t = LinkSpeed(floor=10 * MB)
    t.finished(0.0, 10.0, 20 * MB)
    assert t.bytes_per_s == 10 * MB


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
