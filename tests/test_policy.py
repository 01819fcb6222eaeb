"""The executor's pure rules (``warmer.warm.policy``): costs, busy times, retries, verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from warmer.warm import policy


def test_lane_slots_share_out_the_concurrency() -> None:
    eight = policy.lane_slots(8)
    assert (eight.total, eight.light, eight.bulk) == (8, 4, 6)  # two left to the chains
    # Small lanes: never a share of zero, and chains never take more than half.
    assert policy.lane_slots(1) == policy.LaneSlots(total=1, light=1, bulk=1)
    assert policy.lane_slots(2) == policy.LaneSlots(total=2, light=1, bulk=1)
    assert policy.lane_slots(3) == policy.LaneSlots(total=3, light=1, bulk=2)
    with pytest.raises(ValueError):
        policy.lane_slots(0)


def test_slot_share_follows_lightness_then_chain() -> None:
    assert policy.slot_share(light=True, chain_length=0) == "light"
    assert policy.slot_share(light=True, chain_length=-3) == "light"
    assert policy.slot_share(light=False, chain_length=0) == "bulk"
    assert policy.slot_share(light=False, chain_length=-3) == "chain"


def test_link_charge_is_the_parent_cost_on_a_capped_link_only() -> None:
    assert policy.link_charge(2_000_000, capped=True) == 2_000_000
    assert policy.link_charge(2_000_000, capped=False) == 0
    assert policy.link_charge(0, capped=True) == 0  # held by the parent: costs it nothing


def test_busy_after_read_is_settle_plus_a_quarter_of_the_read() -> None:
    assert policy.busy_after_read(100.0, took=4.0, settle=0.4) == pytest.approx(101.4)
    assert policy.busy_after_read(100.0, took=0.0, settle=0.4) == pytest.approx(100.4)
    assert policy.busy_after_read(100.0, took=4.0, settle=0.0) == pytest.approx(101.0)
    assert policy.busy_after_read(5.0, took=2.0) == pytest.approx(5.0 + policy.SETTLE + 0.5)


def test_confirm_backoff_doubles_up_to_its_cap() -> None:
    waits = [policy.confirm_backoff(a) for a in range(policy.CONFIRM_TRIES)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert 10 < sum(waits) < 20  # "about 16 s in all" bounds a lost copy's retries


def test_busy_after_relay_is_the_longer_of_a_read_and_the_backoff() -> None:
    # A slow relayed HEAD: the mirror stores what it fetched for it; wait like after a read.
    assert policy.busy_after_relay(10.0, took=3.0, attempt=0, settle=0.4) == pytest.approx(13.4)
    # A quick one: the backoff rules.
    assert policy.busy_after_relay(10.0, took=0.01, attempt=3, settle=0.4) == pytest.approx(12.0)


def test_only_a_relayed_answer_means_ask_again() -> None:
    assert policy.ask_again(False) is True
    assert policy.ask_again(True) is False
    assert policy.ask_again(None) is False  # the mirror does not say: trust it


def test_shared_copies_are_the_blobs_of_several_repositories_of_a_per_repository_cache() -> None:
    fetched = {
        "sha256:base": {"library/node", "library/python"},
        "sha256:own": {"library/python"},
    }
    assert policy.shared_copies("repository", fetched) == [
        ("library/node", "sha256:base"),
        ("library/python", "sha256:base"),
    ]
    assert policy.shared_copies("global", fetched) == []  # one copy serves every repository
    assert policy.shared_copies("repository", {}) == []


def test_monotonic_deadline_keeps_the_distance_to_now() -> None:
    now = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
    assert policy.monotonic_deadline(None, now=now, now_mono=50.0) is None
    later = now + timedelta(minutes=2)
    assert policy.monotonic_deadline(later, now=now, now_mono=50.0) == pytest.approx(170.0)
    past = now - timedelta(seconds=5)
    assert policy.monotonic_deadline(past, now=now, now_mono=50.0) == pytest.approx(45.0)


def test_may_start_only_before_the_deadline() -> None:
    assert policy.may_start(10.0, None)
    assert policy.may_start(9.99, 10.0)
    assert not policy.may_start(10.0, 10.0)
    assert not policy.may_start(11.0, 10.0)


def test_grace_left_never_negative() -> None:
    assert policy.grace_left(now=100.0, until=100.0, grace=5.0) == pytest.approx(5.0)
    assert policy.grace_left(now=90.0, until=100.0, grace=5.0) == pytest.approx(15.0)
    assert policy.grace_left(now=200.0, until=100.0, grace=5.0) == 0.0


def test_retry_after_is_waited_out_only_when_short_and_before_the_deadline() -> None:
    assert policy.retry_wait(2.0, now=0.0, until=None) == 2.0
    assert policy.retry_wait(2.0, now=0.0, until=10.0) == 2.0
    assert policy.retry_wait(None, now=0.0, until=None) is None  # no hint: fail, resume later
    assert policy.retry_wait(policy.MAX_RETRY_AFTER, now=0.0, until=None) == policy.MAX_RETRY_AFTER
    assert policy.retry_wait(policy.MAX_RETRY_AFTER + 1, now=0.0, until=None) is None
    assert policy.retry_wait(5.0, now=6.0, until=11.0) is None  # would end at the deadline
    assert policy.retry_wait(5.0, now=5.9, until=11.0) == 5.0
    assert policy.retry_wait(0.0, now=0.0, until=None) == 0.0


def test_after_parents() -> None:
    assert policy.after_parents([], {}) == ("go", None)
    assert policy.after_parents([1, 2], {1: "done", 2: "done"}) == ("go", None)
    assert policy.after_parents([7], {}) == ("go", None)  # done in an earlier run
    assert policy.after_parents([1, 2], {1: "done", 2: "failed"}) == ("skip", 2)
    assert policy.after_parents([1], {1: "skipped"}) == ("skip", 1)
    # A parent cut by the deadline keeps the child pending, even beside a failed one.
    assert policy.after_parents([1, 2], {1: "failed", 2: "pending"}) == ("wait", 2)
