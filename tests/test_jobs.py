"""The service's jobs without processes: triggers, the job table, the warm guard, prune, freshness
hooks, the [serve] config and `warmer jobs`. (Window rules themselves: tests/test_windows.py.)"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pydantic import BaseModel
from test_warm import Topo, topo  # noqa: F401 (topo is a fixture)

from jobs import tasks
from jobs.metrics import Metrics
from jobs.schedule import Clock, CronStartTrigger, EveryTrigger, WindowTrigger
from jobs.service import job_specs
from jobs.tasks import Context, prune_before
from warmer.cli.main import cli
from warmer.config import ConfigError, ServeConfig, parse_config
from warmer.oci.reference import parse
from warmer.store import db
from warmer.store.ledger import Ledger, RunItem, as_utc, utcnow
from warmer.warm.resolve import RESERVE_REASON
from warmer.warm.run import FIRST_BATCH, execute
from warmer.windows import WindowSpec, current_window

ROOT = Path(__file__).resolve().parents[1]
BERLIN = WindowSpec("0 1 * * 1-5", timedelta(hours=3), "Europe/Berlin")
POLL = timedelta(seconds=30)
IDENTITY = Clock.make(datetime(2024, 1, 1, tzinfo=UTC))

BASE = """
[upstreams.hub]
url = "http://127.0.0.1:1"
aliases = ["docker.io"]
[mirrors.central]
url = "http://127.0.0.1:2"
parent = "hub"
[mirrors.eu]
url = "http://127.0.0.1:3"
parent = "central"
[regions.eu]
mirrors = ["eu"]
windows = [{ cron = "0 1 * * 1-5", duration = "3h", timezone = "Europe/Berlin" }]
[regions.us]
mirrors = ["central"]
windows = [{ cron = "0 2 * * *", duration = "2h", timezone = "America/New_York" }]
[regions.apac]
mirrors = ["central"]
"""


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# -- triggers -------------------------------------------------------------------------------


def test_window_trigger_fires_at_the_start_then_polls_until_the_end() -> None:
    t = WindowTrigger([BERLIN], IDENTITY, POLL)
    sunday = utc(2024, 6, 2, 12)
    # Monday 01:00 CEST = Sunday 23:00 UTC.
    assert t.get_next_fire_time(None, sunday) == utc(2024, 6, 2, 23)
    inside = utc(2024, 6, 3, 0, 30)  # a late start: fires at once
    assert t.get_next_fire_time(None, inside) == inside
    assert t.get_next_fire_time(inside, inside) == inside + POLL
    near_end = utc(2024, 6, 3, 1, 59, 50)  # the window ends at 02:00 UTC
    assert t.get_next_fire_time(near_end, near_end) == utc(2024, 6, 3, 23)  # Tuesday's start


def test_window_trigger_never_fires_outside_a_window_across_dst() -> None:
    # Every 2 h at :30 Berlin time around the spring-forward night, polled every 10 min.
    spec = WindowSpec("30 */2 * * *", timedelta(minutes=40), "Europe/Berlin")
    t = WindowTrigger([spec], IDENTITY, timedelta(minutes=10))
    now, prev = utc(2024, 3, 30, 18), None
    starts_seen: set[datetime] = set()
    while now < utc(2024, 4, 1, 6):
        fire = t.get_next_fire_time(prev, now)
        assert fire is not None
        window = current_window([spec], fire)
        assert window is not None, fire  # only ever inside a window
        starts_seen.add(window.start)
        prev = now = fire
    starts = sorted(starts_seen)
    # 02:30 CET on 31 March does not exist: that window starts at 01:30 UTC, once.
    assert utc(2024, 3, 31, 1, 30) in starts
    assert all(b - a >= timedelta(hours=1) for a, b in itertools.pairwise(starts))


def test_cron_trigger_uses_crontab_weekdays_and_fires_once_per_start() -> None:
    t = CronStartTrigger("0 6 * * 0", "UTC", IDENTITY)  # Sunday = 0, as in crontab
    saturday = utc(2024, 6, 1, 12)
    first = t.get_next_fire_time(None, saturday)
    assert first == utc(2024, 6, 2, 6) and first.weekday() == 6
    assert t.get_next_fire_time(first, first) == utc(2024, 6, 9, 6)


def test_a_scaled_clock_compresses_windows_and_keeps_real_deadlines() -> None:
    real0 = utc(2024, 6, 1, 12)
    clock = Clock.make(real0, scale=60.0, origin=utc(2024, 1, 1, 0, 59))
    assert clock.real(clock.sim(real0 + timedelta(seconds=7))) == real0 + timedelta(seconds=7)
    spec = WindowSpec("0 1 * * *", timedelta(hours=1), "UTC")
    t = WindowTrigger([spec], clock, timedelta(seconds=1))
    # One simulated minute to the window = one real second; it lasts one real minute.
    start = t.get_next_fire_time(None, real0)
    assert start == real0 + timedelta(seconds=1)
    window = t.window_at(start + timedelta(seconds=30))
    assert window is not None and clock.real(window.end) == real0 + timedelta(seconds=61)
    every = EveryTrigger(timedelta(hours=1), clock)
    assert every.get_next_fire_time(real0, real0) == real0 + timedelta(minutes=1)


# -- the job table --------------------------------------------------------------------------


def test_job_table_for_the_whole_service_and_for_a_regional_agent() -> None:
    cfg = parse_config(tomllib.loads(BASE + '[serve.ingest]\npaths = ["/logs"]\n'))
    ids = [j.id for j in job_specs(cfg, sorted(cfg.regions), True, IDENTITY)]
    assert ids[:2] == ["ingest", "rank"] and ids[-1] == "prune"
    assert {"warm:eu", "warm:us", "refresh:apac", "verify:apac"} <= set(ids)
    assert "warm:apac" not in ids  # no windows: never warmed by the service
    agent = [j.id for j in job_specs(cfg, ["eu"], False, IDENTITY)]
    assert agent == ["warm:eu", "refresh:eu", "verify:eu"]
    no_paths = parse_config(tomllib.loads(BASE))
    assert "ingest" not in [j.id for j in job_specs(no_paths, ["eu"], True, IDENTITY)]


# -- job functions --------------------------------------------------------------------------


def _ctx(tmp_path: Path, extra: str = "", clock: Clock = IDENTITY) -> Context:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = parse_config(tomllib.loads(f'[database]\nurl = "{url}"\n' + BASE + extra))
    return Context(cfg, Ledger(url), clock, sorted(cfg.regions))


async def test_warm_outside_its_window_starts_nothing(tmp_path: Path) -> None:
    # Schedule time pinned to a Sunday noon: eu's weekday window is closed.
    clock = Clock.make(datetime.now(UTC), origin=utc(2024, 6, 2, 12))
    ctx = _ctx(tmp_path, '[serve.warm]\nimages = ["python:3.12"]\n', clock)
    assert await tasks.warm(ctx, "eu") == {"outcome": "outside-window"}
    assert await tasks.warm(ctx, "apac") == {"outcome": "outside-window"}  # no windows at all
    assert ctx.ledger.recent_runs(5) == []


async def test_warm_in_a_served_window_does_not_start_a_second_run(tmp_path: Path) -> None:
    clock = Clock.make(datetime.now(UTC), origin=utc(2024, 6, 3, 0, 30))  # inside eu's window
    ctx = _ctx(tmp_path, '[serve.warm]\nimages = ["python:3.12"]\n', clock)
    now = datetime.now(UTC)
    rid = ctx.ledger.create_run(
        region="eu", items=[], images=[], skipped=[], now=now, deadline=None, owner="x:1"
    )
    ctx.ledger.finish_run(rid, "done", {}, now)
    assert await tasks.warm(ctx, "eu") == {"outcome": "served", "run": rid}


def test_prune_deletes_old_history_and_keeps_what_may_resume(tmp_path: Path) -> None:
    from analytics.store import usage

    url = f"sqlite:///{tmp_path / 'p.db'}"
    ledger = Ledger(url)
    old, new = utc(2024, 1, 1), utc(2024, 6, 1)
    item = {
        "seq": 0, "mirror": "m", "tier": 0, "repository": "r", "upstream_repository": "r",
        "kind": "blob", "digest": "sha256:" + "0" * 64, "size": 1, "image": "i", "reference": "x",
    }  # fmt: skip

    def run(at: datetime, state: str) -> int:
        rid = ledger.create_run(
            region="eu", items=[item], images=[], skipped=[], now=at, deadline=None, owner="o"
        )
        if state != "running":
            ledger.finish_run(rid, state, {}, at)
        return rid

    old_done, old_running, new_done = run(old, "done"), run(old, "running"), run(new, "done")
    row = {"hour": 1, "region": "eu", "image": "i", "tag": "t", "digest": "", "source": "s",
           "pulls": 1, "present": 0}  # fmt: skip
    with db.engine_for(url).begin() as conn:
        conn.execute(usage.insert(), [{**row, "day": old.date()}, {**row, "day": new.date()}])
    deleted = prune_before(url, utc(2024, 3, 1))
    assert deleted["run"] == 1 and deleted["run_item"] == 1 and deleted["analytics_usage"] == 1
    assert ledger.run(old_done) is None and ledger.items(old_done) == []
    assert ledger.run(old_running) is not None and ledger.run(new_done) is not None
    with db.engine_for(url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(usage)).scalar() == 1


async def test_refresh_and_verify_jobs_call_the_freshness_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warmer.upkeep.refresh
    import warmer.upkeep.verify

    calls: list[tuple[str, dict[str, Any]]] = []

    class Report:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

        def as_dict(self) -> dict[str, Any]:
            return {"checked": 3, "ok": self.ok}

    def fake(name: str, ok: bool) -> Any:
        async def run(config: Any, ledger: Any, **kw: Any) -> Report:
            calls.append((name, kw))
            return Report(ok)

        return run

    monkeypatch.setattr(warmer.upkeep.refresh, "refresh", fake("refresh", True))
    monkeypatch.setattr(warmer.upkeep.verify, "verify", fake("verify", False))
    ctx = _ctx(tmp_path, "[serve.verify]\ncron = '0 6 * * 0'\nsample = 0.25\n")
    assert (await tasks.refresh(ctx, "eu"))["outcome"] == "ok"
    got = await tasks.verify(ctx, "eu")
    assert got["outcome"] == "failed" and got["checked"] == 3  # a failed verification shows
    assert calls[0][0] == "refresh" and calls[0][1]["region"] == "eu"
    assert calls[1][1]["sample"] == 0.25 and calls[1][1]["region"] == "eu"


# -- config and CLI -------------------------------------------------------------------------


def test_every_serve_key_is_documented_in_the_example() -> None:
    from warmer import config as c

    text = (ROOT / "config.example.toml").read_text()
    models: list[type[BaseModel]] = [ServeConfig, c.ServeIngestConfig, c.ServeWarmConfig,
                                     c.ServeCronConfig, c.ServeVerifyConfig]  # fmt: skip
    missing = [
        f"{m.__name__}.{name}"
        for m in models
        for name in m.model_fields
        if not re.search(rf"(^|[\s#\[{{.]){name}\b", text, re.M)
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ("[serve]\nmetrics_prot = 1\n", "serve.metrics_prot: unknown key"),
        ("[serve.refresh]\ncron = '0 5 * *'\n", "serve.refresh"),
        ("[serve]\nlease_ttl = '1s'\n", "lease_ttl must be at least 3s"),
        ("[serve]\ntime_origin = 2024-01-01T00:00:00\n", "serve.time_origin: needs a UTC offset"),
        ("[serve.ingest]\nevery = 'often'\n", "serve.ingest.every"),
    ],
)
def test_bad_serve_config_names_the_key(extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_config(tomllib.loads(BASE + extra))


def test_jobs_command_lists_jobs_and_next_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "w.db"}"\n' + BASE)
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(cfg), "jobs", "--json", "--region", "eu"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)["jobs"]}
    assert set(rows) == {"warm:eu", "refresh:eu", "verify:eu"}
    nxt = datetime.fromisoformat(rows["warm:eu"]["next_run"])
    assert nxt > datetime.now(UTC) - timedelta(seconds=5)
    assert current_window([BERLIN], nxt) is not None  # a window start, or now inside one
    bad = runner.invoke(cli, ["--config", str(cfg), "jobs", "--region", "mars"])
    assert bad.exit_code == 2 and "unknown region 'mars'" in bad.stderr
    bad = runner.invoke(cli, ["--config", str(cfg), "serve", "--region", "mars"])
    assert bad.exit_code == 2 and "unknown region 'mars'" in bad.stderr


ITEM = {
    "seq": 0, "mirror": "central", "tier": 0, "repository": "library/python",
    "upstream_repository": "library/python", "kind": "manifest", "digest": "sha256:" + "a" * 64,
    "size": 10, "image": "docker.io/library/python:3.12", "reference": "3.12",
}  # fmt: skip


@pytest.mark.parametrize(
    "states", [[], ["done"], ["done", "failed"]], ids=["empty", "done", "failed"]
)
def test_the_executor_closes_a_run_with_nothing_pending(tmp_path: Path, states: list[str]) -> None:
    # Everything already warm, or everything done before a resume: the executor starts
    # nothing and closes the run, even with its deadline past (an empty wait once raised).
    ctx = _ctx(tmp_path, "[run]\nretries = 0\n")
    now = datetime.now(UTC)
    rid = ctx.ledger.create_run(
        region="eu", items=[{**ITEM, "seq": n} for n in range(len(states))], images=[],
        skipped=[], now=now, deadline=now, owner="x:1",
    )  # fmt: skip
    for item, state in zip(ctx.ledger.items(rid), states, strict=True):
        assert item.id is not None
        ctx.ledger.update_item(item.id, state=state)
    stats = asyncio.run(execute(ctx.config, ctx.ledger, rid, deadline=now - timedelta(seconds=1)))
    run = ctx.ledger.run(rid)
    assert run is not None and run.state == ("failed" if "failed" in states else "done")
    assert (stats.done, stats.failed, stats.pending) == (
        states.count("done"), states.count("failed"), 0,
    )  # fmt: skip
    assert ctx.ledger.unfinished_run("eu") is None  # not resumed at every poll


async def test_the_service_resumes_a_run_with_nothing_left_and_closes_it(tmp_path: Path) -> None:
    # A replica killed after the last item was done, before the run was closed.
    clock = Clock.make(datetime.now(UTC), origin=utc(2024, 6, 3, 0, 30))  # inside eu's window
    ctx = _ctx(tmp_path, '[run]\nretries = 0\n[serve.warm]\nimages = ["python:3.12"]\n', clock)
    now = datetime.now(UTC)
    rid = ctx.ledger.create_run(
        region="eu", items=[ITEM], images=[str(ITEM["image"])], skipped=[],
        now=now - timedelta(days=1), deadline=now - timedelta(hours=20), owner="gone:1",
    )  # fmt: skip
    (item,) = ctx.ledger.items(rid)
    assert item.id is not None
    ctx.ledger.update_item(item.id, state="done")
    summary = await tasks.warm(ctx, "eu")
    assert summary["outcome"] == "ok" and summary["resumed"] and summary["run"] == rid, summary
    assert summary["done"] == 1 and summary["pending"] == 0
    run = ctx.ledger.run(rid)
    assert run is not None and run.state == "done"
    # The next poll in the window starts the window's own run (mirrors unreachable here).
    again = await tasks.warm(ctx, "eu")
    assert not again["resumed"] and again["run"] != rid


# -- the service's warm is `warmer run`'s, over the sandbox ---------------------------------


class WatchedLedger(Ledger):
    """Notes each part of a run's plan as it is recorded: (images, when)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.parts: list[tuple[int, datetime]] = []

    def create_run(self, **kwargs: Any) -> int:
        self.parts.append((len(kwargs["images"]), utcnow()))
        return super().create_run(**kwargs)

    def add_items(self, run_id: int, **kwargs: Any) -> list[RunItem]:
        self.parts.append((len(kwargs["images"]), utcnow()))
        return super().add_items(run_id, **kwargs)


