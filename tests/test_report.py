"""The notebooks' loaders and reshapes (analytics.report) over a small real database.

``build_sample`` is also the database the notebook test executes the notebooks against: a
generated two-week workload stored through the store's own writers, a stored ranking, and
two warm runs with items, holdings and an incident (the notebook test adds a drift event).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analytics import report, store
from analytics.events import Event
from analytics.generate.workload import Params, Workload, generate
from analytics.generate.write import write_meta
from analytics.rank import rank
from analytics.staticrefs import StaticRef, classify
from warmer.oci.reference import Reference, parse
from warmer.store.ledger import Ledger
from warmer.store.rankings import save_ranking

PARAMS = Params(weeks=2, pipelines_per_region=5, seed=1)
RUN_START = datetime(2024, 3, 18, 1, 0, tzinfo=UTC)
CAPS = {"central": 40_000_000, "eu": 200_000_000, "us": 200_000_000}


@dataclass
class Sample:
    root: Path
    url: str
    catalogue: Path
    config: Path
    work: Workload
    items: list[dict[str, Any]]  # what was written per run item (run, mirror, tier, state ...)


def _events(work: Workload) -> list[Event]:
    refs: dict[str, Reference] = {}
    out = []
    for row in work.pulls.itertuples(index=False):
        text = f"{row.image}:{row.tag}"
        ref = refs.get(text) or refs.setdefault(text, parse(text))
        out.append(
            Event(
                timestamp=row.timestamp.to_pydatetime(),
                reference=ref,
                digest=row.digest,
                source=row.source,
                pipeline=row.pipeline or None,
                region=row.region,
                pulled=bool(row.pulled),
            )
        )
    return out


@dataclass(frozen=True)
class _Dated:
    """A reference as ``warmer refs`` dates it (``analytics.staticrefs.history.Dated``)."""

    ref: StaticRef
    first_seen: datetime
    last_seen: datetime
    present: bool
    dated_by: str


def _static(work: Workload, scanned: datetime) -> list[_Dated]:
    """The references named at the end, dated at ``scanned`` (as a scan outside git dates
    them), and those the generator's history removed, with their commit dates."""
    out = []
    for r in work.static.itertuples(index=False):
        ref = StaticRef(
            r.file, int(r.line), parse(r.reference), classify(Path(r.file)) or "", "image"
        )
        if pd.isna(r.removed):
            out.append(_Dated(ref, scanned, scanned, True, "scan"))
        else:
            first, removed = r.first_seen.to_pydatetime(), r.removed.to_pydatetime()
            out.append(_Dated(ref, first, removed, False, "git"))
    return out


def _config(path: Path, url: str) -> None:
    mirrors = [("central", "dockerhub", "40MB/s"), ("eu", "central", "200MB/s")]
    mirrors.append(("us", "central", "200MB/s"))
    text = f'[database]\nurl = "{url}"\n\n[upstreams.dockerhub]\nurl = "http://127.0.0.1:9"\n'
    for name, parent, cap in mirrors:
        text += f'\n[mirrors.{name}]\nurl = "http://127.0.0.1:9"\nparent = "{parent}"\n'
        text += f'[mirrors.{name}.link]\nbandwidth = "{cap}"\n'
    path.write_text(text)


