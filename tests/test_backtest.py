"""The rolling-origin backtest: selection under a layer budget, scoring, model vs baselines."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import pandas as pd
import pytest

from analytics.backtest import Sizes, backtest, choose, margins, score_day, summarise
from analytics.frames import usage_from_pulls
from analytics.generate.workload import Params, generate

MB = 1_000_000


class Layers:
    """Two images sharing a 100 MB base; a third unrelated one."""

    table: ClassVar[dict[str, list[tuple[str, int]]]] = {
        "a:1": [("base", 100 * MB), ("a", 10 * MB)],
        "b:1": [("base", 100 * MB), ("b", 10 * MB)],
        "c:1": [("c", 90 * MB)],
    }

    def layers(
        self, image: str, tag: str, digest: str, at: datetime
    ) -> list[tuple[str, int]] | None:
        return self.table.get(f"{image}:{tag}")


def cands(rows: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"image": i, "tag": "1", "digest": "", "score": s} for i, s in rows])


def test_shared_layers_are_counted_once() -> None:
    sizes = Sizes(Layers())
    warm = choose(cands([("a", 5), ("b", 5), ("c", 4)]), sizes, datetime(2024, 1, 1), 125 * MB)
    assert warm == {"base", "a", "b"}  # 120 MB for two images; c (90 MB) no longer fits


def test_unknown_images_get_the_default_size() -> None:
    sizes = Sizes(Layers(), default_bytes=70 * MB)
    warm = choose(cands([("zzz", 9), ("c", 1)]), sizes, datetime(2024, 1, 1), 100 * MB)
    assert warm == {"unknown:zzz:1@"}


def test_score_day_counts_pulls_and_bytes() -> None:
    actual = pd.DataFrame(
        [
            {
                "day": pd.Timestamp("2024-01-01"),
                "hour": 9,
                "image": "a",
                "tag": "1",
                "digest": "",
                "pulls": 3,
                "present": 1,
            },
            {
                "day": pd.Timestamp("2024-01-01"),
                "hour": 9,
                "image": "c",
                "tag": "1",
                "digest": "",
                "pulls": 1,
                "present": 0,
            },
        ]
    )
    got = score_day(actual, {"base", "a"}, Sizes(Layers()))
    assert got["pulls"] == 4 and got["hit_pulls"] == 3
    assert got["bytes"] == 2 * 110 * MB + 90 * MB  # the present pull moved no bytes
    assert got["hit_bytes"] == 2 * 110 * MB


@pytest.fixture(scope="module")
def small_history() -> tuple[pd.DataFrame, pd.DataFrame]:
    work = generate(Params(weeks=3, seed=3, pipelines_per_region=15))
    days = backtest(
        usage_from_pulls(work.pulls),
        work.static,
        "eu",
        1_500 * MB,
        work.catalogue,
        labels=work.labels,
    )
    return days, summarise(days)


def test_model_beats_each_baseline_and_stays_below_the_oracle(
    small_history: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    days, summary = small_history
    assert days["day"].nunique() == 14  # 21 days minus the 7-day warm-up
    rates = summary[summary["kind"] == "all"].set_index("strategy")["byte_hit_rate"]
    for baseline in ("yesterday", "frequency", "static"):
        assert rates["model"] >= rates[baseline], baseline
    assert rates["model"] <= rates["oracle"]
    assert rates["oracle"] > 0.5
    table = margins(summary).set_index("kind")
    assert table.loc["all", "of_oracle"] == pytest.approx(rates["model"] / rates["oracle"])


def test_day_kinds_are_reported(small_history: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, summary = small_history
    kinds = set(summary["kind"])
    assert {"all", "weekday", "weekend", "after_weekend", "release", "tag_move"} <= kinds