def _service_ctx(topology: Topo, region: str, images: list[str]) -> Context:
    """The service's context over a test topology: ``region`` in a window open for 12 h."""
    raw = tomllib.loads(topology.config_path.read_text())
    raw["regions"][region]["windows"] = [{"cron": "0 0 * * *", "duration": "12h"}]
    raw["serve"] = {"warm": {"images": images}}
    cfg = parse_config(raw)
    clock = Clock.make(datetime.now(UTC), origin=utc(2024, 1, 1, 0, 0, 5))
    metrics = Metrics(topology.db_url, [region])
    return Context(cfg, WatchedLedger(topology.db_url), clock, [region], metrics)


async def test_the_service_warm_starts_on_its_first_images_while_the_rest_resolve(
    topo: Topo,  # noqa: F811
) -> None:
    refs = [f"{t.repository}:{t.tag}" for t in topo.box.catalogue.tags][: FIRST_BATCH + 12]
    topo.front.configure(latency_ms=40)  # resolving the rest takes round trips meanwhile
    ctx = _service_ctx(topo, "both", refs)
    summary = await tasks.warm(ctx, "both")
    assert summary["outcome"] == "ok" and summary["failed"] == 0, summary
    ledger = ctx.ledger
    assert isinstance(ledger, WatchedLedger)
    (run,) = ledger.recent_runs(5, "both")
    assert run.id == summary["run"] and run.state == "done"
    items = ledger.items(summary["run"])
    assert items and {i.state for i in items} == {"done"}
    assert set(json.loads(run.images)) == {str(parse(r)) for r in refs}
    # Recorded in two parts: the first FIRST_BATCH images, then the rest, added to the run
    # once it was already fetching.
    assert [images for images, _ in ledger.parts] == [FIRST_BATCH, len(refs) - FIRST_BATCH]
    started = min(at for i in items if (at := as_utc(i.started_at)) is not None)
    assert started < ledger.parts[1][1]


