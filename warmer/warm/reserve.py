"""The upstream rate-limit reserve: requests that would count upstream wait at the reserve.

Kept apart from the executor, which holds one per run; resolution (``warmer.warm.run``) and the
service's jobs share it too.
"""

from __future__ import annotations

import asyncio
import logging
import time

from warmer.oci.registry import RegistryClient, RegistryError

log = logging.getLogger("warmer.warm.execute")


class RateReserve:
    """Tracks the upstream's remaining manifest GETs and holds back when at the reserve.

    Mirrors do not pass the upstream's rate-limit headers on, so the remaining count is read
    with a HEAD to the upstream (HEAD is not counted by Docker Hub) and decremented locally
    for each manifest GET the top tier may make upstream. Those are made while resolving
    through the top tier (:func:`warmer.warm.resolve.resolve`), which keeps the reserve; the
    executor's manifest requests that follow are answered from the top tier's cache (a GET
    by tag makes it send the upstream a HEAD, which is not counted), so the executor only
    uses :meth:`explain` when a top-tier request fails.

    ``spend(n)`` reserves requests about to be made, ``settle(n)`` says they were made: a
    refresh while they are in flight subtracts them from what the upstream reports.
    """

    def __init__(
        self,
        client: RegistryClient | None,
        probe: tuple[str, str] | None,
        reserve: int,
        poll: float = 5.0,
    ) -> None:
        self.client = client
        self.probe = probe
        self.reserve = reserve
        self.poll = poll
        self.remaining: int | None = None
        self.spent = 0
        self.inflight = 0
        self._lock = asyncio.Lock()
        self._told = False
        self._probed = False

    async def refresh(self) -> None:
        self._probed = True
        if self.client is None or self.probe is None:
            return
        try:
            await self.client.head_manifest(*self.probe)
        except RegistryError as exc:
            log.debug("rate-limit probe failed: %s", exc)
            return
        rl = self.client.last_ratelimit
        if rl is not None and rl.remaining is not None:
            self.remaining = rl.remaining - self.inflight

    async def spend(self, until: float | None, n: int = 1) -> bool:
        """Reserve ``n`` counted requests; False if ``until`` passed while waiting.

        The local count only ever runs ahead of the upstream's (it is decremented for every
        request that *may* count), so at the reserve the upstream is asked again before
        waiting: a conservative estimate costs one HEAD, not a wait.
        """
        async with self._lock:
            if not self._probed or (
                self.remaining is not None and self.remaining - n < self.reserve
            ):
                await self.refresh()
            if not await self._wait_above(until, n):
                return False
            if self.remaining is not None:
                self.remaining -= n
            self.spent += n
            self.inflight += n
            return True

    async def wait_available(self, until: float | None, n: int = 1) -> bool:
        """Wait (one log line) until ``n`` requests fit above the reserve; False when
        ``until`` (a ``time.monotonic()`` value) comes first."""
        async with self._lock:
            await self.refresh()
            return await self._wait_above(until, n)

    async def _wait_above(self, until: float | None, n: int) -> bool:
        """Poll the upstream until ``n`` requests fit above the reserve (the lock is held)."""
        while self.remaining is not None and self.remaining - n < self.reserve:
            if not self._told:
                log.warning(
                    "upstream rate limit: %s manifest requests left, keeping %s for CI; "
                    "waiting for the limit window to reset",
                    self.remaining,
                    self.reserve,
                )
                self._told = True
            if until is not None and time.monotonic() + self.poll > until:
                return False
            await asyncio.sleep(self.poll)
            await self.refresh()
        return True

    def settle(self, n: int = 1) -> None:
        """``n`` requests reserved by :meth:`spend` were made (or given up)."""
        self.inflight = max(0, self.inflight - n)

    async def explain(self, exc: Exception) -> str:
        """The reason to record for a failed request that may have been rate limited.

        CNCF distribution 2.8 turns its upstream's ``429 TOOMANYREQUESTS`` into ``HTTP 500
        UNKNOWN`` (the 429 only in a nested detail, no Retry-After), so the upstream itself
        is asked (HEAD, not counted) whether its limit is spent.
        """
        await self.refresh()
        if self.remaining is not None and self.remaining <= 0:
            return f"upstream rate limit spent (0 manifest requests left); the mirror said: {exc}"
        return str(exc)
