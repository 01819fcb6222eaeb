"""Workload archetypes: small synthetic histories, each built so that one predictor is
the one to follow.

The repository's generator (``workload``) mixes every pattern at once, and a model tuned on
it can win there by knowing its mix. These histories are written from the definition of
each pattern alone, one pattern each, with no knowledge of any predictor's formula, so that
``analytics.ensemble`` can be checked on workloads it was not built on: it must follow the
predictor that suits each of them (``tests/test_ensemble.py``, ``bench/backtest.py``).

* ``stable``: each image has a constant daily rate (Zipf-like), every day of the week; the
  counts are Poisson. The best estimate of a constant rate is the mean of all days:
  ``frequency``.
* ``bursty``: images switch between hot (many pulls a day) and cold (almost none), a hot
  spell lasting a few days (geometric). Today's hot set is yesterday's, less the spells
  that ended: ``yesterday``; every average lags behind the switches.
* ``weekly``: release trains; each image is pulled on one weekday only (plus a trickle),
  some trains starting or stopping for good mid-history: ``seasonal`` (the same weekday
  one week before).
* ``adoption``: an image is named in new Dockerfiles in the evening and pulled from the next
  day on, at a rate proportional to the files naming it, until the files drop it (the
  reference is removed and its pulls stop): ``static`` knows both ends and the rates.
* ``migration``: repositories move from tag A to tag B at once, the day after the commit
  that changes their one file; the rates are the repositories' own (not the files'). A
  repository's demand is unchanged, only its split moves: the predictor to follow keeps
  the repository's mean and takes the split from the latest day (the model's migration
  rule, set off by the newly named tag); ``yesterday`` follows the split with one day's
  noise, file counts do not tell the rates apart.

Every archetype is one region of uniformly sized images (the backtest's default size), so
the budget is a number of images: about a fifth of the images in play.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analytics.frames import USAGE_COLUMNS

REGION = "arch"
START = pd.Timestamp("2024-01-01")  # a Monday
IMAGE_BYTES = 250_000_000  # the backtest's default size: one pseudo-layer per image


@dataclass(frozen=True)
class Archetype:
    name: str
    best: str  # the predictor the definition makes the one to follow
    usage: pd.DataFrame  # the store's usage frame, one region
    static: pd.DataFrame  # file, line, reference, image, tag, first_seen, removed
    budget: int  # bytes per day: ``images`` images
    images: int


def _usage(rows: list[tuple[int, str, str, int]]) -> pd.DataFrame:
    """(day index, image, tag, pulls) -> the usage frame (one hour, no present uses)."""
    rows = [r for r in rows if r[3] > 0]
    frame = pd.DataFrame(rows, columns=["d", "image", "tag", "pulls"])
    frame["day"] = START + pd.to_timedelta(frame["d"], unit="D")
    frame = frame.assign(
        hour=10, region=REGION, digest="", source="synthetic", present=0, pipelines=1
    )
    frame["pulls"] = frame["pulls"].astype("int64")
    return frame[USAGE_COLUMNS].reset_index(drop=True)


def _static(rows: list[tuple[str, str, str, pd.Timestamp, pd.Timestamp | None]]) -> pd.DataFrame:
    """(file, image, tag, first_seen, removed) -> the static frame (UTC, as stored)."""
    out = pd.DataFrame(rows, columns=["file", "image", "tag", "first_seen", "removed"])
    out["line"] = 1
    out["reference"] = out["image"] + ":" + out["tag"]
    out["first_seen"] = pd.to_datetime(out["first_seen"]).dt.tz_localize("UTC")
    out["removed"] = pd.to_datetime(out["removed"]).dt.tz_localize("UTC")
    return out[["file", "line", "reference", "image", "tag", "first_seen", "removed"]]


def _zipf(n: int, top: float, s: float = 0.8) -> np.ndarray:
    rates: np.ndarray = top / np.arange(1, n + 1) ** s
    return rates


def stable(seed: int, weeks: int = 6) -> Archetype:
    rng = np.random.default_rng([1, seed])
    n = 40
    rates = _zipf(n, 40.0)
    rows = [
        (d, f"arch/stable-{k}", "1", int(c))
        for d in range(7 * weeks)
        for k, c in enumerate(rng.poisson(rates))
    ]
    return Archetype("stable", "frequency", _usage(rows), _static([]), 8 * IMAGE_BYTES, 8)


def bursty(seed: int, weeks: int = 6) -> Archetype:
    rng = np.random.default_rng([2, seed])
    n, stay, hot_rate, cold_rate = 60, 0.8, 30.0, 0.3
    start = 1 - stay
    on = 10 * start / (n - 10)  # about ten hot images at a time
    hot = rng.random(n) < 10 / n
    level = rng.uniform(0.5, 1.5, n)  # each image's own scale
    rows = []
    for d in range(7 * weeks):
        rate = np.where(hot, hot_rate, cold_rate) * level
        rows += [(d, f"arch/bursty-{k}", "1", int(c)) for k, c in enumerate(rng.poisson(rate))]
        flip = rng.random(n)
        hot = np.where(hot, flip < stay, flip < on)
    return Archetype("bursty", "yesterday", _usage(rows), _static([]), 10 * IMAGE_BYTES, 10)


def weekly(seed: int, weeks: int = 6) -> Archetype:
    rng = np.random.default_rng([3, seed])
    n = 50
    rates = rng.permutation(_zipf(n, 60.0, 0.6))
    weekday = rng.integers(0, 5, n)
    days = 7 * weeks
    # A fifth of the trains start for good, a fifth stop for good, at a random week.
    first = np.where(rng.random(n) < 0.2, rng.integers(1, weeks, n) * 7, 0)
    last = np.where(rng.random(n) < 0.2, rng.integers(2, weeks, n) * 7, days)
    rows = []
    for d in range(days):
        live = (first <= d) & (d < last)
        rate = np.where(live & (weekday == d % 7), rates, 0.2)
        rows += [(d, f"arch/train-{k}", "1", int(c)) for k, c in enumerate(rng.poisson(rate))]
    return Archetype("weekly", "seasonal", _usage(rows), _static([]), 6 * IMAGE_BYTES, 6)


def adoption(seed: int, weeks: int = 6) -> Archetype:
    rng = np.random.default_rng([4, seed])
    days = 7 * weeks
    rows: list[tuple[int, str, str, int]] = []
    refs: list[tuple[str, str, str, pd.Timestamp, pd.Timestamp | None]] = []
    k = 0
    # About 1.5 adoptions a day, each living 5-12 days: a dozen images in use at a time.
    for d in range(days):
        for _ in range(int(rng.poisson(1.5)) + (12 if d == 0 else 0)):
            image = f"arch/adopted-{k}"
            k += 1
            files = int(rng.integers(1, 5))
            begin = d if d == 0 else d + 1  # named in the evening, pulled from the next day
            end = begin + int(rng.integers(5, 13))
            named = START + pd.Timedelta(days=begin) - pd.Timedelta(hours=6)
            removed = START + pd.Timedelta(days=end) if end < days else None
            refs += [(f"repo-{k}-{f}/Dockerfile", image, "1", named, removed) for f in range(files)]
            for day in range(begin, min(end, days)):
                rows.append((day, image, "1", int(rng.poisson(8.0 * files))))
    return Archetype("adoption", "static", _usage(rows), _static(refs), 6 * IMAGE_BYTES, 6)


def migration(seed: int, weeks: int = 6) -> Archetype:
    rng = np.random.default_rng([5, seed])
    n = 30
    days = 7 * weeks
    rates = rng.permutation(_zipf(n, 40.0, 0.7))
    # Each repository moves once, on a day after the first week (some never do).
    switch = rng.integers(8, days + 10, n)
    rows: list[tuple[int, str, str, int]] = []
    refs: list[tuple[str, str, str, pd.Timestamp, pd.Timestamp | None]] = []
    for r in range(n):
        image = f"arch/repo-{r}"
        commit = START + pd.Timedelta(days=int(switch[r])) - pd.Timedelta(hours=6)
        moved = int(switch[r]) < days
        refs.append((f"repo-{r}/Dockerfile", image, "1", START - pd.Timedelta(days=30), None))
        if moved:
            refs[-1] = (*refs[-1][:4], commit)
            refs.append((f"repo-{r}/Dockerfile", image, "2", commit, None))
        for d, c in enumerate(rng.poisson(rates[r], days)):
            rows.append((d, image, "2" if d >= switch[r] else "1", int(c)))
    return Archetype("migration", "model", _usage(rows), _static(refs), 6 * IMAGE_BYTES, 6)


ARCHETYPES: dict[str, Callable[..., Archetype]] = {
    "stable": stable,
    "bursty": bursty,
    "weekly": weekly,
    "adoption": adoption,
    "migration": migration,
}


def build(name: str, seed: int, weeks: int = 6) -> Archetype:
    """The archetype ``name`` (a key of ``ARCHETYPES``) drawn with ``seed``."""
    return ARCHETYPES[name](seed, weeks)
