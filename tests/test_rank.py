"""The ranking model on small hand-made frames: ordering, seasonality, prior, tag moves."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analytics.frames import usage_features
from analytics.rank import RankParams, rank, target_day
from warmer.config import Config, DatabaseConfig
from warmer.store.rankings import latest_ranking, save_ranking
from warmer.warm.resolve import wants_from_ranking

PY = "docker.io/library/python"
NODE = "docker.io/library/node"
GO = "docker.io/library/golang"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def usage(
    rows: list[tuple[str, int, str, str, int]],
    region: str = "eu",
    digest: str = "",
    pipelines: int = 1,
) -> pd.DataFrame:
    """rows: (day, hour, image, tag, pulls)."""
    return pd.DataFrame(
        [
            {
                "day": pd.Timestamp(day),
                "hour": hour,
                "region": region,
                "image": image,
                "tag": tag,
                "digest": digest,
                "source": "github",
                "pulls": pulls,
                "present": 0,
                "pipelines": pipelines,
            }
            for day, hour, image, tag, pulls in rows
        ]
    )


def daily(
    image: str, tag: str, days: pd.DatetimeIndex, pulls: int, hour: int = 10
) -> list[tuple[str, int, str, str, int]]:
    return [(str(d.date()), hour, image, tag, pulls) for d in days]


WEEKS = pd.date_range("2024-03-04", "2024-03-31", freq="D")  # Mon 4 March .. Sun 31 March
NOW = pd.Timestamp("2024-04-01T00:00Z")  # a Monday


def static(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """rows: (file, image, tag, first_seen)."""
    return pd.DataFrame(
        [
            {
                "file": f,
                "line": 1,
                "reference": f"{i}:{t}",
                "image": i,
                "tag": t,
                "first_seen": pd.Timestamp(s),
            }
            for f, i, t, s in rows
        ]
    )


def test_busier_image_ranks_first_with_reasons() -> None:
    frame = pd.concat(
        [usage(daily(PY, "3.12", WEEKS, 20), pipelines=4), usage(daily(NODE, "20", WEEKS, 5))]
    )
    out = rank(frame, None, NOW)
    assert list(out["image"]) == [PY, NODE]
    assert list(out["rank"]) == [1, 2]
    top = out.iloc[0]
    assert top["score"] == pytest.approx(20, rel=0.05)
    assert "140 pulls/7d (half-life 4d)" in top["reasons"]
    assert "4 pipelines" in top["reasons"]
    assert "weekday peak 10-11h UTC" in top["reasons"]


def test_recent_use_beats_old_heavy_use() -> None:
    old = daily(GO, "1.21", WEEKS[:10], 100)
    recent = daily(NODE, "20", WEEKS[-7:], 10)
    out = rank(usage(old + recent), None, NOW)
    assert out.iloc[0]["image"] == NODE


def test_weekday_and_weekend_seasonality() -> None:
    weekdays = [d for d in WEEKS if d.dayofweek < 5]
    office = daily(PY, "3.12", pd.DatetimeIndex(weekdays), 14)  # 70 a week, weekdays only
    nightly = daily(NODE, "20", WEEKS, 10, hour=2)  # 70 a week, every day
    frame = usage(office + nightly)
    monday = rank(frame, None, NOW)
    assert monday.iloc[0]["image"] == PY  # first working day: predicted from last week
    saturday = rank(frame, None, pd.Timestamp("2024-03-30T00:00Z"))
    assert saturday.iloc[0]["image"] == NODE
    # Predicted from weekends (none of its pulls), not from its 14 a weekday: what is left
    # is the shrinkage toward all days, a tenth of its weekday rate at most.
    assert saturday.set_index("image").loc[PY, "score"] < 1.4


def test_a_weekend_day_follows_the_hours_that_run_every_day() -> None:
    weekdays = pd.DatetimeIndex([d for d in WEEKS if d.dayofweek < 5])
    weekends = pd.DatetimeIndex([d for d in WEEKS if d.dayofweek >= 5])
    rows = (
        daily(PY, "3.12", weekdays, 14)  # people: 14 a weekday at 10h ...
        + daily(PY, "3.12", weekends, 1)  # ... and one on a weekend day
        + daily(NODE, "20", WEEKS, 10, hour=2)  # a nightly job: 10 at 2h, every day
        + daily(GO, "1.22", weekdays, 14)  # people again, but yesterday (Saturday) a
        + [("2024-03-30", 10, GO, "1.22", 8)]  # retry storm: 8 pulls on a weekend day
    )
    sunday = pd.Timestamp("2024-03-31T00:00Z")
    out = rank(usage(rows), None, sunday).set_index("image")
    # Each hour keeps the region's weekend share of its weekday pulls: all of them at 2h,
    # a fourteenth at 10h. So the nightly job keeps its rate and the storm is one day.
    assert out.loc[NODE, "score"] == pytest.approx(10, rel=0.15)
    assert out.loc[PY, "score"] == pytest.approx(1, rel=0.5)
    assert out.loc[GO, "score"] < 2.5
    own = rank(usage(rows), None, sunday, params=RankParams(weekend_shrink=0.0))
    assert out.loc[GO, "score"] < own.set_index("image").loc[GO, "score"] / 2


def test_a_history_of_weekend_days_only_ranks() -> None:
    # Logs of one weekend: no weekday pull anywhere in the lookback. Monday is predicted
    # from the weekend as it is (no ratio between the kinds to scale it by), not as zero.
    rows = [("2024-03-30", 10, PY, "3.12", 3), ("2024-03-30", 2, NODE, "20", 5)]
    for now in ("2024-03-31T00:00Z", "2024-04-01T00:00Z"):
        out = rank(usage(rows), None, pd.Timestamp(now))
        assert set(out["image"]) == {PY, NODE}
        assert (out["score"] > 0).all()


def test_weekly_release_train_day_of_week_factor() -> None:
    thursdays = [d for d in WEEKS if d.dayofweek == 3]
    frame = usage(daily(GO, "1.22", pd.DatetimeIndex(thursdays), 30) + daily(PY, "3.12", WEEKS, 3))
    thursday = pd.Timestamp("2024-03-28T00:00Z")
    out = rank(frame, None, thursday).set_index("image")
    assert out.loc[GO, "score"] > 15
    assert "Thu x" in out.loc[GO, "reasons"]
    friday = rank(frame, None, thursday + pd.Timedelta(days=1)).set_index("image")
    assert friday.loc[GO, "score"] < out.loc[GO, "score"] / 3


def test_a_weekly_peak_that_stopped_fades() -> None:
    """Tuesday trains of 17 pulls for three weeks, none on the last Tuesday (the issue's
    ``0 pulls/7d, last pulled 12d ago, Tue x17``): no boost is left for the next one,
    while a train that still ran last Tuesday keeps its boost."""
    tuesdays = [d for d in WEEKS if d.dayofweek == 1]
    base = daily(PY, "3.12", WEEKS, 3)
    tuesday = pd.Timestamp("2024-04-02T00:00Z")
    stopped = usage(daily(GO, "1.22", pd.DatetimeIndex(tuesdays[:-1]), 17) + base)
    out = rank(stopped, None, tuesday).set_index("image")
    assert "Tue x" not in out.loc[GO, "reasons"], out.loc[GO, "reasons"]
    assert "0 pulls/7d" in out.loc[GO, "reasons"]
    assert out.loc[GO, "score"] < 1.0
    running = usage(daily(GO, "1.22", pd.DatetimeIndex(tuesdays), 17) + base)
    kept = rank(running, None, tuesday).set_index("image")
    assert "Tue x" in kept.loc[GO, "reasons"]
    assert kept.loc[GO, "score"] > 8
    # Were a stop never believed, the stopped train kept its boost.
    unfaded = rank(stopped, None, tuesday, params=RankParams(dow_recur_odds=1e30))
    unfaded = unfaded.set_index("image")
    assert unfaded.loc[GO, "score"] > 4 * out.loc[GO, "score"]


def _train_history(trains: list[pd.Timestamp]) -> pd.DataFrame:
    """Office hours every weekday: node 6 pulls an hour, python 4 (8-17h UTC). On each
    day of ``trains``, a release train pulls golang 30 times an hour at 14-16h UTC, and
    node 4 more times an hour: 72 node pulls that day instead of 60."""
    rows = []
    for d in WEEKS:
        if d.dayofweek >= 5:
            continue
        day = str(d.date())
        for hour in range(8, 18):
            train = d in trains and 14 <= hour < 17
            rows.append((day, hour, NODE, "20", 6 + (4 if train else 0)))
            rows.append((day, hour, PY, "3.12", 4))
            if train:
                rows.append((day, hour, GO, "1.22", 30))
    return usage(rows)


def test_a_release_train_is_seen_in_its_hours() -> None:
    # Over the whole day node's Thursdays (72 against 60) are within 3 Poisson deviations
    # of its usual; in the train's hours (30 against 18) they are far outside.
    thursday = pd.Timestamp("2024-03-28T00:00Z")
    trains = [d for d in WEEKS if d.dayofweek == 3 and d < thursday.tz_localize(None)]
    frame = _train_history(trains)
    features = usage_features(frame, thursday, thursday, 28, None)
    assert features.bump_hours == {"eu": [14, 15, 16]}
    out = rank(frame, None, thursday).set_index("image")
    assert out.loc[NODE, "score"] == pytest.approx(72, rel=0.03)
    assert "Thu x1.1" in out.loc[NODE, "reasons"]
    assert "weekly bump 14-17h UTC" in out.loc[NODE, "reasons"]
    # python is pulled in those hours too, as on every weekday: no bump of its own.
    assert out.loc[PY, "score"] == pytest.approx(40, rel=0.01)
    assert "weekly bump" not in out.loc[PY, "reasons"]
    # The whole-day factor alone leaves node near its weekday mean.
    plain = rank(frame, None, thursday, params=RankParams(bumps=False)).set_index("image")
    assert plain.loc[NODE, "score"] < 66
    # The next day is an ordinary weekday: no bump hours, node back to its mean.
    friday = thursday + pd.Timedelta(days=1)
    assert usage_features(frame, friday, friday, 28, None).bump_hours == {}
    assert rank(frame, None, friday).set_index("image").loc[NODE, "score"] < 66


def test_a_retry_storm_on_one_thursday_is_not_a_weekly_bump() -> None:
    thursday = pd.Timestamp("2024-03-28T00:00Z")
    frame = _train_history([pd.Timestamp("2024-03-21")])  # one Thursday of three
    assert usage_features(frame, thursday, thursday, 28, None).bump_hours == {}
    out = rank(frame, None, thursday).set_index("image")
    assert "weekly bump" not in out.loc[NODE, "reasons"]


def test_a_weekday_within_poisson_noise_gets_no_factor() -> None:
    # 20 a weekday, 24 on Thursdays: over four Thursdays 16 pulls above the usual 80, which
    # Poisson noise on 80 pulls gives as often as not. A busy image at the budget edge must
    # not move on so little evidence.
    weekdays = pd.DatetimeIndex([d for d in WEEKS if d.dayofweek < 5])
    rows = [(str(d.date()), 10, PY, "3.12", 24 if d.dayofweek == 3 else 20) for d in weekdays]
    thursday = pd.Timestamp("2024-03-28T00:00Z")
    out = rank(usage(rows), None, thursday).iloc[0]
    assert out["score"] == pytest.approx(20.8, rel=0.03)
    noisy = rank(usage(rows), None, thursday, params=RankParams(dow_z=0.0)).iloc[0]
    assert noisy["score"] > out["score"] + 0.5


def test_only_data_before_now_is_used() -> None:
    frame = usage([*daily(PY, "3.12", WEEKS, 5), ("2024-04-01", 3, NODE, "20", 1000)])
    out = rank(frame, None, NOW)
    assert NODE not in set(out["image"])


def test_window_score_uses_hour_profile() -> None:
    frame = usage(daily(PY, "3.12", WEEKS, 20, hour=10))
    morning = rank(
        frame, None, NOW, window=(NOW + pd.Timedelta(hours=9), NOW + pd.Timedelta(hours=12))
    )
    night = rank(frame, None, NOW, window=(NOW, NOW + pd.Timedelta(hours=6)))
    assert morning.iloc[0]["window_score"] > 0.5 * morning.iloc[0]["score"]
    assert night.iloc[0]["window_score"] < 0.3 * morning.iloc[0]["window_score"]


def test_static_prior_predicts_newly_named_image() -> None:
    frame = usage(daily(PY, "3.12", WEEKS, 20))
    refs = static(
        [
            ("svc/Dockerfile", "docker.io/library/redis", "7", "2024-03-31T15:00Z"),
            ("svc/Dockerfile", "docker.io/library/mysql", "8.0", "2024-04-02T15:00Z"),
        ]
    )
    out = rank(frame, refs, NOW).set_index("image")
    assert out.loc["docker.io/library/redis", "score"] > 0
    assert "static prior" in out.loc["docker.io/library/redis", "reasons"]
    assert "docker.io/library/mysql" not in out.index  # named after `now`: not known yet


def test_tag_move_keeps_demand_on_tag_and_newest_digest() -> None:
    before = usage(daily(NODE, "20", WEEKS[:-3], 10), digest=D1)
    after = usage(daily(NODE, "20", WEEKS[-3:], 10), digest=D2)
    pinned = usage([("2024-03-30", 9, NODE, "", 4)], digest=D1)  # a digest pull of the old one
    out = rank(pd.concat([before, after, pinned]), None, NOW)
    assert len(out) == 1  # one row: the tag, not one per digest
    row = out.iloc[0]
    assert (row["tag"], row["digest"]) == ("20", D2)
    assert "tag moved (2 digests)" in row["reasons"]
    assert row["pulls_7d"] == 74


def test_a_later_pull_logged_without_a_digest_keeps_the_newest_printed_one() -> None:
    """The tag moved to D2; the last pull of the month came from a log that prints no
    digest (a kubelet event, a GitHub job line): the ranking still names D2, not ''."""
    before = usage(daily(NODE, "20", WEEKS[:-3], 10), digest=D1)
    after = usage(daily(NODE, "20", WEEKS[-3:-1], 10), digest=D2)
    last = usage(daily(NODE, "20", WEEKS[-1:], 10, hour=20))
    row = rank(pd.concat([before, after, last]), None, NOW).iloc[0]
    assert row["digest"] == D2
    assert f"tag moved (2 digests), now {D2[:19]}" in row["reasons"]


def test_tag_moved_yesterday_ranks_the_new_digest_with_the_tag_demand() -> None:
    """A rebuild moves ``node:20`` at 13:00 the day before: from the next day on every
    consumer pulls the new digest, so the ranking names it with the tag's whole demand."""
    last = WEEKS[-1]
    before = usage(daily(NODE, "20", WEEKS, 10, hour=9), digest=D1)
    moved = usage([(str(last.date()), 15, NODE, "20", 2)], digest=D2)
    d3 = "sha256:" + "3" * 64
    steady = usage(daily(GO, "1.22", WEEKS, 11, hour=9), digest=d3)
    out = rank(pd.concat([before, moved, steady]), None, NOW).set_index("image")
    row = out.loc[NODE]
    assert (row["tag"], row["digest"]) == ("20", D2)
    assert f"tag moved (2 digests), now {D2[:19]}" in row["reasons"]
    # The two pulls of the new digest add to the tag's ten a day; they do not start a new key.
    assert row["score"] > 10 and len(out) == 2
    assert out.loc[GO, "digest"] == d3 and "tag moved" not in out.loc[GO, "reasons"]