def _runs(url: str) -> list[dict[str, Any]]:
    """Two runs (eu, us) through central: each blob at tier 0 then tier 1, 2 s apart."""
    ledger = Ledger(url)
    written: list[dict[str, Any]] = []
    for n, region in enumerate(("eu", "us")):
        start = RUN_START + timedelta(hours=n)
        specs: list[tuple[int, str, int, str, int]] = []
        for k in range(6):
            size = (k + 1) * 1_000_000
            digest = f"sha256:{region}{k:062d}"
            for tier, mirror in ((0, "central"), (1, region)):
                specs.append((len(specs), mirror, tier, digest, size))
        common = {"instance": "", "repository": "library/python", "kind": "blob"}
        common |= {"upstream_repository": "library/python", "image": "python:3.12"}
        common |= {"reference": "docker.io/library/python:3.12"}
        items = [
            {**common, "seq": seq, "mirror": mirror, "tier": tier, "digest": digest}
            | {"size": size, "parent_cost": 2 * size}
            for seq, mirror, tier, digest, size in specs
        ]
        run_id = ledger.create_run(
            region=region, items=items, images=["docker.io/library/python:3.12"], skipped=[],
            now=start, deadline=start + timedelta(hours=3), owner="test",
        )  # fmt: skip
        by_mirror: dict[str, int] = {}
        for item in ledger.items(run_id):
            assert item.id is not None
            began = start + timedelta(seconds=2 * item.tier + item.seq % 3)
            state = "failed" if (region, item.seq) == ("us", 11) else "done"
            moved = item.size if state == "done" else 0
            ledger.update_item(
                item.id, state=state, bytes=moved, started_at=began,
                finished_at=began + timedelta(seconds=1.5),
            )  # fmt: skip
            written.append({"run": run_id, "mirror": item.mirror, "tier": item.tier,
                            "state": state, "bytes": moved, "parent_cost": item.parent_cost})  # fmt: skip
            if state == "done":
                by_mirror[item.mirror] = by_mirror.get(item.mirror, 0) + moved
                ledger.record_holding(
                    mirror=item.mirror, instance="", repository="library/python", kind="blob",
                    digest=item.digest, size=moved, now=began, ttl=None, run_id=run_id,
                )  # fmt: skip
        summary: dict[str, Any] = {"done": 11 if region == "us" else 12, "seconds": 5.5}
        summary |= {"failed": int(region == "us"), "bytes_by_mirror": by_mirror}
        ledger.finish_run(run_id, "failed" if region == "us" else "done", summary, start)
    ledger.record_incident(
        mirror="eu", repository="library/python", digest="sha256:" + "e" * 64,
        kind="digest-mismatch", detail="served bytes hash to sha256:ffff",
        now=RUN_START + timedelta(minutes=5), run_id=1,
    )  # fmt: skip
    return written


def record_drift(url: str) -> None:
    """One drift event: python:3.12 moved, eu served the old digest for two minutes."""
    Ledger(url).record_drift(
        image="docker.io/library/python", tag="3.12", upstream="dockerhub",
        old_digest="sha256:" + "1" * 64, new_digest="sha256:" + "2" * 64,
        detected_at=RUN_START + timedelta(days=1), moved_after=RUN_START,
        stale_tiers=[{"mirror": "eu", "tier": 1, "seconds": 120.0}],
    )  # fmt: skip


def build_sample(root: Path) -> Sample:
    """The small database (and catalogue, config) the notebooks and these tests read."""
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'warmer.db'}"
    work = generate(PARAMS)
    store.add_events(url, _events(work))
    scanned = PARAMS.start - timedelta(days=1)
    store.add_dated_refs(url, _static(work, scanned), now=scanned)
    end = PARAMS.start + timedelta(weeks=PARAMS.weeks)
    usage, static = store.usage_frame(url), store.static_frame(url)
    for region in PARAMS.regions:
        save_ranking(url, rank(usage, static, end, region=region), computed_at=end)
    write_meta(work, root / "ci")
    _config(root / "warmer.toml", url)
    items = _runs(url)
    return Sample(root, url, root / "ci" / "catalogue.json", root / "warmer.toml", work, items)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    return build_sample(tmp_path_factory.mktemp("report"))


# -- usage ------------------------------------------------------------------------------


def test_usage_reshapes_add_up_to_the_generated_pulls(sample: Sample) -> None:
    pulls = sample.work.pulls
    usage = report.load_usage(sample.url)
    by_region = report.pulls_by_region(usage)
    assert by_region.sum().to_dict() == pulls.groupby("region").size().to_dict()
    assert len(by_region) == 7 * PARAMS.weeks  # every day, weekends included
    grid = report.hour_weekday(usage)
    assert grid.shape == (7, 24) and list(grid.index) == list(report.WEEKDAYS)
    assert int(grid.to_numpy().sum()) == len(pulls)
    ts = pulls["timestamp"]
    busiest = pulls.groupby([ts.dt.dayofweek, ts.dt.hour]).size().idxmax()
    assert grid.stack().idxmax() == (report.WEEKDAYS[busiest[0]], busiest[1])


