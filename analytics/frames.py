"""Small helpers over usage frames shared by the model, the backtest and the generator.

The usage frame is the store's aggregate (``analytics.store.usage_frame``): one row per
(day, hour, region, image, tag, digest, source) with ``pulls``, ``present`` and
``pipelines``. Times are naive UTC inside the analytics code.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

USAGE_COLUMNS = [
    "day",
    "hour",
    "region",
    "image",
    "tag",
    "digest",
    "source",
    "pulls",
    "present",
    "pipelines",
]
STATIC_COLUMNS = ["file", "line", "reference", "image", "tag", "first_seen"]


def utc_naive(value: datetime | pd.Timestamp | str) -> pd.Timestamp:
    """A timestamp as naive UTC (aware values are converted, naive ones taken as UTC)."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def utc_naive_series(values: pd.Series) -> pd.Series:
    out = pd.to_datetime(values)
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


def empty_usage() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in USAGE_COLUMNS})
    frame["day"] = frame["day"].astype("datetime64[ns]")
    for c in ("hour", "pulls", "present", "pipelines"):
        frame[c] = frame[c].astype("int64")
    return frame


def normalise_usage(usage: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and bring ``day`` to naive UTC midnight."""
    missing = [c for c in USAGE_COLUMNS if c not in usage.columns]
    if missing:
        raise ValueError(f"usage frame lacks columns {missing}")
    if usage.empty:
        return empty_usage()
    out = usage.copy()
    out["day"] = utc_naive_series(out["day"]).dt.normalize()
    out["tag"] = out["tag"].fillna("").astype(str)
    out["digest"] = out["digest"].fillna("").astype(str)
    return out


def normalise_static(static: pd.DataFrame | None) -> pd.DataFrame:
    """Static references with naive UTC ``first_seen`` and an optional ``removed``."""
    if static is None or static.empty:
        frame = pd.DataFrame({c: pd.Series(dtype="object") for c in [*STATIC_COLUMNS, "removed"]})
        frame["first_seen"] = frame["first_seen"].astype("datetime64[ns]")
        frame["removed"] = frame["removed"].astype("datetime64[ns]")
        return frame
    out = static.copy()
    out["first_seen"] = utc_naive_series(out["first_seen"])
    if "removed" in out.columns:
        out["removed"] = utc_naive_series(out["removed"])
    else:
        out["removed"] = pd.NaT
    out["tag"] = out["tag"].fillna("").astype(str)
    return out


def static_at(static: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """The references named at ``now``: seen before it and not removed by then."""
    live = (static["first_seen"] < now) & (static["removed"].isna() | (static["removed"] > now))
    return static[live]


def usage_from_pulls(pulls: pd.DataFrame) -> pd.DataFrame:
    """Aggregate raw pulls (timestamp, region, pipeline, image, tag, digest, source, pulled)
    into the store's usage frame, as ingest does."""
    ts = utc_naive_series(pulls["timestamp"])
    frame = pd.DataFrame(
        {
            "day": ts.dt.normalize(),
            "hour": ts.dt.hour.astype("int64"),
            "region": pulls["region"].to_numpy(),
            "image": pulls["image"].to_numpy(),
            "tag": pulls["tag"].fillna("").to_numpy(),
            "digest": pulls["digest"].fillna("").to_numpy(),
            "source": pulls["source"].to_numpy(),
            "present": (~pulls["pulled"].astype(bool)).astype("int64").to_numpy(),
            "pipeline": pulls["pipeline"].fillna("").to_numpy(),
        }
    )
    keys = ["day", "hour", "region", "image", "tag", "digest", "source"]
    grouped = frame.groupby(keys, sort=True)
    out = grouped.agg(
        pulls=("present", "size"),
        present=("present", "sum"),
        pipelines=("pipeline", lambda s: s[s != ""].nunique()),
    ).reset_index()
    return out[USAGE_COLUMNS]
