"""Job leases: one holder at a time, expiry, fencing by token, heartbeat; SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from warmer.store.leases import TABLE, Held, Leases

TTL = timedelta(seconds=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def leases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Leases]:
    if request.param == "sqlite":
        yield Leases(f"sqlite:///{tmp_path / 'leases.db'}")
    else:
        yield Leases(request.getfixturevalue("pg_url"))


def test_one_holder_then_takeover_after_expiry(leases: Leases) -> None:
    a = leases.try_acquire("warm:eu", "a", timedelta(seconds=1))
    assert a
    assert leases.try_acquire("warm:eu", "b", TTL) == ""
    assert leases.try_acquire("warm:us", "b", TTL)  # another job is free
    assert leases.try_acquire("warm:eu", "a", timedelta(seconds=1), token=a) == a  # re-entrant
    [held] = [h for h in leases.holders() if h.name == "warm:eu"]
    assert held.owner == "a" and not held.expired
    time.sleep(1.3)
    assert [h.expired for h in leases.holders() if h.name == "warm:eu"] == [True]
    b = leases.try_acquire("warm:eu", "b", TTL)
    assert b and b != a
    # The old holder is fenced off: it can neither renew nor release the new lease.
    assert leases.renew("warm:eu", a, TTL) is False
    leases.release("warm:eu", a)
    assert leases.try_acquire("warm:eu", "c", TTL) == ""
    leases.release("warm:eu", b)
    assert leases.try_acquire("warm:eu", "c", TTL)


def test_racing_replicas_get_exactly_one_lease(leases: Leases) -> None:
    start = threading.Barrier(8)

    def race(i: int) -> str:
        start.wait()
        return leases.try_acquire("prune", f"replica-{i}", TTL)

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(race, range(8)))
    assert sum(bool(t) for t in tokens) == 1


def test_heartbeat_keeps_the_lease_and_reports_a_takeover(leases: Leases) -> None:
    ttl = timedelta(seconds=1.2)
    token = leases.try_acquire("verify:eu", "a", ttl)
    lost: list[str] = []
    held = Held(leases, "verify:eu", token, ttl, on_lost=lost.append)
    try:
        time.sleep(ttl.total_seconds() * 1.5)  # longer than the ttl: renewed meanwhile
        assert leases.try_acquire("verify:eu", "b", TTL) == ""
        assert not held.lost.is_set()
        # Someone else's token in the row (as after an expiry and takeover).
        with leases.engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TABLE} SET token = 'other' WHERE name = 'verify:eu'"))
        assert held.lost.wait(ttl.total_seconds() + 2)
        assert lost and "taken over" in lost[0]
    finally:
        held.release()
    # Release after a loss leaves the new holder's row alone.
    assert [h.name for h in leases.holders()] == ["verify:eu"]


def test_release_frees_the_lease_at_once(leases: Leases) -> None:
    token = leases.try_acquire("ingest", "a", timedelta(seconds=60))
    held = Held(leases, "ingest", token, timedelta(seconds=60))
    held.release()
    assert leases.try_acquire("ingest", "b", TTL)
