"""Reading a cold blob from a mirror's storage instead of its relay (``cold_blobs = "stored"``).

CNCF distribution 2.8 answers a request for a blob it does not hold with two fetches from
its parent at once: a background one that stores the blob, and one relayed to the client.
A client that closes the connection leaves the store running, and the relay stops at its
next write. So we send the request and close at once (``RegistryClient.trigger_blob``),
then read the stored copy once it is there: the parent link carries the blob once plus
what it sent of the relay before the mirror noticed (measured through a counting front at
100 MB/s: 32-115 kB for one request alone, up to 4 MB in a busy run, ``DROP_TAIL``), and
the bytes we verify are the ones the mirror keeps.

When to ask: on a paced link at the store's predicted end (the pacer's landing
prediction); otherwise after the lane's learnt store speed (:class:`StoreSpeed`) would
have carried it. An ask before the store ended is relayed (dropped after its headers: a
request through the mirror and what it relayed meanwhile); each later one waits longer,
but no longer than the store takes from that relayed answer (it was under way by then) at
the speed of the fastest relayed copy read from the mirror.
After ``ASKS`` asks the relayed copy is read instead (the caller's fallback), so a mirror
that does not store a dropped blob costs time, never the item; after ``LOST_LIMIT`` such
blobs and none kept, the lane reads relays for the rest of the run.

Not read this way: blobs under ``STORED_MIN`` (the dropped copy's tail is a large share of
them), mirrors of ``kind = "other"`` (no sign tells a stored answer from a relayed one) and
mirrors whose ``fetch_multiplicity`` is 1 (a relayed read costs their parent one fetch).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from warmer.oci.registry import RegistryClient
from warmer.store.ledger import RunItem

ASKS = 8  # asks after the trigger before the relayed copy is read instead
FIRST_WAIT = 0.05  # seconds: the least wait before the second ask
MIN_SPEED = 1e6  # bytes/s: the slowest store speed the guess goes down to
MAX_SPEED = 2e9
LAG = (0.02, 2.0)  # seconds: the bounds of the guessed wait before a store starts
LOST_LIMIT = 2  # blobs never found stored before a lane reads its relays instead
OBSERVE_MIN = 1 << 20  # bytes: the least relayed read that says how fast the link is


@dataclass
class StoreSpeed:
    """What a lane learnt of its mirror's stores: a guess of the wait before a store
    starts (``lag``: the mirror asks its parent first, a round trip or more) and of how
    fast it stores a cold blob (bytes/s, for a link without a pacer's prediction), and how
    many dropped blobs it was later found to hold (``kept``) or not (``lost``). The guess
    is multiplicative: a blob found stored at the first ask makes it 25 % shorter, one not
    yet stored doubles it (a late ask costs a little time; an early one a relayed request
    through the mirror)."""

    bytes_per_s: float = 25e6
    lag: float = 0.25
    kept: int = 0
    lost: int = 0
    seen: float = 0.0  # the fastest relayed copy read here: the store is at least as fast

    def found(self, first: bool) -> None:
        factor = 1.25 if first else 0.5
        self.bytes_per_s = min(MAX_SPEED, max(MIN_SPEED, self.bytes_per_s * factor))
        self.lag = min(LAG[1], max(LAG[0], self.lag / factor))

    def relayed(self, size: int, seconds: float) -> None:
        """A relayed copy of ``size`` bytes was read in ``seconds``: the mirror stored its
        own copy at least that fast (both crossed the parent link at once), so the guess is
        never slower than that (reads under ``OBSERVE_MIN`` time round trips, not bytes)."""
        if size >= OBSERVE_MIN and seconds > 0:
            self.seen = min(MAX_SPEED, max(self.seen, size / seconds))
            self.bytes_per_s = max(self.bytes_per_s, self.seen)

    def keeps_nothing(self) -> bool:
        """Whether the mirror seems not to store a dropped blob at all (``LOST_LIMIT``
        blobs still relayed after every ask, none found stored): stop dropping."""
        return self.lost >= LOST_LIMIT and not self.kept


def next_ask(
    now: float,
    asked: float,
    size: int,
    attempt: int,
    guess: StoreSpeed,
    predicted: float | None,
    relayed_at: float | None = None,
) -> float:
    """Pure: when to make the ``attempt``-th ask (from 0) for a blob whose store was
    triggered at ``asked``: the first ``guess.lag`` after the predicted end of its store
    on a paced link (else after the guessed speed would have carried it), each later one
    at least twice as long after the one before (``FIRST_WAIT``, doubling) and at least
    half the time spent so far; but no later than the store must be over when the last
    ask's relayed answer came at ``relayed_at``: that answer's fetch from the parent
    started after the trigger's, so the store was under way by then, and it runs at least
    as fast as the fastest relayed copy read from this mirror (``guess.seen``)."""
    if attempt == 0:
        end = predicted if predicted is not None else asked + size / guess.bytes_per_s
        return max(end + guess.lag, now + FIRST_WAIT)
    later = now + max(FIRST_WAIT * 2.0**attempt, 0.5 * (now - asked))
    if relayed_at is not None and guess.seen > 0:
        over = relayed_at + size / guess.seen + FIRST_WAIT
        later = min(later, max(over, now + FIRST_WAIT))
    return later


async def read_stored(
    client: RegistryClient,
    item: RunItem,
    *,
    on_bytes: Callable[[int], Awaitable[None]],
    on_answer: Callable[[bool], None],
    speed: StoreSpeed,
    predicted: Callable[[], float | None],
    slot: Callable[[], AbstractAsyncContextManager[Any]],
    asks: list[int],
) -> int | None:
    """Read ``item``'s blob from the mirror's storage, having it stored first: a request
    closed at once (``trigger_blob``), then asks from the predicted end of the store. Its
    size, or None: still relayed after ``ASKS`` asks (the caller reads the relay).
    ``predicted()``: when the store is predicted to have crossed the link (None: not
    paced; asked again after the first wait, as it moves later while more is admitted).
    Each ask made is appended to ``asks`` (its number, from 0) and holds one of the
    mirror's slots (``slot()``) while it runs; the trigger (sent right after the pacer
    admitted it: a later store would land after its predicted end) and the waits for the
    store hold none."""
    asked = time.monotonic()
    answers: list[float] = []

    def answer(stored: bool) -> None:
        answers.append(time.monotonic())
        on_answer(stored)

    await client.trigger_blob(item.repository, item.digest)
    for attempt in range(ASKS):
        now = time.monotonic()
        relayed_at = answers[-1] if answers else None
        when = next_ask(now, asked, item.size, attempt, speed, predicted(), relayed_at)
        while when > now:  # the first wait: until the store's end, which may move later
            await asyncio.sleep(when - now)
            now, end = time.monotonic(), predicted()
            if attempt or end is None:
                break
            when = end + speed.lag
        asks.append(attempt)
        async with slot():
            n = await client.fetch_stored_blob(
                item.repository, item.digest, on_bytes=on_bytes, on_answer=answer,
                size=item.size,
            )  # fmt: skip
        if attempt == 0:  # was the wait long enough?
            speed.found(first=n is not None)
        if n is not None:
            speed.kept += 1
            return n
    speed.lost += 1
    return None