async def test_the_service_warm_warms_what_the_reserve_held_back_in_a_later_pass(
    topo: Topo,  # noqa: F811
) -> None:
    topo.reserve = 10
    topo.run["ratelimit_poll"] = "1s"
    topo.write()
    # 4 GETs above the reserve in a 4-second sliding window: two images now (index + amd64
    # each), the third once the first GETs have left the window.
    topo.front.configure(ratelimit_limit=14, ratelimit_window=4, ratelimit_reset=True)
    images = ["python:3.12", "node:20", "redis:7.4"]
    ctx = _service_ctx(topo, "eu", images)
    summary = await tasks.warm(ctx, "eu")
    assert summary["outcome"] == "ok" and summary["held_back"] == 0, summary
    first, second = reversed(ctx.ledger.recent_runs(5, "eu"))  # one run per pass
    assert [r["run"] for r in summary["runs"]] == [first.id, second.id]
    (held,) = json.loads(first.skipped)
    assert held["reason"].startswith(RESERVE_REASON)
    assert json.loads(second.images) == [held["image"]]
    assert first.state == second.state == "done"
    assert topo.front.stats()["throttled"] == 0  # the limit itself was never hit
    # The image warmed in the second pass counts as served demand.
    assert ctx.metrics is not None
    demand = {
        kind: ctx.metrics.registry.get_sample_value(
            "warmer_demand_pulls", {"region": "eu", "kind": kind}
        )
        for kind in ("predicted", "served")
    }
    assert demand == {"predicted": 3.0, "served": 3.0}
    assert await tasks.warm(ctx, "eu") == {"outcome": "served", "run": second.id}


