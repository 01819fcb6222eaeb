"""The executor's rules, as pure functions: what a request costs the parent link, how long
a mirror stays busy with a blob, when to wait and when to give up.

``warmer.warm.execute`` does the I/O and reads the clock; every decision it makes on what
it measured is here, a function of values alone, so each rule is tested without a
registry or a clock. Times named ``now``, ``until`` or ``*_mono`` are ``time.monotonic()``
values; ``until`` is a run's deadline on that clock (``None``: no deadline). Durations
are seconds.

The numbers are what CNCF distribution 2.8 was measured to do (see DESIGN.md): a cold blob
is stored by a background fetch from the parent that may end a moment after our read, and
while it runs the mirror answers a request for the same digest by relaying it unstored.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

# A cold blob's digest stays busy for SETTLE + STORE_LAG x our read time after the read:
# the mirror's background copy runs beside ours on the same link and ends a moment later
# (measured lags: median ~0, rarely up to the read time; the end-of-run confirmation
# catches those). The read time is counted from the mirror's answer: distribution starts
# its store and our relay together once its parent has answered, so a wait before that
# (round trips to the parent, a queue behind its pings of an anonymous parent: seconds
# under load) delays the store as much as our read.
STORE_LAG = 0.25
SETTLE = 0.4  # seconds: the fixed part of that busy time
CHAIN_SLOTS = 2  # slots of a lane that blobs on no chain of shared blobs leave free
MAX_RETRY_AFTER = 300.0  # seconds; a longer Retry-After fails the item (resume later)
CONFIRM_TRIES = 8  # HEADs per shared blob at the end of a run
CONFIRM_BACKOFF = 0.25  # seconds before the second HEAD, doubling ...
CONFIRM_BACKOFF_MAX = 4.0  # ... up to this (about 16 s over all the tries)


# -- slots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaneSlots:
    """How a mirror instance's ``concurrency`` is shared out.

    ``light``: manifests and small blobs wait on round trips, not bandwidth, so they go
    first but may hold at most half the slots, and the blobs behind them fill the link
    meanwhile. ``bulk``: a blob on no chain of shared blobs holds its slot while it waits
    for the link's bytes, so those leave ``CHAIN_SLOTS`` to the chains (the next copy of a
    shared blob must not wait for a whole round of them).
    """

    total: int
    light: int
    bulk: int


def lane_slots(concurrency: int) -> LaneSlots:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    half = concurrency // 2
    return LaneSlots(
        total=concurrency,
        light=max(1, half),
        bulk=max(1, concurrency - min(CHAIN_SLOTS, half)),
    )


Share = Literal["light", "bulk", "chain"]


def slot_share(light: bool, chain_length: int) -> Share:
    """Which share of the slots an item waits for besides the lane's: ``light`` items
    (``warmer.warm.startorder.is_light``), blobs on no chain (``chain_length`` 0: the
    start key's second field), or a chain's blob (no share of its own)."""
    if light:
        return "light"
    return "bulk" if chain_length == 0 else "chain"


# -- the parent link ----------------------------------------------------------------------------


def link_charge(parent_cost: int, capped: bool) -> int:
    """Bytes to take from the parent link's bucket before the request starts.

    The planner's ``parent_cost`` is what the request makes the mirror pull from its parent
    (twice a cold blob's size through distribution 2.8, whatever our read rate; nothing
    for what it holds). Charged up front, since the mirror pulls at full speed once asked;
    nothing when the link has no cap.
    """
    return parent_cost if capped and parent_cost > 0 else 0


# -- busy digests ---------------------------------------------------------------------------


def busy_after_read(
    now: float, took: float, settle: float = SETTLE, store_end: float | None = None
) -> float:
    """Until when a mirror is presumed still storing a blob we finished reading at ``now``,
    ``took`` seconds after its answer: no request for that digest goes to it before then.
    On a paced link, not before the link is predicted to have carried the store
    (``store_end``: on a saturated link the store shares it and may end well after our
    read)."""
    return max(now + settle + STORE_LAG * took, (store_end or 0.0) + settle)


def confirm_backoff(attempt: int) -> float:
    """The least wait after the ``attempt``-th (from 0) confirmation HEAD was relayed."""
    return min(CONFIRM_BACKOFF * 2.0**attempt, CONFIRM_BACKOFF_MAX)


def busy_after_relay(now: float, took: float, attempt: int, settle: float = SETTLE) -> float:
    """Until when to leave a digest alone after a confirmation HEAD that took ``took`` was
    relayed at ``now``: that HEAD has the mirror store the blob (like a read of it), and
    the next HEAD backs off further each time someone else's store is still in flight."""
    return now + max(settle + took, confirm_backoff(attempt))


def ask_again(stored: bool | None) -> bool:
    """Whether a confirmation HEAD's answer means the copy was lost: ``False`` (relayed,
    not served from storage) does; ``None`` (the mirror does not say) does not."""
    return stored is False


def shared_copies(scope: str, fetched: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """(repository, digest) pairs to confirm at the end of a run: at a per-repository
    cache, the copies of every blob fetched under several repositories (the only ones the
    mirror's in-flight race can lose). ``fetched``: digest -> repositories."""
    if scope != "repository":
        return []
    return [
        (repository, digest)
        for digest, repositories in fetched.items()
        if len(repositories) > 1
        for repository in sorted(repositories)
    ]


# -- time -----------------------------------------------------------------------------------


def monotonic_deadline(
    deadline: datetime | None, *, now: datetime, now_mono: float
) -> float | None:
    """A wall-clock ``deadline`` on the monotonic clock (which waits compare with), given
    the same instant ``now`` on both clocks."""
    if deadline is None:
        return None
    return now_mono + (deadline - now).total_seconds()


def may_start(now: float, until: float | None) -> bool:
    """No item starts at or after the deadline."""
    return until is None or now < until


def grace_left(now: float, until: float, grace: float) -> float:
    """Seconds the items in flight at the deadline may still run before they are aborted."""
    return max(0.0, until + grace - now)


def retry_wait(retry_after: float | None, *, now: float, until: float | None) -> float | None:
    """After a 429: seconds to wait before asking again, or ``None`` to fail the item (it
    is resumed later). Without a Retry-After, past ``MAX_RETRY_AFTER`` or past the
    deadline, waiting would only hold a slot for nothing."""
    if retry_after is None or retry_after > MAX_RETRY_AFTER:
        return None
    if until is not None and now + retry_after >= until:
        return None
    return max(0.0, retry_after)


# -- dependencies ---------------------------------------------------------------------------

Verdict = Literal["go", "wait", "skip"]


def after_parents(deps: Sequence[int], outcome: Mapping[int, str]) -> tuple[Verdict, int | None]:
    """What an item does once its parent tier's items (``deps``, by seq) have settled.

    ``wait`` (with the first such parent): one was cut by the deadline and left pending,
    so this one stays pending for ``--resume`` too. ``skip``: one failed or was skipped,
    so the parent mirror does not hold the object. ``go`` otherwise; a parent not in
    ``outcome`` (finished in an earlier run) counts as done.
    """
    for dep in deps:
        if outcome.get(dep) == "pending":
            return "wait", dep
    for dep in deps:
        if outcome.get(dep, "done") != "done":
            return "skip", dep
    return "go", None
