"""TokenBucket on a fake time line: average rate, arrival order, priority, debt."""

from __future__ import annotations

import asyncio

import pytest

from warmer.warm.pacing import TokenBucket

pytestmark = pytest.mark.timeout(10)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def bucket(rate: float, burst: float | None = None) -> tuple[TokenBucket, FakeTime]:
    t = FakeTime()
    return TokenBucket(rate, burst, clock=t.clock, sleep=t.sleep), t


async def test_average_rate_over_many_takes() -> None:
    b, t = bucket(1000.0)
    start = t.now
    for _ in range(100):
        await b.take(100)  # 10 000 bytes at 1000/s
    elapsed = t.now - start
    # The first burst (250) is free; the rest is paid at the rate, never faster.
    assert elapsed == pytest.approx((10_000 - 250 - 100) / 1000, abs=0.11)
    assert b.taken == 10_000


async def test_debt_admits_a_big_item_then_makes_the_next_wait() -> None:
    b, t = bucket(1000.0)
    await b.take(5000)  # bigger than the burst: admitted now, the bucket goes into debt
    assert t.now == 100.0
    await b.take(1)
    # 250 - 5000 = -4750 tokens: the next waits until the debt is paid (>= 4.75 s).
    assert t.now - 100.0 >= 4.75


async def test_waiters_are_served_first_come_first_served() -> None:
    b, _ = bucket(100.0, burst=10)
    order: list[int] = []

    async def worker(i: int) -> None:
        await b.take(50)
        order.append(i)

    tasks = [asyncio.create_task(worker(i)) for i in range(6)]
    await asyncio.gather(*tasks)
    assert order == list(range(6))


async def test_zero_and_bad_rates() -> None:
    b, t = bucket(10.0)
    await b.take(0)
    assert b.taken == 0 and t.now == 100.0
    with pytest.raises(ValueError):
        TokenBucket(0)


async def test_a_better_priority_goes_first_while_others_wait_for_the_debt() -> None:
    b, _ = bucket(100.0, burst=10)
    order: list[str] = []
    await b.take(500)  # in debt for ~5 s

    async def worker(name: str, n: float, priority: int) -> None:
        await b.take(n, priority)
        order.append(name)

    bulk = asyncio.create_task(worker("bulk", 400, priority=5))
    await asyncio.sleep(0)  # the bulk item waits for the debt to clear
    chain = asyncio.create_task(worker("chain", 20, priority=1))
    await asyncio.gather(bulk, chain)
    # The chain item arrived later but is served first, as soon as the debt is paid, and
    # not after the bulk item's own charge (another 4 s).
    assert order == ["chain", "bulk"]
    assert b.taken == 920


async def test_a_cancelled_waiter_is_not_charged() -> None:
    b, _ = bucket(100.0, burst=10)
    await b.take(500)
    waiter = asyncio.create_task(b.take(50))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    await b.take(10)
    assert b.taken == 510


async def test_reprioritize_reorders_the_waiters() -> None:
    b, _ = bucket(100.0, burst=10)
    order: list[str] = []
    await b.take(500)

    async def worker(name: str, priority: tuple[int, int]) -> None:
        await b.take(50, priority)
        order.append(name)

    tasks = [asyncio.create_task(worker(n, (5, i))) for i, n in enumerate(["a", "b", "c"])]
    await asyncio.sleep(0)
    b.reprioritize(lambda p: (1, 2) if p == (5, 2) else p)
    await asyncio.gather(*tasks)
    assert order == ["c", "a", "b"]
