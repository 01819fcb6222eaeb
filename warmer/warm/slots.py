"""A counting semaphore whose waiters are served by priority, not arrival.

Hand-written (asyncio's Semaphore is first come, first served and the PyPI options are
thread-based or unmaintained): the executor queues every item of a run on its mirror's
slots at once, and an item that becomes ready late (the next repository's copy of a shared
blob, which must wait for the mirror to store the previous one) has to go before items that
merely queued earlier, or the run's longest chain ends up last.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# Lower goes first. One queue compares its waiters' priorities with each other, so all of
# them use the same kind: ints, or tuples (the executor's start keys).
Priority = int | tuple[int, ...]


class PrioritySlots:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._free = size
        self._waiters: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._tie = itertools.count()

    @asynccontextmanager
    async def hold(self, priority: Priority) -> AsyncIterator[None]:
        """Hold a slot; among waiters the lowest ``priority`` gets the next free one."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: Priority) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._tie), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            raise

    def reprioritize(self, update: Callable[[Priority], Priority]) -> None:
        """Give every waiter the priority ``update`` maps its own to (a run's start keys
        change when a later part of the plan joins it)."""
        self._waiters = [(update(p), tie, fut) for p, tie, fut in self._waiters]
        heapq.heapify(self._waiters)

    def _release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
