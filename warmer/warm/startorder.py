"""When the executor starts a run's items (the planner decided *what*; this, *when*).

Pure: a function of the items alone.
"""

from __future__ import annotations

from collections import Counter

from warmer.store.ledger import RunItem

LIGHT = 256 * 1024  # bytes: below this a blob's round trips outlast its transfer


StartKey = tuple[int, int, int, int]
FIRST = -(1 << 30)  # the chain key of each mirror's largest blob in a run without a deadline


def start_order(items: list[RunItem], *, by_size: bool) -> list[RunItem]:
    """The order items start in (the plan decided *what*; this only decides *when*).

    Light items first (on at most half the slots): manifests and blobs under ``LIGHT``
    bytes take round trips, not bandwidth (left to the end they make a tail of idle link),
    and the child tier's manifests wait for the parent's. Without a deadline, each mirror's
    largest blob next: on a paced link the windows are still empty then, so its burst
    (which a window may have to take whole) costs no idle time, where later it would leave
    the link nearly idle for about a window on each side (see ``warmer.warm.pacing``). Then a
    digest shared by k repositories of a mirror is k fetches one after the other (each
    waits for the mirror to store the previous copy), the run's longest chain: those start
    next. Without a deadline the larger blobs go next (largest first finishes sooner); with
    one, plan order is kept, so what a deadline cuts is what the plan valued least.
    """
    keys = start_keys(items, by_size=by_size)
    return sorted(items, key=lambda i: keys[i.seq])


def start_keys(items: list[RunItem], *, by_size: bool) -> dict[int, StartKey]:
    """Each item's (by ``seq``) sort key for :func:`start_order`. The keys are absolute,
    not places in a list: keys computed for a later part of a run compare with the
    earlier part's (the executor uses them as slot and bandwidth priorities). A key ends
    with the item's ``seq``, so it also names its item."""
    fanout = Counter((i.mirror, i.instance, i.digest) for i in items if i.kind == "blob")
    largest: dict[str, RunItem] = {}
    if by_size:
        for item in items:
            if item.kind == "blob" and not is_light(item):
                best = largest.get(item.mirror)
                if best is None or (item.size, -item.seq) > (best.size, -best.seq):
                    largest[item.mirror] = item

    def key(item: RunItem) -> StartKey:
        if is_light(item):
            return (0, 0, 0, item.seq)
        if largest.get(item.mirror) is item:
            return (1, FIRST, -item.size, item.seq)
        k = fanout[(item.mirror, item.instance, item.digest)]
        return (1, -k if k > 1 else 0, -item.size if by_size else 0, item.seq)

    return {item.seq: key(item) for item in items}


def is_light(item: RunItem) -> bool:
    return item.kind != "blob" or item.size < LIGHT