async def test_ingest_job_reads_the_configured_paths_then_rank_stores_a_ranking(
    tmp_path: Path,
) -> None:
    from analytics.store import usage_frame
    from warmer.store.rankings import latest_ranking

    logs = tmp_path / "logs"
    logs.mkdir()
    sample = Path(__file__).parent / "data" / "logs" / "docker-pull.log"
    (logs / "eu-runner.log").write_bytes(sample.read_bytes())
    extra = f'[serve.ingest]\npaths = ["{logs}"]\n[analytics.regions]\ndefault = "eu"\n'
    ctx = _ctx(tmp_path, extra)
    first = await tasks.ingest(ctx)
    assert first["outcome"] == "ok" and first["missing"] == []
    usage = usage_frame(ctx.url)
    assert len(usage) > 0 and set(usage["region"]) == {"eu"}
    pulls = int(usage["pulls"].sum())
    # A second pass reads nothing new (idempotent); an appended line is read.
    again = await tasks.ingest(ctx)
    assert again["outcome"] == "ok"
    assert int(usage_frame(ctx.url)["pulls"].sum()) == pulls
    with open(logs / "eu-runner.log", "ab") as f:
        f.write(sample.read_bytes())
    await tasks.ingest(ctx)
    assert int(usage_frame(ctx.url)["pulls"].sum()) == 2 * pulls
    ranked = await tasks.rank(ctx)
    assert ranked["outcome"] == "ok", ranked
    assert len(latest_ranking(ctx.url, "eu")) > 0
