"""Files that stop (or start) naming an image move its predicted demand before its pulls do."""

from __future__ import annotations

import pandas as pd
import pytest

from analytics.frames import normalise_static
from analytics.namedfiles import named_counts
from analytics.rank import RankParams, rank

PG = "docker.io/library/postgres"
NODE = "docker.io/library/node"
MARCH = pd.date_range("2024-03-04", "2024-03-31", freq="D")  # Mon 4 March .. Sun 31 March
NOW = pd.Timestamp("2024-04-01T00:00Z")  # a Monday
OFF = RankParams(removals=False)


def usage(rows: list[tuple[pd.Timestamp, str, str, int]]) -> pd.DataFrame:
    """rows: (day, image, tag, pulls), all at 10h UTC in eu."""
    return pd.DataFrame(
        [
            {
                "day": day,
                "hour": 10,
                "region": "eu",
                "image": image,
                "tag": tag,
                "digest": "",
                "source": "github",
                "pulls": pulls,
                "present": 0,
                "pipelines": 1,
            }
            for day, image, tag, pulls in rows
        ]
    )


def refs(rows: list[tuple[str, str, str, str, str | None]]) -> pd.DataFrame:
    """rows: (file, image, tag, first_seen, removed or None), as ``warmer refs`` stores them."""
    return pd.DataFrame(
        [
            {
                "file": f,
                "line": 1 if removed is None else 0,
                "reference": f"{i}:{t}",
                "image": i,
                "tag": t,
                "first_seen": pd.Timestamp(first),
                "removed": pd.Timestamp(removed) if removed else pd.NaT,
            }
            for f, i, t, first, removed in rows
        ]
    )


def steady(image: str, tag: str, pulls: int) -> list[tuple[pd.Timestamp, str, str, int]]:
    return [(d, image, tag, pulls) for d in MARCH if d.dayofweek < 5]


def test_a_file_counts_once_while_any_of_its_lines_names_the_key() -> None:
    st = normalise_static(
        refs(
            [
                ("a/ci.yml", PG, "15", "2024-03-01T00:00Z", None),
                ("a/ci.yml", PG, "15", "2024-03-02T00:00Z", "2024-03-20T00:00Z"),
                ("b/Dockerfile", PG, "15", "2024-03-10T00:00Z", "2024-03-25T00:00Z"),
                ("c/Dockerfile", PG, "16", "2024-03-10T00:00Z", None),
            ]
        )
    )
    at = [pd.Timestamp(t) for t in ("2024-03-05", "2024-03-15", "2024-03-22", "2024-03-30")]
    counts = named_counts(st, [(PG, "15"), (PG, "16"), (NODE, "20")], at)
    assert counts.tolist() == [[1, 2, 2, 1], [0, 1, 1, 1], [0, 0, 0, 0]]


def test_files_that_stop_naming_an_image_lower_its_estimate_at_once() -> None:
    """Four files named postgres:15 all month; on Friday two were changed to 16. The pulls
    have not fallen yet (the weekend was quiet): the files say half of them stop."""
    st = refs(
        [
            ("a/ci.yml", PG, "15", "2024-01-01T00:00Z", None),
            ("b/ci.yml", PG, "15", "2024-01-01T00:00Z", None),
            ("c/ci.yml", PG, "15", "2024-01-01T00:00Z", "2024-03-29T15:00Z"),
            ("d/ci.yml", PG, "15", "2024-01-01T00:00Z", "2024-03-29T15:00Z"),
            ("e/ci.yml", NODE, "20", "2024-01-01T00:00Z", None),
        ]
    )
    frame = usage(steady(PG, "15", 40) + steady(NODE, "20", 30))
    out = rank(frame, st, NOW).set_index("image")
    plain = rank(frame, st, NOW, params=OFF).set_index("image")
    assert plain.loc[PG, "score"] == pytest.approx(40, rel=0.05)
    # Every weekday's pulls were made with four files naming it: half of them stay.
    assert out.loc[PG, "score"] == pytest.approx(0.5 * plain.loc[PG, "score"], rel=0.01)
    assert "named in 2 of the 4 files that named it" in out.loc[PG, "reasons"]
    # An image whose files did not change keeps its estimate and says nothing of them.
    assert out.loc[NODE, "score"] == pytest.approx(plain.loc[NODE, "score"])
    assert "files that named it" not in out.loc[NODE, "reasons"]


def test_without_dated_files_nothing_changes() -> None:
    """References dated at the scan (no history: all named since just now) and no static
    frame at all leave the estimate as the pulls say."""
    frame = usage(steady(PG, "15", 40))
    scanned = refs([("a/ci.yml", PG, "15", "2024-03-31T23:00Z", None)])
    for st in (scanned, None):
        score = rank(frame, st, NOW).set_index("image").loc[PG, "score"]
        assert score == pytest.approx(rank(frame, st, NOW, params=OFF).iloc[0]["score"])


def test_pulls_that_go_on_after_the_files_left_bring_the_estimate_back() -> None:
    """Both files stopped naming postgres:15 two weeks ago, but something the scan does not
    see (another repository, people at their desks) kept pulling it 40 times a weekday: the
    days since count whole, and the estimate is back with them (above them: the step from
    the scaled days to the counted ones reads as a rise, as any step two weeks old does),
    not held at the files' zero."""
    st = refs(
        [
            ("a/ci.yml", PG, "15", "2024-01-01T00:00Z", "2024-03-18T09:00Z"),
            ("b/ci.yml", PG, "15", "2024-01-01T00:00Z", "2024-03-18T09:00Z"),
        ]
    )
    frame = usage(steady(PG, "15", 40))
    out = rank(frame, st, NOW).set_index("image").loc[PG]
    assert 0.8 * 40 < out["score"] <= 2 * 40
    assert "named in 0 of the 2 files that named it" in out["reasons"]