def test_top_images_ranks_the_most_pulled_tag_first(sample: Sample) -> None:
    pulls = sample.work.pulls
    top = report.top_images(report.load_usage(sample.url), n=5)
    counts = (pulls["image"] + ":" + pulls["tag"]).value_counts()
    assert len(top) == 5
    assert top["reference"].iloc[0] == counts.index[0]
    assert top["pulls"].iloc[0] == counts.iloc[0]
    assert top["pulls"].is_monotonic_decreasing


def test_static_against_observed_classifies_each_tag(sample: Sample) -> None:
    usage, static = report.load_usage(sample.url), report.load_static(sample.url)
    table = report.static_vs_observed(usage, static)
    assert set(table["status"]) <= {"named and pulled", "named, never pulled", "pulled, not named"}
    live = static[static["removed"].isna()]  # a removed reference names nothing now
    named = set(zip(live["image"], live["tag"], strict=True))
    pulled = set(zip(usage["image"], usage["tag"], strict=True))
    assert len(table) == len(named | pulled)
    for row in table.itertuples(index=False):
        key = (row.image, row.tag)
        assert (row.files > 0) == (key in named) and (row.pulls > 0) == (key in pulled)


def test_files_that_stopped_naming_a_pulled_tag_are_shown_with_its_pulls(sample: Sample) -> None:
    usage, static = report.load_usage(sample.url), report.load_static(sample.url)
    shown = report.files_stopped_naming(usage, static, n=3)
    assert set(shown.columns) == {"reference", "day", "pulls", "files"}
    refs = list(dict.fromkeys(shown["reference"]))
    assert 1 <= len(refs) <= 3
    gen = sample.work.static
    for ref in refs:
        one = shown[shown["reference"] == ref]
        assert len(one) == 7 * PARAMS.weeks  # every day of the usage, quiet ones as 0
        assert one["files"].iloc[-1] < one["files"].max()  # fewer files name it at the end
        image, tag = ref.rsplit(":", 1)
        mine = gen[(gen["image"] == image) & (gen["tag"] == tag)]
        assert mine["removed"].notna().any()  # the generator's history removed a reference
        pulled = usage[(usage["image"] == image) & (usage["tag"] == tag)]["pulls"].sum()
        assert one["pulls"].sum() == pulled
    # Without dated removals (references dated by a scan only), nothing is shown.
    assert report.files_stopped_naming(usage, static[static["removed"].isna()]).empty


def test_missing_sqlite_database_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "warmer.db"
    with pytest.raises(report.MissingDatabase, match="warmer demo"):
        report.load_usage(f"sqlite:///{path}")
    assert not path.exists()


# -- backtest ---------------------------------------------------------------------------


def test_backtest_curve_has_every_strategy_at_every_budget(sample: Sample) -> None:
    budgets = [200_000_000, 2_000_000_000]
    curve = report.load_backtest(sample.url, sample.catalogue, budgets, regions=["eu"])
    assert set(curve["strategy"]) == {
        "ensemble",
        "model",
        "yesterday",
        "seasonal",
        "frequency",
        "decayed",
        "static",
        "oracle",
    }
    assert sorted(curve["budget"].unique()) == budgets
    assert (curve["days"] == 7 * PARAMS.weeks - 7).all()
    assert curve["byte_hit_rate"].between(0, 1).all()
    rate = curve.set_index(["budget", "strategy"])["byte_hit_rate"]
    assert rate[(budgets[1], "oracle")] > rate[(budgets[0], "oracle")]  # more budget, more hits


def test_ensemble_weights_per_region_and_day(sample: Sample) -> None:
    weights = report.load_ensemble_weights(sample.url, regions=["eu", "us"])
    assert list(weights.columns) == ["region", "day", "predictor", "weight"]
    assert set(weights["region"]) == {"eu", "us"}
    assert weights["day"].nunique() == 7 * PARAMS.weeks - 7
    per_day = weights.groupby(["region", "day"])["weight"]
    assert (per_day.sum() - 1).abs().max() < 1e-9
    assert (per_day.count() == 6).all()
    # The first scored day has no record yet: the prior, the model's half.
    first = weights[weights["day"] == weights["day"].min()].set_index(["region", "predictor"])
    assert first.loc[("eu", "model"), "weight"] == pytest.approx(0.5)


