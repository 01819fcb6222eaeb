"""The generator's expected demand: what the day's draw of pulls averages to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analytics.generate.expected import expected_demand
from analytics.generate.workload import Params, Workload, generate

# No bursts: retry storms are left out of the expectation by design.
PARAMS = Params(weeks=4, seed=7, bursts_per_week=0.0)


@pytest.fixture(scope="module")
def work() -> Workload:
    return generate(PARAMS)


@pytest.fixture(scope="module")
def both(work: Workload) -> pd.DataFrame:
    """Expected and drawn real pulls per (region, day, image, tag), from the second day on
    (runs of the day before the history spill into its first UTC day)."""
    p = work.pulls.assign(
        day=work.pulls["timestamp"].dt.tz_convert(None).dt.normalize(),
        real=work.pulls["pulled"].astype(float),
    )
    drawn = p.groupby(["region", "day", "image", "tag"])["real"].sum()
    rows = []
    for region in PARAMS.regions:
        for day in pd.date_range("2024-03-05", "2024-03-31", freq="D"):
            for r in expected_demand(work, region, day).itertuples(index=False):
                rows.append((region, day, r.image, r.tag, r.real, r.pulls, r.stay))
    exp = pd.DataFrame(rows, columns=["region", "day", "image", "tag", "real", "pulls", "stay"])
    exp = exp.set_index(["region", "day", "image", "tag"])
    out = exp.join(drawn.rename("drawn"), how="outer").fillna({"real": 0.0, "drawn": 0.0})
    return out.reset_index()


def _close(expected: float, drawn: float) -> bool:
    # Five Poisson standard deviations plus 5 %: release trains draw 8-30 runs, not Poisson.
    return bool(abs(drawn - expected) <= 5 * np.sqrt(max(expected, 1.0)) + 0.05 * expected)


def test_expected_pulls_match_the_drawn_ones_per_region_and_kind_of_day(
    both: pd.DataFrame,
) -> None:
    weekend = both["day"].dt.dayofweek >= 5
    for region in PARAMS.regions:
        mine = both["region"] == region
        for sel in (mine & ~weekend, mine & weekend):
            exp, drawn = both.loc[sel, "real"].sum(), both.loc[sel, "drawn"].sum()
            assert drawn > 0
            assert _close(exp, drawn), (region, exp, drawn)
    # Thursdays carry the release trains on top of the week.
    thursday = both["day"].dt.dayofweek == PARAMS.release_weekday
    weekday = both["day"].dt.dayofweek < 5
    per_day = (
        both[weekday].groupby(thursday[weekday])["real"].sum()
        / both[weekday].groupby(thursday[weekday])["day"].nunique()
    )
    assert per_day[True] > 1.1 * per_day[False]


def test_expected_pulls_match_the_drawn_ones_per_tag(both: pd.DataFrame) -> None:
    per_tag = both.groupby(["region", "image", "tag"])[["real", "drawn"]].sum()
    busy = per_tag[per_tag["real"] >= 100]
    assert len(busy) >= 20
    bad = [key for key, r in busy.iterrows() if not _close(r["real"], r["drawn"])]
    assert not bad
    # Nothing drawn that the expectation does not know (no bursts, no unknown tags).
    unknown = per_tag[(per_tag["real"] == 0) & (per_tag["drawn"] > 0)]
    assert unknown.empty, unknown


def test_stay_is_the_share_of_pulls_before_a_tag_moves(work: Workload, both: pd.DataFrame) -> None:
    move_day = both["day"].dt.dayofweek == PARAMS.move_weekday
    moving = both[move_day & (both["stay"] < 1.0)]
    assert not moving.empty  # weekly rebuilds move tags on their weekday
    assert (both.loc[~move_day, "stay"].fillna(1.0) == 1.0).all()
    # Drawn: the share of a moving tag's pulls that fetched the digest it had at midnight.
    before = after = 0.0
    for r in moving.itertuples(index=False):
        midnight = work.catalogue.version_at(f"{r.image}:{r.tag}", r.day.to_pydatetime())
        assert midnight is not None
        p = work.pulls
        sel = p[
            (p["region"] == r.region)
            & (p["image"] == r.image)
            & (p["tag"] == r.tag)
            & (p["timestamp"].dt.tz_convert(None).dt.normalize() == r.day)
            & p["pulled"]
        ]
        before += float((sel["digest"] == midnight.digest).sum())
        after += float((sel["digest"] != midnight.digest).sum())
    expected_before = float((moving["stay"] * moving["real"]).sum())
    assert _close(expected_before, before)
    assert after > 0
