"""A token bucket for bytes per second, shared by every worker on one link.

Hand-written because the rate limiters on PyPI count requests, not a stream of byte
amounts of very different sizes, and the executor needs to charge a request its cost on the
parent link *before* it starts (a cold blob makes the mirror pull it at full speed).

Semantics: the bucket holds at most ``burst`` tokens (default: a quarter second of rate) and
refills continuously. ``take(n)`` waits until the bucket is not in debt, then subtracts
``n`` (possibly going into debt): a large blob is admitted when the link has been idle
long enough to pay for the previous one, so the average over any window stays at the rate.
Waiters are served by their ``priority`` (lowest first), then in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from warmer.slots import PrioritySlots


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
        self._turn = PrioritySlots(1)
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

    async def take(self, n: float, priority: int = 0) -> None:
        """Charge ``n`` tokens, waiting (by priority, then arrival) until the bucket can pay."""
        if n <= 0:
            return
        async with self._turn.hold(priority):
            while True:
                delay = self.wait_time(n)
                if delay <= 0:
                    break
                await self._sleep(delay)
            self._tokens -= n
            self.taken += int(n)


class Pacer:
    """Per-chunk throttle for reads (``on_bytes`` of the registry client)."""

    def __init__(self, bucket: TokenBucket | None) -> None:
        self.bucket = bucket

    async def __call__(self, n: int) -> None:
        if self.bucket is not None:
            await self.bucket.take(n)
