"""The ledger and the analytics store on a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd

from analytics import store
from analytics.events import Event
from warmer.oci.reference import parse
from warmer.store import db
from warmer.store.ledger import Ledger


def test_migrations_and_ledger_on_postgres(pg_url: str) -> None:
    engine = db.engine_for(pg_url)
    assert engine.dialect.name == "postgresql"
    versions = db.migrate(engine)  # idempotent second time
    assert versions["ledger"] >= 1 and versions["analytics"] >= 1
    ledger = Ledger(pg_url)
    now = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
    items = [
        {
            "seq": i, "mirror": "eu", "instance": "", "tier": 1, "repository": "library/x",
            "upstream_repository": "library/x", "kind": "blob", "digest": f"sha256:{i:064x}",
            "size": 10 + i, "media_type": "", "image": "docker.io/library/x:1", "reference": "1",
            "depends_on": "[]", "parent_cost": 20,
        }
        for i in range(3)
    ]  # fmt: skip
    run_id = ledger.create_run(
        region="eu", items=items, images=["docker.io/library/x:1"], skipped=[], now=now,
        deadline=None, owner="test",
    )  # fmt: skip
    got = ledger.items(run_id)
    assert [i.seq for i in got] == [0, 1, 2]
    ledger.update_item(got[0].id or 0, state="running")
    assert ledger.reset_inflight(run_id) == 1
    ledger.record_holding(
        mirror="eu", instance="", repository="library/x", kind="blob", digest=got[1].digest,
        size=11, now=now, ttl=timedelta(hours=1), run_id=run_id,
    )  # fmt: skip
    assert [h.digest for h in ledger.holdings(["eu"], now)] == [got[1].digest]
    assert ledger.holdings(["eu"], now + timedelta(hours=2)) == []  # expired never counts
    assert ledger.unfinished_run("eu") is not None


def test_analytics_store_on_postgres(pg_url: str) -> None:
    t = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    events = [
        Event(t, parse("python:3.12"), None, "docker", "p1", "eu", True),
        Event(t, parse("python:3.12"), None, "docker", "p2", "eu", False),
        Event(t, parse("node:20"), None, "kubelet", None, "us", True),
    ]
    store.add_events(pg_url, events)
    store.add_events(pg_url, events[:1])  # upserts add up on PostgreSQL too
    frame = store.usage_frame(pg_url, region="eu")
    row = frame[frame["image"] == "docker.io/library/python"].iloc[0]
    assert int(row["pulls"]) == 3
    assert int(row["present"]) == 1
    assert int(row["pipelines"]) == 2  # p1 twice, p2: distinct ones (the trigger's count)
    assert (row["day"], int(row["hour"])) == (pd.Timestamp("2026-01-05"), 9)


_KEY = ["day", "hour", "region", "image", "tag", "digest", "source"]


def _write_rounds(args: tuple[str, int]) -> str:
    """One of several processes adding overlapping usage to the same buckets, in its own
    order, one transaction per round. Returns "ok" or what went wrong."""
    import random

    url, worker = args
    rng = random.Random(worker)
    t = datetime(2026, 1, 5, tzinfo=UTC)
    images = [parse(f"team/app-{i}:1.0") for i in range(8)]
    try:
        for _ in range(12):
            events = []
            for _ in range(150):
                at = t + timedelta(hours=rng.randrange(4))
                pipeline = f"pipeline-{rng.randrange(worker * 10, worker * 10 + 30)}"
                events.append(Event(at, rng.choice(images), None, "github", pipeline, "eu", True))
            store.add_events(url, events)
    except Exception as exc:  # reported to the parent: the test names what went wrong
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_concurrent_writers_keep_each_buckets_pipeline_count_exact(pg_url: str) -> None:
    """Three processes writing the same buckets at once, with pipelines they share: none
    fails (no deadlock: rows go in key order), every pull is counted, and each usage row's
    ``pipelines`` (the trigger's count) equals its distinct stored pipelines."""
    import multiprocessing

    db.engine_for(pg_url)  # the schema, before the writers race to it
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert pool.map(_write_rounds, [(pg_url, w) for w in range(3)]) == ["ok"] * 3
    frame = store.usage_frame(pg_url)
    assert int(frame["pulls"].sum()) == 3 * 12 * 150
    stored = store.pipelines_frame(pg_url).groupby(_KEY).size().rename("stored")
    both = frame.set_index(_KEY)[["pipelines"]].join(stored, how="outer")
    assert len(both) == 8 * 4  # every image in every hour
    assert both["stored"].notna().all()
    assert (both["pipelines"] == both["stored"]).all(), both[both["pipelines"] != both["stored"]]
    assert int(both["stored"].max()) > 1  # several pipelines a bucket: counting was tested


def _scan_rounds(url: str) -> str:
    """One of several processes storing the same files' references again and again (as
    ``warmer refs`` does). Returns "ok" or what went wrong."""
    from analytics.staticrefs.model import StaticRef

    refs = [
        StaticRef(f"repo/svc-{i}/Dockerfile", 1, parse(f"team/app-{i}:1.0"), "dockerfile", "FROM")
        for i in range(100)
    ]
    try:
        for _ in range(40):
            store.add_static_refs(url, refs)
    except Exception as exc:  # reported to the parent: the test names what went wrong
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_concurrent_scans_of_the_same_files_each_store_their_references(pg_url: str) -> None:
    """Three processes replacing the same files' references at once: none fails (before
    the advisory lock, two of three died on a unique violation: each deleted the rows it
    saw, then inserted over the rows another had just committed) and one row per
    reference remains."""
    import multiprocessing

    db.engine_for(pg_url)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        assert pool.map(_scan_rounds, [pg_url] * 3) == ["ok"] * 3
    frame = store.static_frame(pg_url)
    assert len(frame) == 100
    assert sorted(frame["file"]) == sorted(f"repo/svc-{i}/Dockerfile" for i in range(100))
