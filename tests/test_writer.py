"""The ledger writer (``warmer.store.writer``) on SQLite and PostgreSQL, and the executor
that writes through it: writes land in order, errors surface, and a database whose write
lock another process holds does not stop a run's transfers.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_warm import RegistryFactory, Topo, topo  # noqa: F401 (topo is a fixture)

from warmer.config import load
from warmer.store.ledger import (
    HoldingRecord,
    IncidentRecord,
    InflightReset,
    ItemUpdate,
    Ledger,
    RunItem,
    utcnow,
)
from warmer.store.writer import LedgerWriteError, LedgerWriter
from warmer.warm import run as warm
from warmer.warm.execute import Executor, ProgressHook
from warmer.warm.resolve import mirror_client, wants_from_args

NOW = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_url"))


def new_run(ledger: Ledger, n: int) -> list[RunItem]:
    items = [
        {
            "seq": i, "mirror": "eu", "instance": "", "tier": 1, "repository": "library/x",
            "upstream_repository": "library/x", "kind": "blob", "digest": f"sha256:{i:064x}",
            "size": 10 + i, "media_type": "", "image": "docker.io/library/x:1", "reference": "1",
            "depends_on": "[]", "parent_cost": 20,
        }
        for i in range(n)
    ]  # fmt: skip
    run_id = ledger.create_run(
        region="eu", items=items, images=["docker.io/library/x:1"], skipped=[], now=NOW,
        deadline=None, owner="test",
    )  # fmt: skip
    return ledger.items(run_id)


def holding(item: RunItem, size: int) -> HoldingRecord:
    return HoldingRecord(
        mirror=item.mirror, instance="", repository=item.upstream_repository, kind="blob",
        digest=item.digest, size=size, now=NOW, ttl=timedelta(hours=1), run_id=item.run_id,
    )  # fmt: skip


def test_writes_land_in_order(db_url: str) -> None:
    ledger = Ledger(db_url)
    a, b, c = new_run(ledger, 3)
    assert a.id is not None and b.id is not None and c.id is not None
    ledger.update_item(c.id, state="running")  # left running by a killed process
    writer = LedgerWriter(ledger)
    try:
        writer.submit(InflightReset(a.run_id))
        writer.submit(ItemUpdate(a.id, {"state": "running", "attempts": 1}))
        writer.submit(holding(a, 11))
        writer.submit(holding(a, 12))  # the same object again: the row is refreshed
        writer.submit(ItemUpdate(a.id, {"state": "done", "bytes": 12}))
        writer.submit(ItemUpdate(b.id, {"state": "running", "attempts": 1}))
        writer.submit(
            IncidentRecord(
                mirror="eu", repository="library/x", digest=b.digest, kind="digest-mismatch",
                detail="got sha256:0", now=NOW, run_id=b.run_id,
            )
        )  # fmt: skip
        writer.submit(ItemUpdate(b.id, {"state": "failed", "reason": "incident"}))
        writer.flush()
        assert writer.committed == 8
    finally:
        writer.close()
    got = {i.seq: i for i in ledger.items(a.run_id)}
    assert (got[0].state, got[0].attempts, got[0].bytes) == ("done", 1, 12)
    assert (got[1].state, got[1].reason) == ("failed", "incident")
    assert got[2].state == "pending"  # the reset
    rows = ledger.holding_rows("eu", "library/x", a.digest)
    assert [r.size for r in rows] == [12]
    assert [i.kind for i in ledger.incidents()] == ["digest-mismatch"]


def test_many_ops_in_several_batches(db_url: str) -> None:
    ledger = Ledger(db_url)
    items = new_run(ledger, 40)
    writer = LedgerWriter(ledger, batch=7)
    for n in range(25):  # every item updated 25 times: the last update wins
        for item in items:
            assert item.id is not None
            writer.submit(ItemUpdate(item.id, {"attempts": n}))
    writer.close()
    assert writer.committed == 25 * 40
    assert {i.attempts for i in ledger.items(items[0].run_id)} == {24}


def test_a_failed_batch_is_raised_and_nothing_of_it_lands(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    (item,) = new_run(ledger, 1)
    assert item.id is not None
    writer = LedgerWriter(ledger, interval=60)  # one batch: both ops are queued at flush
    writer.submit(ItemUpdate(item.id, {"state": "done"}))
    writer.submit(ItemUpdate(item.id, {"no_such_column": 1}))
    with pytest.raises(LedgerWriteError, match="could not write the ledger") as raised:
        writer.flush()
    assert raised.value.__cause__ is not None
    with pytest.raises(LedgerWriteError):
        writer.submit(ItemUpdate(item.id, {"state": "failed"}))
    with pytest.raises(LedgerWriteError):
        writer.close()
    assert ledger.items(item.run_id)[0].state == "pending"  # the batch is atomic


def test_submit_does_not_wait_for_a_held_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    (item,) = new_run(ledger, 1)
    assert item.id is not None
    writer = LedgerWriter(ledger)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held by this thread
    try:
        # Were submit to write, it would wait for the lock this very thread holds.
        writer.submit(ItemUpdate(item.id, {"state": "done"}))
        writer.submit(holding(item, 10))
        assert writer.committed == 0
        assert ledger.items(item.run_id)[0].state == "pending"  # reads go on meanwhile
    finally:
        holder.execute("COMMIT")
        holder.close()
    writer.close()
    assert writer.committed == 2
    assert ledger.items(item.run_id)[0].state == "done"
    assert len(ledger.holding_rows("eu", "library/x", item.digest)) == 1


# --- the executor -----------------------------------------------------------------------------

# Takes the write lock of the database at argv[1], says so, and keeps it until it reads a
# line (or its stdin closes).
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


def planned(t: Topo, db_url: str, region: str, images: list[str]) -> tuple[Ledger, int]:
    """A run planned and recorded in the ledger at ``db_url`` (config of ``t``)."""
    cfg, ledger = load(t.config_path), Ledger(db_url)
    prepared = asyncio.run(warm.prepare(cfg, ledger, region, wants_from_args(images), now=utcnow()))
    assert prepared.plan.items and not prepared.unresolved
    return ledger, warm.start_run(ledger, prepared, utcnow(), None)


def executor(
    t: Topo, ledger: Ledger, run_id: int, on_progress: ProgressHook | None = None
) -> Executor:
    cfg = load(t.config_path)
    return Executor(
        cfg, ledger, run_id, settle=0, on_progress=on_progress,
        client_factory=lambda m, url: mirror_client(cfg, m, url),
    )  # fmt: skip


def test_a_held_write_lock_does_not_stop_the_transfers(topo: Topo) -> None:  # noqa: F811
    ledger, run_id = planned(topo, topo.db_url, "eu", ["redis:7.4", "alpine:3.20"])
    total = len(ledger.items(run_id))
    db = topo.tmp / "warmer.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    seen: dict[str, Counter[str]] = {}
    done = 0
    try:
        assert holder.stdout.readline().strip() == "locked"

        def progress(what: str, item: RunItem, n: int) -> None:
            nonlocal done
            if what != "done":
                return
            done += 1
            if done == total:
                # Every transfer is over while the lock is held: nothing has landed yet.
                with sqlite3.connect(db) as conn:
                    seen["at release"] = Counter(
                        dict(conn.execute("SELECT state, count(*) FROM run_item GROUP BY state"))
                    )
                assert holder.stdin is not None
                holder.stdin.write("go\n")
                holder.stdin.flush()

        stats = asyncio.run(executor(topo, ledger, run_id, on_progress=progress).run())
    finally:
        if holder.poll() is None:
            holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.stdout.read().strip() == "released"
    assert seen["at release"] == Counter(pending=total)
    # The bookkeeping landed after the lock was released, before run() returned.
    assert stats.done == total and stats.failed == 0
    assert {i.state for i in ledger.items(run_id)} == {"done"}
    assert len(ledger.holdings(["central", "eu"], utcnow())) == total


def test_a_run_on_postgres(topo: Topo, pg_url: str) -> None:  # noqa: F811
    topo.config_path.write_text(topo.config_path.read_text().replace(topo.db_url, pg_url))
    ledger, run_id = planned(topo, pg_url, "eu", ["alpine:3.20"])
    ledger.update_item(ledger.items(run_id)[0].id or 0, state="running")  # a killed run's
    stats = asyncio.run(executor(topo, ledger, run_id).run())
    items = ledger.items(run_id)
    assert stats.done == len(items) and {i.state for i in items} == {"done"}
    assert len(ledger.holdings(["central", "eu"], utcnow())) == len(items)


def test_a_cancelled_run_leaves_its_items_pending_and_recorded(topo: Topo) -> None:  # noqa: F811
    topo.front.configure(bandwidth="200KB/s")
    ledger, run_id = planned(topo, topo.db_url, "eu", ["redis:7.4"])

    async def go() -> None:
        started = asyncio.Event()
        done = False

        def progress(what: str, item: RunItem, n: int) -> None:
            nonlocal done
            done = done or what == "done"
            if what == "bytes" and done:
                started.set()

        task = asyncio.create_task(executor(topo, ledger, run_id, on_progress=progress).run())
        await started.wait()  # an item is done and a blob is being read
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    # Everything the run wrote is committed: no item left running, some done.
    states = Counter(i.state for i in ledger.items(run_id))
    assert states["running"] == 0 and states["done"] > 0 and states["pending"] > 0
    aborted = [i for i in ledger.items(run_id) if i.reason == "aborted at the deadline"]
    assert aborted


def test_a_ledger_write_error_fails_the_run(topo: Topo) -> None:  # noqa: F811
    ledger, run_id = planned(topo, topo.db_url, "eu", ["redis:7.4"])
    db = topo.tmp / "warmer.db"
    broken = False

    def progress(what: str, item: RunItem, n: int) -> None:
        nonlocal broken
        if what == "done" and not broken:  # the run's items can no longer be written
            broken = True
            with sqlite3.connect(db, timeout=30) as conn:
                conn.execute("ALTER TABLE run_item RENAME TO run_item_gone")

    with pytest.raises(LedgerWriteError, match="run_item"):
        asyncio.run(executor(topo, ledger, run_id, on_progress=progress).run())
    assert broken
