"""The generator's expected demand for a day: what a predictor with perfect knowledge of the
workload's rates would predict, without the day's random draw (pure, in memory).

A backtest scores each strategy against one draw of the day's pulls; a kind of day has a
handful of days, and which of two images of similar size and demand fills the last room
under the budget flips with that draw. Scoring the same warm sets against the expected
demand removes the day's draw (the history the strategies learn from stays one draw), and
ranking by it is the ``ideal`` strategy: the ceiling of any predictor, where the oracle is
the ceiling of one that also knows the draw.

For each tag used in the region that day: ``pulls`` (expected uses), ``real`` (expected
uses that reach the mirror: not already present on the node) and ``stay`` (the share of
the real pulls made before the tag moves that day; after the move they fetch the new
digest). Pipelines contribute their expected runs per UTC hour (commit pipelines by the
office profile and the weekday, nightly ones once a day, release trains on their weekday)
for every use in force at that hour; ad-hoc mirror pulls add each tag's share of them.
Bursts (retry storms) are left out: they are unpredictable by design.

``logged_pulls`` is the other ground truth: how many pulls the logs hold, per format.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from analytics.generate.workload import _OFFICE, _SOURCE_FOR_BASE, Pipeline, Workload

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
COLUMNS = ["image", "tag", "pulls", "real", "stay"]


def _runs(work: Workload, pl: Pipeline, start: datetime, offset: int) -> np.ndarray:
    """Expected runs of ``pl`` in each UTC hour of the day beginning at ``start``.

    The generator places a pipeline's runs by *local* days (UTC hour = local hour minus the
    offset), so a UTC day holds hours of up to three local days, each with its own weekday.
    """
    p = work.params
    runs = np.zeros(24)
    if pl.kind == "nightly":
        runs[(pl.hour - offset) % 24] = 1.0
        return runs
    for shift in (-1, 0, 1):
        local_day = start + shift * DAY
        for hour in range(24):
            utc = hour - offset + 24 * shift
            if not 0 <= utc < 24:
                continue
            if pl.kind == "release":
                if local_day.weekday() == p.release_weekday and 14 <= hour < 17:
                    lo, hi = p.release_runs
                    runs[utc] += (lo + hi - 1) / 2 / 3  # integers(lo, hi) over 3 hours
            else:
                scale = 1.0 if local_day.weekday() < 5 else p.weekend_factor
                runs[utc] += pl.rate * scale * _OFFICE[hour]
    return runs


def _adhoc(work: Workload, start: datetime, offset: int) -> np.ndarray:
    """Expected ad-hoc mirror pulls in each UTC hour of the day beginning at ``start``."""
    p = work.params
    out = np.zeros(24)
    for shift in (-1, 0, 1):
        local_day = start + shift * DAY
        scale = 1.0 if local_day.weekday() < 5 else p.weekend_factor
        for hour in range(24):
            utc = hour - offset + 24 * shift
            if 0 <= utc < 24:
                out[utc] += p.adhoc_per_office_hour * scale * _OFFICE[hour] / _OFFICE.max()
    return out


def expected_demand(work: Workload, region: str, day: pd.Timestamp | datetime) -> pd.DataFrame:
    """Expected pulls per tag in ``region`` on the UTC ``day`` (see the module docstring)."""
    p = work.params
    start = pd.Timestamp(day).tz_localize(None).normalize().to_pydatetime()
    start = start.replace(tzinfo=p.start.tzinfo)
    offset = dict(zip(p.regions, p.utc_offset, strict=True))[region]
    end = p.start + timedelta(weeks=p.weeks)
    mids = [start + h * HOUR + HOUR / 2 for h in range(24)]
    pulls: dict[str, np.ndarray] = {}
    real: dict[str, np.ndarray] = {}

    def add(ref: str, hourly: np.ndarray, present: float) -> None:
        pulls[ref] = pulls.get(ref, np.zeros(24)) + hourly
        real[ref] = real.get(ref, np.zeros(24)) + hourly * (1.0 - present)

    for pl in work.pipelines:
        if pl.region != region:
            continue
        runs = _runs(work, pl, start, offset)
        live = np.array([pl.since <= t < end for t in mids])
        for use in pl.uses:
            active = np.array(
                [use.since <= t and (use.until is None or t < use.until) for t in mids]
            )
            source = pl.system if use.role != "base" else _SOURCE_FOR_BASE.get(pl.system, pl.system)
            add(use.ref, runs * live * active, p.present_probability.get(source, 0.0))
    adhoc = _adhoc(work, start, offset)
    for ref, share in work.adhoc_share.items():
        add(ref, adhoc * share, p.present_probability.get("distribution", 0.0))

    rows = []
    for ref, hourly in pulls.items():
        total_real = float(real[ref].sum())
        if hourly.sum() <= 0:
            continue
        image, tag = ref.rsplit(":", 1)
        stay = 1.0
        first = work.catalogue.version_at(ref, start)
        if first is not None and total_real > 0:
            for h, t in enumerate(mids):
                version = work.catalogue.version_at(ref, t)
                if version is not None and version.digest != first.digest:
                    stay = float(real[ref][:h].sum()) / total_real
                    break
        rows.append((image, tag, float(hourly.sum()), total_real, stay))
    return pd.DataFrame(rows, columns=COLUMNS)


def logged_pulls(work: Workload) -> dict[str, int]:
    """The pulls the generator wrote to its logs, per log format: what ingest must count
    (each pull is one event, whatever the layout of the files)."""
    counts = work.pulls["source"].value_counts()
    return {str(source): int(n) for source, n in sorted(counts.items())}
