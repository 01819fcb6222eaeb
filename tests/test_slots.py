"""PrioritySlots: bounded, served by priority, cancellation-safe."""

from __future__ import annotations

import asyncio

import pytest

from warmer.warm.slots import PrioritySlots


async def test_waiters_are_served_by_priority_not_arrival() -> None:
    slots = PrioritySlots(1)
    order: list[int] = []
    gate = asyncio.Event()

    async def worker(priority: int) -> None:
        async with slots.hold(priority):
            order.append(priority)
            await gate.wait()

    first = asyncio.create_task(worker(5))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(worker(p)) for p in (9, 7, 1, 3)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *waiters)
    assert order == [5, 1, 3, 7, 9]


async def test_never_more_than_size_at_once() -> None:
    slots = PrioritySlots(3)
    inside = peak = 0

    async def worker(i: int) -> None:
        nonlocal inside, peak
        async with slots.hold(i % 4):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(worker(i) for i in range(40)))
    assert peak == 3 and inside == 0


async def test_a_cancelled_waiter_does_not_leak_its_slot() -> None:
    slots = PrioritySlots(1)
    release = asyncio.Event()

    async def holder() -> None:
        async with slots.hold(0):
            await release.wait()

    h = asyncio.create_task(holder())
    await asyncio.sleep(0)
    doomed = asyncio.create_task(holder())
    await asyncio.sleep(0)
    doomed.cancel()
    release.set()
    await h
    with pytest.raises(asyncio.CancelledError):
        await doomed
    async with asyncio.timeout(1):  # the slot is free again
        async with slots.hold(0):
            pass


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PrioritySlots(0)


async def test_reprioritize_reorders_the_waiters() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def worker(name: str, priority: tuple[int, int]) -> None:
        async with slots.hold(priority):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(worker("first", (0, 0)))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(worker(n, (5, i))) for i, n in enumerate(["a", "b", "c"])]
    await asyncio.sleep(0)
    # "c" became urgent (a later part of the plan made it the head of a chain).
    slots.reprioritize(lambda p: (1, 2) if p == (5, 2) else p)
    gate.set()
    await asyncio.gather(first, *waiters)
    assert order == ["first", "c", "a", "b"]