def test_migration_to_newer_tag_shifts_demand() -> None:
    switch = pd.Timestamp("2024-03-28")  # from Thursday half the users pull 3.12
    old = [
        (d, h, i, t, n if pd.Timestamp(d) < switch else n // 2)
        for d, h, i, t, n in daily(PY, "3.11", WEEKS, 20)
    ]
    new = daily(PY, "3.12", WEEKS[switch <= WEEKS], 10)
    frame = usage(old + new)
    refs = static(
        [
            ("a/Dockerfile", PY, "3.12", "2024-03-27T10:00Z"),
            ("b/Dockerfile", PY, "3.11", "2023-01-01T00:00Z"),
        ]
    )
    out = rank(frame, refs, NOW).set_index("tag")
    assert out.loc["3.12", "score"] == pytest.approx(out.loc["3.11", "score"], rel=0.01)
    assert "migration 3.11->3.12: 50% of the latest pulls" in out.loc["3.12", "reasons"]
    # Without a file naming the new tag, the decayed history alone still favours 3.11.
    plain = rank(frame, None, NOW).set_index("tag")
    assert plain.loc["3.12", "score"] < 0.8 * plain.loc["3.11", "score"]
    assert "migration" not in plain.loc["3.12", "reasons"]


def test_a_migration_named_three_weeks_ago_still_splits_by_the_latest_pulls() -> None:
    # Named on 8 March; users moved over two weeks; by April 3.11 is nearly gone, but its
    # decayed history from mid-March would still give it a third of the repository.
    days = list(WEEKS)
    old = [(str(d.date()), 10, PY, "3.11", max(1, 20 - 2 * n)) for n, d in enumerate(days)]
    new = [(str(d.date()), 10, PY, "3.12", min(19, 2 * n)) for n, d in enumerate(days) if n]
    refs = static(
        [
            ("a/Dockerfile", PY, "3.12", "2024-03-08T10:00Z"),
            ("b/Dockerfile", PY, "3.11", "2023-01-01T00:00Z"),
        ]
    )
    out = rank(usage(old + new), refs, NOW).set_index("tag")
    assert out.loc["3.11", "score"] < 0.1 * out.loc["3.12", "score"]
    assert "migration 3.11->3.12" in out.loc["3.12", "reasons"]


def test_target_day() -> None:
    assert target_day(pd.Timestamp("2024-04-01")) == pd.Timestamp("2024-04-01")
    assert target_day(pd.Timestamp("2024-04-01 13:00")) == pd.Timestamp("2024-04-02")


def test_rankings_are_stored_for_the_planner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    frame = usage(daily(PY, "3.12", WEEKS, 20) + daily(NODE, "20", WEEKS, 5))
    save_ranking(url, rank(frame, None, NOW), computed_at=NOW.to_pydatetime())
    newer = rank(frame[frame["image"] == NODE], None, NOW)
    save_ranking(url, newer, computed_at=(NOW + pd.Timedelta(hours=1)).to_pydatetime())
    got = latest_ranking(url, "eu")
    assert list(got["image"]) == [NODE]
    assert got.iloc[0]["reasons"].startswith("35 pulls/7d")
    assert latest_ranking(url, "us").empty


def tuesday_mover() -> pd.DataFrame:
    """python:3.12 gets a new digest every Tuesday at 13h UTC (pulls spread 8h-19h); node:20
    never moves."""
    rows = []
    digest = 0
    for day in WEEKS:
        for hour in range(8, 20):
            if day.dayofweek == 1 and hour == 13:
                digest += 1
            rows.append(
                usage([(str(day.date()), hour, PY, "3.12", 2)], digest=f"sha256:{digest:064d}")
            )
    rows.append(usage(daily(NODE, "20", WEEKS, 24)))
    return pd.concat(rows, ignore_index=True)


def test_stay_is_stored_and_reaches_the_wanted_images(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    ranked = rank(tuesday_mover(), None, pd.Timestamp("2024-04-02"))
    save_ranking(url, ranked, computed_at=NOW.to_pydatetime())
    got = latest_ranking(url, "eu").set_index("image")["stay"]
    want = ranked.set_index("image")["stay"]
    assert 0.4 < got[PY] < 0.6 and got[PY] == pytest.approx(want[PY])
    assert got[NODE] == 1.0
    wants = {
        w.ref.name: w.stay
        for w in wants_from_ranking(Config(database=DatabaseConfig(url=url)), "eu", None)
    }
    assert wants == {PY: pytest.approx(want[PY]), NODE: 1.0}
    # A ranking frame without the column (written by hand, or by an older model) stays 1.
    save_ranking(
        url, ranked.drop(columns="stay"), computed_at=NOW.to_pydatetime() + timedelta(days=1)
    )
    assert set(latest_ranking(url, "eu")["stay"]) == {1.0}


def test_an_old_rankings_table_gains_stay(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        # The rankings table and migration record as the first schema left them.
        conn.executescript(
            """
            CREATE TABLE schema_migrations (component VARCHAR(64) NOT NULL,
                version INTEGER NOT NULL, PRIMARY KEY (component, version));
            INSERT INTO schema_migrations VALUES ('analytics_rank', 1);
            CREATE TABLE rankings (id INTEGER PRIMARY KEY, computed_at DATETIME NOT NULL,
                region VARCHAR(64) NOT NULL, image VARCHAR(512) NOT NULL,
                tag VARCHAR(128) NOT NULL, digest VARCHAR(160) NOT NULL, score FLOAT NOT NULL,
                window_score FLOAT NOT NULL, rank INTEGER NOT NULL, reasons TEXT NOT NULL);
            INSERT INTO rankings VALUES (1, '2024-03-18 00:00:00.000000', 'eu',
                'docker.io/library/python', '3.12', '', 9.0, 9.0, 1, 'old row');
            """
        )
    conn.close()
    url = f"sqlite:///{path}"
    old = latest_ranking(url, "eu")
    assert list(old["reasons"]) == ["old row"] and list(old["stay"]) == [1.0]
    with sqlite3.connect(path) as conn:
        versions = conn.execute(
            "SELECT version FROM schema_migrations WHERE component = 'analytics_rank'"
        ).fetchall()
        assert sorted(v for (v,) in versions) == [1, 2]
    conn.close()
    ranked = rank(tuesday_mover(), None, pd.Timestamp("2024-04-02"))
    save_ranking(url, ranked, computed_at=NOW.to_pydatetime() + timedelta(days=1))
    assert latest_ranking(url, "eu").set_index("image").loc[PY, "stay"] < 0.6


def test_long_memory_keeps_old_images_below_recent_ones() -> None:
    long_ago = pd.date_range("2024-02-01", "2024-02-10", freq="D")
    frame = usage(daily(GO, "1.21", long_ago, 50) + daily(PY, "3.12", WEEKS[-7:], 1))
    out = rank(frame, None, NOW).set_index("image")
    assert out.loc[PY, "rank"] == 1
    assert 0 < out.loc[GO, "score"] < 0.2 * out.loc[PY, "score"]
    assert "long memory" in out.loc[GO, "reasons"]


def test_a_tag_rebuilt_every_tuesday_is_expected_to_move_on_tuesdays() -> None:
    frame = tuesday_mover()
    tuesday = rank(frame, None, pd.Timestamp("2024-04-02")).set_index("image")
    # Half of a day's pulls (13h-19h of 8h-19h, shrunk a little toward the region) come
    # after the move and get layers nobody warmed at midnight.
    assert 0.4 < tuesday.loc[PY, "stay"] < 0.6
    assert "moves Tues ~13h UTC" in tuesday.loc[PY, "reasons"]
    assert tuesday.loc[NODE, "stay"] == 1.0
    wednesday = rank(frame, None, pd.Timestamp("2024-04-03")).set_index("image")
    assert wednesday.loc[PY, "stay"] == 1.0 and "moves" not in wednesday.loc[PY, "reasons"]


def _shifted(last: list[int], level: int = 80) -> pd.DataFrame:
    """PY pulled ``level`` times every weekday of March, then ``last`` on the last weekdays
    (the last value on Friday 29 March); node alongside at 30, steady."""
    weekdays = [d for d in WEEKS if d.dayofweek < 5]
    rows = daily(PY, "3.12", pd.DatetimeIndex(weekdays[: -len(last)]), level)
    tail = zip(weekdays[-len(last) :], last, strict=True)
    rows += [(str(d.date()), 10, PY, "3.12", n) for d, n in tail]
    return usage(rows + daily(NODE, "20", pd.DatetimeIndex(weekdays), 30))


NO_SHIFTS = RankParams(shift_z=float("inf"))


def test_a_level_shift_restarts_the_history() -> None:
    """80 pulls a weekday for weeks, then 139 and 152: a pipeline adopted the image. The
    decayed mean trails the new level for a week; the history restarts at the shift."""
    frame = _shifted([139, 152])
    score = rank(frame, None, NOW).set_index("image")["score"]
    trailing = rank(frame, None, NOW, params=NO_SHIFTS).set_index("image")["score"]
    assert score[PY] > 130
    assert trailing[PY] < 115
    # A file naming an image not pulled yet adds a static-prior row beside the pulled ones.
    files = static([("ci/Dockerfile", GO, "1.22", "2024-03-20")])
    reasons = rank(frame, files, NOW).set_index("image")["reasons"]
    assert "new level since 4d ago" in reasons[PY]  # Thursday 28 March, from Monday 1 April
    assert "new level" not in reasons[NODE] and "new level" not in reasons[GO]
    # A steady image keeps its level (it moves a little with the region's weekday/all-days
    # ratio, which the shifted image is part of).
    assert score[NODE] == pytest.approx(30, rel=0.1)
    # Moving off it: three weekdays of nothing predict nothing, not a fading 40.
    gone = rank(_shifted([0, 0, 0]), None, NOW).set_index("image")["score"]
    fading = rank(_shifted([0, 0, 0]), None, NOW, params=NO_SHIFTS).set_index("image")["score"]
    assert gone[PY] < 5 < 20 < fading[PY]


@pytest.mark.parametrize("last", [[80, 240], [140, 20], [95, 100]])
def test_one_day_off_its_level_or_two_that_disagree_is_no_shift(last: list[int]) -> None:
    """A release train's day, two days on opposite sides, a rise within Poisson noise."""
    frame = _shifted(last)
    score = rank(frame, None, NOW).set_index("image")["score"]
    assert score[PY] == pytest.approx(rank(frame, None, NOW, params=NO_SHIFTS).iloc[0]["score"])


def _trending(start: float, step: float) -> pd.DataFrame:
    """PY pulled ``start + step * i`` times on the i-th weekday of March (a steady trend,
    20 weekdays); node alongside at 30, steady."""
    weekdays = [d for d in WEEKS if d.dayofweek < 5]
    rows = [
        (str(d.date()), 10, PY, "3.12", round(start + step * i)) for i, d in enumerate(weekdays)
    ]
    return usage(rows + daily(NODE, "20", pd.DatetimeIndex(weekdays), 30))


NO_TRENDS = RankParams(trend_z=0)


@pytest.mark.parametrize(("start", "step"), [(40, 3), (120, -3)])
def test_a_steady_trend_is_carried_to_the_target(start: float, step: float) -> None:
    """Three pulls more (or fewer) every weekday: the decayed mean estimates the level of
    about a week before; the trend carries it to Monday's (the 21st weekday)."""
    frame = _trending(start, step)
    monday = start + step * 20
    score = rank(frame, None, NOW).set_index("image")["score"]
    flat = rank(frame, None, NOW, params=NO_TRENDS).set_index("image")["score"]
    assert score[PY] == pytest.approx(monday, rel=0.05)
    assert abs(flat[PY] - monday) > 10  # what the decayed mean alone says
    reasons = rank(frame, None, NOW).set_index("image")["reasons"]
    assert ("trend +" if step > 0 else "trend -") in reasons[PY]
    assert "trend" not in reasons[NODE]
    assert score[NODE] == pytest.approx(flat[NODE]) == pytest.approx(30, rel=0.1)


def test_noise_and_weekly_trains_are_no_trend() -> None:
    """A level with Poisson noise, and a weekly train (200 pulls every Tuesday, 5 on the
    other weekdays), keep the decayed mean's estimate: neither slope stands out of its
    scatter."""
    rng = np.random.default_rng(3)
    weekdays = [d for d in WEEKS if d.dayofweek < 5]
    rows = [(str(d.date()), 10, PY, "3.12", int(rng.poisson(60))) for d in weekdays]
    rows += [(str(d.date()), 10, GO, "1.22", 200 if d.dayofweek == 1 else 5) for d in weekdays]
    frame = usage(rows + daily(NODE, "20", pd.DatetimeIndex(weekdays), 30))
    score = rank(frame, None, NOW).set_index("image")["score"]
    flat = rank(frame, None, NOW, params=NO_TRENDS).set_index("image")["score"]
    for image in (PY, GO, NODE):
        assert score[image] == pytest.approx(flat[image]), image
