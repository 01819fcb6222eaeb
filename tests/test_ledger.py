"""The ledger on a fresh SQLite file: expiry, incidents, in-flight reset, unfinished runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from warmer.store.ledger import Ledger

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def hold(lg: Ledger, digest: str, ttl: timedelta | None, mirror: str = "central") -> None:
    lg.record_holding(
        mirror=mirror, instance="", repository="library/python", kind="blob", digest=digest,
        size=10, now=NOW, ttl=ttl, run_id=None,
    )  # fmt: skip


def test_expired_holdings_never_count_as_warm(tmp_path: Path) -> None:
    lg = ledger(tmp_path)
    hold(lg, "sha256:a", timedelta(hours=1))
    hold(lg, "sha256:b", None)  # no TTL: warm until something says otherwise
    assert {h.digest for h in lg.holdings(["central"], NOW)} == {"sha256:a", "sha256:b"}
    later = NOW + timedelta(hours=1)  # expiry instant itself is no longer warm
    assert {h.digest for h in lg.holdings(["central"], later)} == {"sha256:b"}
    assert lg.holdings(["eu"], NOW) == []
    hold(lg, "sha256:a", timedelta(hours=1))  # warmed again: one row, fresh expiry
    assert len([h for h in lg.holdings(["central"], NOW) if h.digest == "sha256:a"]) == 1


def test_incident_removes_warmth(tmp_path: Path) -> None:
    lg = ledger(tmp_path)
    hold(lg, "sha256:a", None)
    lg.record_incident(
        mirror="central", repository="library/python", digest="sha256:a",
        kind="digest-mismatch", detail="expected a, got b", now=NOW, run_id=None,
    )  # fmt: skip
    assert lg.holdings(["central"], NOW) == []
    assert [i.kind for i in lg.incidents()] == ["digest-mismatch"]
    assert {(s["state"], s["items"]) for s in lg.holdings_summary()} == {("incident", 1)}


def item(seq: int) -> dict[str, object]:
    return {
        "seq": seq, "mirror": "central", "tier": 0, "repository": "library/python",
        "upstream_repository": "library/python", "kind": "blob", "digest": f"sha256:{seq}",
        "size": 1, "image": "docker.io/library/python:3.12", "reference": f"sha256:{seq}",
    }  # fmt: skip


def test_add_items_continues_a_run(tmp_path: Path) -> None:
    lg = ledger(tmp_path)
    run = lg.create_run(
        region="eu", items=[item(0)], images=["a"], skipped=[{"image": "b", "reason": "r1"}],
        now=NOW, deadline=None, owner="host:1",
    )  # fmt: skip
    added = lg.add_items(
        run, items=[item(1), item(2)], images=["b"], skipped=[{"image": "c", "reason": "r2"}]
    )
    assert [i.seq for i in added] == [1, 2] and all(i.id is not None for i in added)
    assert [i.seq for i in lg.items(run)] == [0, 1, 2]
    stored = lg.run(run)
    assert stored is not None and json.loads(stored.images) == ["a", "b"]
    # b was left out of the first part and planned in the second: no longer skipped.
    assert json.loads(stored.skipped) == [{"image": "c", "reason": "r2"}]


def test_reset_inflight_and_unfinished_run(tmp_path: Path) -> None:
    lg = ledger(tmp_path)
    first = lg.create_run(
        region="eu", items=[item(0), item(1), item(2)], images=["python:3.12"], skipped=[],
        now=NOW, deadline=None, owner="host:1",
    )  # fmt: skip
    ids = [i.id for i in lg.items(first)]
    assert ids[0] is not None and ids[1] is not None
    lg.update_item(ids[0], state="done")
    lg.update_item(ids[1], state="running")  # the process was killed while fetching it
    assert lg.unfinished_run("eu") is not None and lg.unfinished_run("us") is None
    assert lg.reset_inflight(first) == 1
    assert [i.state for i in lg.items(first)] == ["done", "pending", "pending"]
    lg.finish_run(first, "aborted", {"pending": 2}, NOW)
    unfinished = lg.unfinished_run("eu")
    assert unfinished is not None and unfinished.id == first  # a cut run can be resumed
    second = lg.create_run(
        region="eu", items=[item(0)], images=[], skipped=[], now=NOW, deadline=None, owner="h:2"
    )
    unfinished = lg.unfinished_run("eu")
    assert unfinished is not None and unfinished.id == second  # the newest first
    lg.finish_run(second, "done", {}, NOW)
    lg.finish_run(first, "failed", {}, NOW)
    assert lg.unfinished_run("eu") is None
