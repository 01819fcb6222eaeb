"""A token bucket for bytes per second, shared by every worker on one link.

Hand-written because the rate limiters on PyPI count requests, not a stream of byte
amounts of very different sizes, and the executor needs to charge a request its cost on the
parent link *before* it starts (a cold blob makes the mirror pull it at full speed).

Semantics: the bucket holds at most ``burst`` tokens (default: a quarter second of rate) and
refills continuously. ``take(n)`` waits until the bucket is not in debt, then subtracts
``n`` (possibly going into debt): a large blob is admitted when the link has been idle
long enough to pay for the previous one, so the average over any window stays at the rate.
Waiters are served by their ``priority`` (lowest first), then in arrival order, and a
waiter that arrives while another is waiting for the debt to clear goes first if its
priority is better: nobody holds a place while merely waiting (the next copy of a shared
blob, on the run's longest chain, must not wait behind a big blob's turn *and* its debt).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable

from warmer.warm.slots import Priority


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate / 4)
        self._clock = clock
        self._sleep = sleep  # injectable with the clock, so tests run on a fake time line
        self._tokens = self.burst
        self._stamp = clock()
        # (priority, arrival, amount, future): served by one task, best first.
        self._waiters: list[tuple[Priority, int, float, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._arrived = asyncio.Event()
        self._server: asyncio.Task[None] | None = None
        self.taken = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, n: float) -> float:
        """Seconds until ``take(n)`` would be admitted (0 when now)."""
        self._refill()
        need = min(n, self.burst) - self._tokens
        # Below a millionth of a byte it is float rounding: waiting for it could spin forever
        # when the clock's resolution cannot represent the delay.
        return need / self.rate if need > 1e-6 else 0.0

    def _pay(self, n: float) -> None:
        self._tokens -= n
        self.taken += int(n)

    async def take(self, n: float, priority: Priority = 0) -> None:
        """Charge ``n`` tokens, waiting (by priority, then arrival) until the bucket can pay."""
        if n <= 0:
            return
        if not self._waiters and self.wait_time(n) <= 0:
            self._pay(n)
            return
        paid: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), n, paid))
        if self._server is None or self._server.done():
            self._server = asyncio.create_task(self._serve())
        self._arrived.set()
        await paid  # cancelled: the server drops it unpaid

    def reprioritize(self, update: Callable[[Priority], Priority]) -> None:
        """Give every waiter the priority ``update`` maps its own to; see PrioritySlots."""
        self._waiters = [(update(p), a, n, paid) for p, a, n, paid in self._waiters]
        heapq.heapify(self._waiters)
        self._arrived.set()  # the best waiter may have changed

    async def _serve(self) -> None:
        """Admit the best waiter as soon as the bucket can pay it; look again on arrivals."""
        while self._waiters:
            _, _, n, paid = self._waiters[0]
            if paid.done():  # its taker was cancelled
                heapq.heappop(self._waiters)
                continue
            delay = self.wait_time(n)
            if delay <= 0:
                heapq.heappop(self._waiters)
                self._pay(n)
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
