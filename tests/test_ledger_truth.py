"""The ledger against what real CNCF distribution mirrors hold: expiry at the mirror, a wiped
cache, a tag moving between plan and fetch, two runs at once, and resumed byte counts.

Time travel at a mirror is done as its operator could: stop it, edit the expiry times in
``scheduler-state.json`` under its storage root, start it again on the same port, and let its
scheduler delete what expired.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_refresh import Chain, RegistryFactory, make_chain

from warmer.cli.main import cli
from warmer.sandbox.procs import Proc, registry_binary, spawn, wait_ready
from warmer.store.leases import Leases
from warmer.store.ledger import Ledger
from warmer.upkeep.reconcile import reconcile
from warmer.upkeep.verify import verify
from warmer.warm.resolve import wants_from_args
from warmer.warm.run import plan_region

REDIS = "redis:7.4"


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from make_chain(registry_factory, tmp_path)


def mirror_proc(chain: Chain, name: str) -> Proc:
    url = chain.mirrors[name]["url"]
    return next(p for p in chain.procs if p.url == url)


def restart(chain: Chain, name: str, change: str) -> Proc:
    """Stop mirror ``name``; ``change`` its storage ("expire": every cached object expires
    two seconds after the restart; "wipe": storage gone); start it on the same port."""
    proc = mirror_proc(chain, name)
    root = proc.log.parent
    proc.stop()
    data = root / "data"
    if change == "wipe":
        shutil.rmtree(data)
    else:
        state_file = data / "scheduler-state.json"
        state = json.loads(state_file.read_text())
        assert state, "the mirror scheduled nothing to expire"
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
        for entry in state.values():
            entry["ExpiryData"] = soon
        state_file.write_text(json.dumps(state))
    fresh = spawn(name, [registry_binary(), "serve", str(root / "config.yml")], proc.log)
    fresh.url = proc.url
    wait_ready(fresh.url, fresh)
    chain.procs[chain.procs.index(proc)] = fresh
    if change == "expire":  # bounded: the scheduler deletes on its timers
        state_file = data / "scheduler-state.json"
        for _ in range(200):
            if json.loads(state_file.read_text() or "{}") == {}:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the mirror did not expire its objects in 20 s")
    return fresh


def wait_for_state_file(chain: Chain, name: str) -> None:
    """distribution writes its expiry schedule every few seconds: wait until it has."""
    state_file = mirror_proc(chain, name).log.parent / "data/scheduler-state.json"
    for _ in range(150):
        if state_file.exists() and json.loads(state_file.read_text() or "{}"):
            return
        time.sleep(0.1)
    pytest.fail("no scheduler-state.json after 15 s")


def planned_at(chain: Chain, mirror: str) -> list[str]:
    prepared = asyncio.run(
        plan_region(
            chain.config(), chain.ledger(), "eu", wants_from_args([REDIS]), now=datetime.now(UTC)
        )
    )
    return [i.digest for i in prepared.plan.items if i.mirror == mirror]


def test_objects_expired_at_the_mirror_are_found_lost_and_planned_again(chain: Chain) -> None:
    chain.warm("eu", REDIS)
    ledger = chain.ledger()
    now = datetime.now(UTC)
    held_eu = ledger.holdings(["eu"], now)
    held_central = ledger.holdings(["central"], now)
    assert held_eu and planned_at(chain, "eu") == []
    wait_for_state_file(chain, "eu")
    restart(chain, "eu", "expire")

    report = asyncio.run(verify(chain.config(), ledger, region="eu", sample=1.0, now=now))
    assert not report.ok
    lost = report.lost
    assert {x.digest for x in lost.lost} == {h.digest for h in held_eu}
    assert all(x.mirror == "eu" for x in lost.lost)
    # One blob HEAD for the whole batch (the smallest, relayed: its bytes were fetched by eu
    # from central); every other object of the batch was not asked for.
    smallest = min(h.size for h in held_eu if h.kind == "blob")
    assert lost.wan_bytes == smallest
    # The catalogs of central and eu, a HEAD per blob central still holds, one HEAD at eu.
    central_blobs = sum(1 for h in held_central if h.kind == "blob")
    assert lost.requests == 2 + central_blobs + 1
    assert lost.held == len(held_central)
    assert ledger.holdings(["eu"], datetime.now(UTC)) == []
    assert {h.digest for h in ledger.holdings(["central"], datetime.now(UTC))} == {
        h.digest for h in held_central
    }
    assert {i.kind for i in ledger.incidents()} == {"lost"}
    # The next plan warms eu again.
    assert set(planned_at(chain, "eu")) == {h.digest for h in held_eu}


def test_a_wiped_mirror_is_lost_entirely_at_no_cost_per_object(chain: Chain) -> None:
    chain.warm("eu", REDIS)
    ledger = chain.ledger()
    held = ledger.holdings(["eu"], datetime.now(UTC))
    restart(chain, "eu", "wipe")
    result = chain.warmer("reconcile", "--region", "eu", "--json")
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    assert out["lost"] == len(held) and out["wan_bytes"] == 0
    # Only catalogs were asked: central's (it still holds everything) is one, eu's the other,
    # plus central's blob HEADs (one per batch: all stored).
    assert all("catalog" in x["evidence"] for x in out["lost_objects"])
    assert out["held"] == len(ledger.holdings(["central"], datetime.now(UTC)))
    assert "Traceback" not in result.output
    assert set(planned_at(chain, "eu")) == {h.digest for h in held}
    # The mirror itself was asked for nothing it lost: its storage is still empty.
    data = mirror_proc(chain, "eu").log.parent / "data/docker/registry/v2/blobs"
    assert not data.exists() or not any(data.rglob("data"))


def test_a_blob_served_from_storage_keeps_the_mirrors_clock(chain: Chain) -> None:
    chain.warm("eu", REDIS)
    ledger = chain.ledger()
    before = {h.digest: h for h in ledger.holdings(["eu"], datetime.now(UTC))}
    # The ledger stops trusting eu's rows; the next run fetches them through eu again, and
    # eu answers every blob from its storage: their expiry is still the first fetch's.
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE holding SET state = 'incident' WHERE mirror = 'eu'")
    chain.warm("eu", REDIS)
    after = {h.digest: h for h in ledger.holdings(["eu"], datetime.now(UTC))}
    assert after.keys() == before.keys()
    for digest, h in after.items():
        if h.kind == "blob":
            assert h.expires_at == before[digest].expires_at
            assert h.first_fetched_at == before[digest].first_fetched_at
        else:  # a manifest answer cannot tell: the clock restarts (the later, safe guess)
            assert h.first_fetched_at is not None and h.expires_at is not None
            assert h.first_fetched_at >= before[digest].warmed_at
        assert h.warmed_at > before[digest].warmed_at


def test_two_runs_of_one_region_at_once(chain: Chain) -> None:
    # A slow WAN keeps the first run going while the second starts.
    chain.mirrors["central"]["bandwidth"] = "300KB/s"
    cfg = chain.write()
    argv = [str(Path(sys.executable).with_name("warmer")), "--config", str(cfg), "run"]
    argv += ["--region", "eu", "--json", REDIS, "alpine:3.20", "alpine:3.19"]
    chain.front.reset()
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The second starts once the first holds the region (bounded wait on the lease table).
    ledger = chain.ledger()
    # (Bounded at 60 s: a loaded machine can take seconds to start the first process; if
    # the second started before the lease existed, it would race the first, not meet it.)
    for _ in range(1200):
        with ledger.engine.connect() as conn:
            if conn.exec_driver_sql("SELECT 1 FROM job_lease WHERE name = 'run:eu'").first():
                break
        assert first.poll() is None, "the first run ended before it was seen holding eu"
        time.sleep(0.05)
    else:
        pytest.fail("the first run did not take the region's lease in 60 s")
    second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["seconds"] > 1.0  # it was still going
    assert second.returncode == 1
    (line,) = second.stderr.strip().splitlines()
    assert "region 'eu' is being warmed by host" in line and f"pid {first.pid}" in line
    assert "--wait" in line and "Traceback" not in second.stderr
    stats = chain.front.stats()
    # No blob fetched by both runs: a cold blob crosses the WAN at most twice through CNCF
    # distribution (the client's stream and the background store), never per run.
    assert stats["blobs"] and max(b.get("GET", 0) for b in stats["blobs"].values()) <= 2
    assert [r.state for r in ledger.recent_runs(10, "eu")] == ["done"]

    # --wait: the second waits for the first, then finds everything warm.
    chain.front.reset()
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    waited = subprocess.run([*argv, "--wait"], capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert all(r.state == "done" for r in ledger.recent_runs(10, "eu"))


def test_a_dead_holder_on_this_host_is_taken_over(chain: Chain) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    leases = Leases(chain.config().database.url)
    owner = f"{socket.gethostname()}:{gone.pid}"
    assert leases.try_acquire("run:eu", owner, timedelta(hours=1))
    result = chain.warmer("run", "--region", "eu", REDIS, "--json")
    assert result.exit_code == 0, result.output
    assert ledger_holds(chain.ledger(), "eu")
    assert leases.holder("run:eu") is None  # given back at the end


def ledger_holds(ledger: Ledger, mirror: str) -> bool:
    return bool(ledger.holdings([mirror], datetime.now(UTC)))


def test_reconcile_respects_its_budget(chain: Chain) -> None:
    chain.warm("eu", REDIS)
    ledger = chain.ledger()
    wait_for_state_file(chain, "eu")
    restart(chain, "eu", "expire")
    report = asyncio.run(reconcile(chain.config(), ledger, ["eu"], now=datetime.now(UTC), budget=0))
    # Every blob HEAD could cost its size: with no budget nothing is asked, nothing lost.
    assert report.lost == [] and report.wan_bytes == 0 and report.unchecked > 0


def test_a_tag_moving_between_plan_and_fetch_is_never_recorded_under_the_old_digest(
    chain: Chain,
) -> None:
    from warmer.warm.run import warm

    old = chain.catalogue.tag("library/redis", "7.4").digest
    moved: list[str] = []

    def move_after_planning(run_id: int, part: object) -> None:
        if not moved:  # once: the first run's plan is recorded, nothing fetched yet
            moved.append(chain.move("library/redis", "7.4").digest)

    cfg, ledger = chain.config(), chain.ledger()
    outcome = asyncio.run(
        warm(cfg, ledger, "eu", wants_from_args([REDIS]), now=datetime.now(UTC),
             on_run=move_after_planning)
    )  # fmt: skip
    (new,) = moved
    assert new != old
    (first_run, first), *later = outcome.runs
    assert [(m.planned, m.got) for m in first.moved] == [(old, new)]
    assert first.failed >= 1
    reasons = [i.reason for i in ledger.items(first_run) if i.state == "failed"]
    assert any("tag moved since planning" in r and new in r for r in reasons)
    # The new image was planned and warmed in a further pass of the same warm.
    assert later and all(stats.failed == 0 for _, stats in later)
    held = {(h.mirror, h.digest) for h in ledger.holdings(["central", "eu"], datetime.now(UTC))}
    assert ("central", new) in held and ("eu", new) in held
    assert not any(digest == old for _, digest in held)  # never fetched, never recorded
    drift = ledger.drifts()
    assert [(d.tag, d.old_digest, d.new_digest) for d in drift] == [("7.4", old, new)]


def test_a_resumed_run_reports_the_bytes_of_every_done_item(chain: Chain) -> None:
    from warmer.warm.run import execute, prepare, start_run

    cfg, ledger = chain.config(), chain.ledger()
    now = datetime.now(UTC)
    prepared = asyncio.run(prepare(cfg, ledger, "eu", wants_from_args([REDIS]), now=now))
    run_id = start_run(ledger, prepared, now, None)
    # Half the items were done by a process before this one (what a kill leaves behind).
    items = sorted(ledger.items(run_id), key=lambda i: i.seq)
    half = items[: len(items) // 2]
    first = asyncio.run(execute(cfg, ledger, run_id, deadline=None))
    assert first.done == len(items)
    for item in items[len(half) :]:
        assert item.id is not None
        ledger.update_item(item.id, state="pending", bytes=0)
    resumed = asyncio.run(execute(cfg, ledger, run_id, deadline=None))
    total = sum(i.bytes for i in ledger.items(run_id))
    assert resumed.done == len(items)
    assert sum(resumed.bytes_by_mirror.values()) == total == sum(first.bytes_by_mirror.values())


def test_status_shows_what_expires_before_the_next_window(chain: Chain) -> None:
    for m in chain.mirrors.values():
        m["ttl"] = "2h"
    chain.warm("eu", REDIS)
    held = chain.ledger().holdings(["eu"], datetime.now(UTC))
    # A window opening in about four hours: everything (2 h TTL) expires before it.
    later = (datetime.now(UTC) + timedelta(hours=4)).hour
    text = chain.config_path.read_text()
    old = '[regions.eu]\nmirrors = ["eu"]'
    window = f'windows = [{{ cron = "0 {later} * * *", duration = "1h", timezone = "UTC" }}]'
    chain.config_path.write_text(text.replace(old, f"{old}\n{window}"))
    result = CliRunner().invoke(
        cli, ["--config", str(chain.config_path), "status", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    expiring = {e["mirror"]: e for e in json.loads(result.stdout)["expiring_before_next_window"]}
    assert expiring["eu"]["objects"] == len(held)
    assert expiring["eu"]["bytes"] == sum(h.size for h in held)
    assert set(expiring) == {"central", "eu"}


def test_run_json_reports_the_manifest_requests_it_made(chain: Chain) -> None:
    chain.front.reset()
    result = chain.warmer("run", "--region", "eu", REDIS, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout.strip().splitlines()[-1])
    # Cold: every manifest resolved through central was fetched from the upstream once.
    gets = chain.front.stats()["requests"]["manifest"]["GET"]
    assert run["manifest_requests"] == gets == 2  # the index and the one platform manifest
    assert "upstream_manifest_requests_reserved" in run and "upstream_manifest_gets" not in run
    # Warm: the same requests are made to resolve, and central answers them from storage.
    chain.front.reset()
    again = json.loads(
        chain.warmer("run", "--region", "eu", REDIS, "--json").stdout.splitlines()[-1]
    )
    assert again["manifest_requests"] == 2
    assert chain.front.stats()["requests"].get("manifest", {}).get("GET", 0) == 0
