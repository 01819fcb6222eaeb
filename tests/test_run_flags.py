"""`warmer run`'s flags change what a run does, against the sandbox's real registries.

Each test gets fresh mirrors (real ``docker-registry`` proxies) over the session sandbox's
Docker-Hub-like front, whose counters say what crossed the upstream link; the eu mirror's
storage says what was warmed; the ledger says what was recorded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from test_warm import Topo, stored_at, topo  # noqa: F401 (topo is a fixture)

from warmer.store.ledger import Ledger

REDIS, PYTHON = "redis:7.4", "python:3.12"


def blob_bytes(t: Topo) -> int:
    """Blob bytes the front (the upstream link) served since the fixture reset it."""
    blobs: dict[str, dict[str, int]] = t.front.stats()["blobs"]
    return sum(b.get("bytes_served", 0) for b in blobs.values())


def blob_gets(t: Topo) -> int:
    blobs: dict[str, dict[str, int]] = t.front.stats()["blobs"]
    return sum(b.get("GET", 0) for b in blobs.values())


def layers(t: Topo, repository: str, tag: str) -> list[str]:
    return [x.digest for x in t.box.catalogue.tag(repository, tag).image("linux/amd64").layers]


def warm_at_eu(t: Topo, repository: str, digests: list[str]) -> list[bool | None]:
    return [stored_at(t.urls["eu"], repository, d) for d in digests]


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])  # type: ignore[no-any-return]


def nothing_recorded(t: Topo) -> None:
    ledger = Ledger(t.db_url)
    assert ledger.recent_runs(100) == []
    assert ledger.holdings_summary() == []


def set_window(t: Topo, cron: str, duration: str) -> None:
    text = t.config_path.read_text()
    old = '[regions.eu]\nmirrors = ["eu"]'
    assert old in text
    window = f'windows = [{{ cron = "{cron}", duration = "{duration}", timezone = "UTC" }}]'
    t.config_path.write_text(text.replace(old, f"{old}\n{window}"))


# --- --dry-run ----------------------------------------------------------------------------


def test_dry_run_fetches_no_blob_and_writes_no_ledger_row(topo: Topo) -> None:  # noqa: F811
    dry = topo.warmer("run", "--region", "eu", REDIS, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = last_json(dry.stdout)
    planned = {i["digest"] for i in plan["items"] if i["kind"] == "blob"}
    assert set(layers(topo, "library/redis", "7.4")) <= planned
    assert blob_gets(topo) == 0 and blob_bytes(topo) == 0  # manifests only
    assert warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")) == [False] * len(
        layers(topo, "library/redis", "7.4")
    )
    nothing_recorded(topo)
    # the same command without --dry-run fetches and records: the flag is what held it back
    real = topo.warmer("run", "--region", "eu", REDIS, "--json")
    assert real.exit_code == 0, real.output
    assert last_json(real.stdout)["done"] == len(plan["items"])
    assert blob_bytes(topo) > 0
    assert all(warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")))
    assert len(Ledger(topo.db_url).recent_runs(100)) == 1


# --- --budget ----------------------------------------------------------------------------


def test_budget_caps_the_bytes_a_run_moves(topo: Topo) -> None:  # noqa: F811
    both = ["run", "--region", "eu", REDIS, PYTHON]
    full = last_json(topo.warmer(*both, "--dry-run", "--json").stdout)
    assert sorted(full["images"]) == [
        "docker.io/library/python:3.12",
        "docker.io/library/redis:7.4",
    ]
    needed = sum(full["parent_bytes_by_mirror"].values())
    budget = 400_000  # redis alone needs ~324 kB across the region's links; both ~{needed}
    assert needed > budget
    capped = topo.warmer(*both, "--budget", str(budget), "--json")
    assert capped.exit_code == 0, capped.output
    stats = last_json(capped.stdout)
    moved = sum(stats["parent_bytes_by_mirror"].values())
    assert 0 < moved <= budget
    assert blob_bytes(topo) <= budget
    run = Ledger(topo.db_url).recent_runs(1)[0]
    assert json.loads(run.images) == ["docker.io/library/redis:7.4"]
    skipped = {s["image"]: s["reason"] for s in json.loads(run.skipped)}
    assert skipped["docker.io/library/python:3.12"].startswith("over budget")
    assert all(warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")))
    python_only = set(layers(topo, "library/python", "3.12")) - set(
        layers(topo, "library/redis", "7.4")
    )
    assert python_only and not any(warm_at_eu(topo, "library/python", sorted(python_only)))


def test_budget_zero_warms_nothing(topo: Topo) -> None:  # noqa: F811
    topo.warmer("run", "--region", "eu", REDIS, "--budget", "0", "--json")
    assert blob_gets(topo) == 0 and blob_bytes(topo) == 0
    assert not any(warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")))
    run = Ledger(topo.db_url).recent_runs(1)[0]
    assert [s["reason"].split(":")[0] for s in json.loads(run.skipped)] == ["over budget"]


def test_a_run_that_leaves_every_image_out_says_why_and_exits_1(topo: Topo) -> None:  # noqa: F811
    result = topo.warmer("run", "--region", "eu", REDIS, "--budget", "0")
    assert blob_gets(topo) == 0
    assert result.exit_code == 1
    assert "docker.io/library/redis:7.4" in result.output and "over budget" in result.output


# --- --window ----------------------------------------------------------------------------


def test_a_window_too_short_for_the_link_warms_nothing(topo: Topo) -> None:  # noqa: F811
    topo.mirrors["central"]["bandwidth"] = "50KB/s"  # each image needs seconds on that link
    topo.write()
    args = ["run", "--region", "eu", REDIS, PYTHON]
    plan = last_json(topo.warmer(*args, "--window", "1s", "--dry-run", "--json").stdout)
    assert plan["items"] == []
    assert {s["reason"].split(":")[0] for s in plan["skipped"]} == {"window too short"}
    result = topo.warmer(*args, "--window", "1s", "--json")
    assert last_json(result.stdout)["done"] == 0
    assert blob_gets(topo) == 0 and blob_bytes(topo) == 0
    assert not any(warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")))
    # a window long enough plans both: --window is what left them out
    plan = last_json(topo.warmer(*args, "--window", "1h", "--dry-run", "--json").stdout)
    assert len(plan["images"]) == 2 and plan["skipped"] == []


def test_window_zero_warms_nothing_and_says_why(topo: Topo) -> None:  # noqa: F811
    result = topo.warmer("run", "--region", "eu", REDIS, "--window", "0s")
    assert blob_gets(topo) == 0
    assert not any(warm_at_eu(topo, "library/redis", layers(topo, "library/redis", "7.4")))
    assert result.exit_code == 1
    assert "window" in result.stderr and "Traceback" not in result.output


# --- --in-window -------------------------------------------------------------------------


def test_in_window_outside_a_window_does_nothing(topo: Topo) -> None:  # noqa: F811
    far = (datetime.now(UTC).hour + 12) % 24  # a 1 h window twelve hours away
    set_window(topo, f"0 {far} * * *", "1h")
    result = topo.warmer("run", "--region", "eu", REDIS, "--in-window")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "outside its maintenance windows" in lines[0] and "'eu'" in lines[0]
    stats = topo.front.stats()
    assert blob_gets(topo) == 0 and stats["requests"].get("manifest", {}) == {}
    nothing_recorded(topo)


def test_in_window_inside_a_window_runs_to_its_end(topo: Topo) -> None:  # noqa: F811
    before = datetime.now(UTC)
    set_window(topo, f"0 {before.hour} * * *", "2h")  # opened this hour, for two hours
    result = topo.warmer("run", "--region", "eu", REDIS, "--in-window", "--json")
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout)["done"] > 0 and blob_bytes(topo) > 0
    run = Ledger(topo.db_url).recent_runs(1)[0]
    assert run.deadline is not None
    deadline = run.deadline.replace(tzinfo=UTC) if run.deadline.tzinfo is None else run.deadline
    # the deadline is the end of the window in progress: two hours after this hour began
    assert deadline.minute == 0 and deadline.second == 0
    assert 3600 < (deadline - before).total_seconds() <= 7200