# -- operations -------------------------------------------------------------------------


def test_runs_and_items_come_back_from_the_ledger(sample: Sample) -> None:
    runs = report.load_runs(sample.url)
    assert list(runs["region"]) == ["eu", "us"]
    assert list(runs["state"]) == ["done", "failed"]
    items = report.load_items(sample.url, runs["run"])
    written = pd.DataFrame(sample.items)
    assert len(items) == len(written)
    assert items["bytes"].sum() == written["bytes"].sum()
    assert (items.loc[items["state"] == "failed", "mirror"] == "us").all()
    assert str(items["started_at"].dt.tz) == "UTC"
    tiers = report.run_tiers(items)
    assert tiers["failed"].sum() == 1 and tiers["done"].sum() == len(written) - 1


def test_tier_bytes_accumulate_to_what_was_warmed(sample: Sample) -> None:
    items = report.load_items(sample.url, report.load_runs(sample.url)["run"])
    curve = report.tier_bytes_over_time(items)
    written = pd.DataFrame(sample.items).groupby("tier")["bytes"].sum()
    assert curve.iloc[-1].to_dict() == {f"tier {t}": float(b) for t, b in written.items()}
    assert curve.index.is_monotonic_increasing


def test_link_rate_spreads_each_items_parent_cost_over_its_transfer(sample: Sample) -> None:
    items = report.load_items(sample.url, report.load_runs(sample.url)["run"])
    rate = report.link_rate(items, bins=40)
    done = items[items["state"] == "done"]
    for (run, mirror), sel in rate.groupby(["run", "mirror"]):
        width = sel["t"].diff().dropna().iloc[0]
        moved = done[(done["run"] == run) & (done["mirror"] == mirror)]["parent_cost"].sum()
        assert (sel["rate"] * width).sum() == pytest.approx(moved)
    # eu's run: central starts two blobs at 0 s (1 MB and 4 MB, each fetched twice upstream)
    # and moves them over 1.5 s
    first = rate[(rate["run"] == 1) & (rate["mirror"] == "central")]
    assert first["rate"].iloc[0] == pytest.approx(10_000_000 / 1.5)


def test_link_caps_come_from_the_config(sample: Sample, tmp_path: Path) -> None:
    assert report.load_link_caps(sample.config) == {k: float(v) for k, v in CAPS.items()}
    assert report.load_link_caps(tmp_path / "absent.toml") == {}
    assert report.load_link_caps(None) == {}


def test_incidents_holdings_and_drift(sample: Sample, tmp_path: Path) -> None:
    incidents = report.load_incidents(sample.url)
    assert list(incidents["kind"]) == ["digest-mismatch"]
    assert incidents["mirror"].iloc[0] == "eu"
    holdings = report.load_holdings(sample.url)
    assert set(holdings["state"]) == {"warm"}  # the incident's digest was never held
    assert holdings["items"].sum() == sum(1 for i in sample.items if i["state"] == "done")
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    Ledger(url)
    assert report.load_drift(url).empty  # no drift recorded: an empty frame, not an error
    record_drift(url)
    drift = report.load_drift(url)
    assert list(drift["reference"]) == ["docker.io/library/python:3.12"]
    assert drift["stale_seconds"].iloc[0] == 120.0
    assert drift["at"].iloc[0] == pd.Timestamp(RUN_START + timedelta(days=1))


def test_rankings_hold_each_regions_latest(sample: Sample) -> None:
    ranked = report.load_rankings(sample.url, ["eu", "us", "nowhere"])
    assert set(ranked["region"]) == {"eu", "us"}
    for _, sel in ranked.groupby("region"):
        assert list(sel["rank"]) == list(range(1, len(sel) + 1))
        assert sel["score"].is_monotonic_decreasing
    assert report.load_rankings(sample.url, ["nowhere"]).empty
