"""start_order: when the executor starts a run's items (pure)."""

from __future__ import annotations

from warmer.store.ledger import RunItem
from warmer.warm.startorder import LIGHT, start_keys, start_order

MB = 1_000_000


def item(
    seq: int, kind: str, digest: str, size: int, repo: str = "r", mirror: str = "c"
) -> RunItem:
    return RunItem(
        run_id=1, seq=seq, mirror=mirror, tier=0, repository=repo, upstream_repository=repo,
        kind=kind, digest=digest, size=size, image=f"{repo}:t", reference=digest,
    )  # fmt: skip


ITEMS = [
    item(0, "blob", "big", 30 * MB),
    item(1, "blob", "shared", 5 * MB, repo="a"),
    item(2, "manifest", "m1", 2_000),
    item(3, "blob", "config", 1_500),
    item(4, "blob", "mid", 10 * MB),
    item(5, "blob", "shared", 5 * MB, repo="b"),
    item(6, "blob", "shared", 5 * MB, repo="c", mirror="other"),  # another mirror: no chain
]


def seqs(items: list[RunItem]) -> list[int]:
    return [i.seq for i in items]


def test_light_first_then_each_mirrors_largest_then_chains_then_largest() -> None:
    # manifests and small blobs (round trips) first; then each mirror's largest blob (its
    # burst goes while a paced link's windows are empty); then the digest two repositories
    # of one mirror share (its fetches go one after the other); then largest first.
    assert seqs(start_order(ITEMS, by_size=True)) == [2, 3, 0, 6, 1, 5, 4]


def test_with_a_deadline_plan_order_after_light_and_chains() -> None:
    assert seqs(start_order(ITEMS, by_size=False)) == [2, 3, 1, 5, 0, 4, 6]
    plain = [item(0, "blob", "x", 2 * MB), item(1, "blob", "y", 20 * MB)]
    assert seqs(start_order(plain, by_size=False)) == [0, 1]
    assert seqs(start_order(plain, by_size=True)) == [1, 0]


def test_light_threshold() -> None:
    edge = [
        item(0, "blob", "x", 5 * MB),
        item(1, "blob", "y", LIGHT - 1),
        item(2, "blob", "z", LIGHT),
    ]
    assert seqs(start_order(edge, by_size=True)) == [1, 0, 2]


def test_keys_of_a_later_part_compare_with_the_earlier_part() -> None:
    first = start_keys([ITEMS[0], ITEMS[1], ITEMS[4]], by_size=True)  # no chain yet
    later = start_keys([*ITEMS, item(7, "blob", "shared", 5 * MB, repo="d")], by_size=True)
    # With the later part, item 1 heads a chain of three: it now goes before the 10 MB blob
    # the first part put ahead of it, and each key still names its item.
    assert first[1] > first[4] and later[1] < later[4]
    assert first[0] < first[4] and later[0] < later[1]  # the largest first in both
    assert all(key[-1] == seq for seq, key in later.items())
