"""Small helpers over usage frames shared by the model, the backtest and the generator.

The usage frame is the store's aggregate (``analytics.store.usage_frame``): one row per
(day, hour, region, image, tag, digest, source) with ``pulls``, ``present`` and
``pipelines``. Times are naive UTC inside the analytics code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
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


@dataclass
class Features:
    """Per (region, image, tag or pinned digest) key, from one pass over a usage frame.

    ``info`` has one row per key: region, image, tag, pin (the digest of a digest-only pull
    whose digest was never seen under a tag, else ""), digest (newest seen), last_seen,
    digests (distinct digests seen), pipelines (distinct pipelines on the busiest of the
    last 7 days, summed over sources), moves (the (age in days, UTC hour) at which each
    digest after the key's first one in the lookback was first pulled: the tag's moves).
    ``daily[k, a]`` is pulls ``a`` days before the target day (column 0 unused), ``hourly[k,
    h]`` pulls by UTC hour over the lookback, ``weekday_hourly`` the same over its weekdays
    (Monday to Friday). ``region_start`` is each region's first day;
    ``older`` aggregates tagged pulls before the lookback per (region, image, tag): pulls
    and last day. ``bump_hours`` are, per region, the UTC hours of the target's weekday in
    which the region pulls markedly more than in the same hour of its other weekdays, week
    after week (a weekly release train; see ``bump_hours``), and ``bump_daily[k, a]`` the
    key's pulls in its region's bump hours ``a`` days before the target. ``real_daily`` is
    ``daily`` counting only real pulls (present uses left out): what the ensemble scores
    its predictors against (``analytics.ensemble``)."""

    info: pd.DataFrame
    daily: np.ndarray
    hourly: np.ndarray
    weekday_hourly: np.ndarray
    region_start: dict[str, pd.Timestamp]
    older: pd.DataFrame
    bump_daily: np.ndarray
    bump_hours: dict[str, list[int]]
    real_daily: np.ndarray  # as ``daily``, pulls minus present uses: what a mirror serves
    uses_daily: np.ndarray  # as ``daily``, every use counted whole (present ones too)
    older_pulls: np.ndarray  # each key's tagged uses before the lookback (all-time frequency)


_DAY_NS = 86_400_000_000_000  # nanoseconds in a day

BUMP_Z = 4.0  # Poisson deviations of a region's hour on the weekday over its other weekdays
BUMP_RATIO = 1.2  # and at least this many times their pulls in that hour
BUMP_WEEKS = 0.75  # in at least this share of the weekday's days (a burst is one day)
BUMP_MIN_DAYS = 3  # days of that weekday needed to tell a weekly bump at all


def bump_hours(
    same: np.ndarray,
    other_sum: np.ndarray,
    per_day: np.ndarray,
    n_same: np.ndarray,
    n_other: np.ndarray,
) -> np.ndarray:
    """Per region, the hours of a weekday in which a weekly bump recurs.

    ``same[g, h]`` is region ``g``'s pulls in UTC hour ``h`` over the days of that weekday,
    ``other_sum[g, h]`` over its other weekdays, ``n_same[g]`` and ``n_other[g]`` the days of
    each; ``per_day[g, h, a]`` the pulls of hour ``h`` on the day ``a`` days back (-inf for a
    day not of that weekday). An hour is a bump where it holds far more pulls than the same
    hour of the other weekdays (``BUMP_Z`` Poisson deviations and ``BUMP_RATIO`` times) and
    more than their mean on most of the weekday's days (``BUMP_WEEKS``): a weekly train,
    not one retry storm.
    """
    other = np.divide(
        other_sum, n_other[:, None], out=np.zeros_like(other_sum), where=n_other[:, None] > 0
    )
    usual = n_same[:, None] * other
    z = (same - usual) / np.sqrt(np.maximum(usual, 1.0))
    weeks = (per_day > other[:, :, None]).sum(axis=2)
    bump: np.ndarray = (
        (z > BUMP_Z)
        & (same > BUMP_RATIO * usual)
        & (weeks >= BUMP_WEEKS * n_same[:, None])
        & (n_same[:, None] >= BUMP_MIN_DAYS)
        & (n_other[:, None] > 0)
    )
    return bump


def _codes(values: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a string column and the string of each code (missing values: "").

    Missing values take the sentinel and then a code of their own: asking ``factorize`` to
    code them itself (``use_na_sentinel=False``) costs a third more over ten million rows.
    """
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    cleaned = np.array([*(str(u) for u in uniques), ""], dtype=object)
    codes = np.where(codes < 0, len(uniques), codes).astype(np.int64)
    return codes, cleaned


def usage_features(
    usage: pd.DataFrame,
    now: pd.Timestamp,
    target: pd.Timestamp,
    lookback: int,
    region: str | None,
    present_weight: float = 1.0,
) -> Features:
    """Aggregate the usage rows before ``now`` into per-key arrays.

    Written over integer codes and ``np.bincount`` instead of grouping the string columns:
    ten million rows must rank in seconds, and each string column is factorised once.
    """
    missing = [c for c in USAGE_COLUMNS if c not in usage.columns]
    if missing:
        raise ValueError(f"usage frame lacks columns {missing}")
    # Midnight by integer division (a tenth of ``dt.normalize``'s time on ten million rows).
    day = utc_naive_series(usage["day"]).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    day = day // _DAY_NS * _DAY_NS
    hour = usage["hour"].to_numpy(dtype=np.int64)
    stamp = day + hour * 3_600_000_000_000
    keep = stamp < now.value
    if region is not None:
        keep &= (usage["region"] == region).to_numpy()
    # Every row, usually (the store already selects by time and region): no copies then.
    idx: slice | np.ndarray = slice(None) if keep.all() else np.flatnonzero(keep)
    r, r_u = _codes(usage["region"].to_numpy()[idx])
    i, i_u = _codes(usage["image"].to_numpy()[idx])
    t, t_u = _codes(usage["tag"].to_numpy()[idx])
    d, d_u = _codes(usage["digest"].to_numpy()[idx])
    pulls = usage["pulls"].to_numpy(dtype=np.float64)[idx]
    present = usage["present"].to_numpy(dtype=np.float64)[idx]
    real = pulls - present
    raw = pulls
    if present_weight != 1.0:  # a use of an image already on the node counts this much
        pulls = pulls - (1.0 - present_weight) * present
    pipes = usage["pipelines"].to_numpy(dtype=np.int64)[idx]
    stamp, day, hour = stamp[idx], day[idx], hour[idx]
    age = (target.value - day) // _DAY_NS

    # Each region's first day.
    first_day = np.full(len(r_u), np.iinfo(np.int64).max)
    np.minimum.at(first_day, r, day)
    first_day[first_day == np.iinfo(np.int64).max] = -1
    region_start = {
        str(name): pd.Timestamp(int(first_day[k]))
        for k, name in enumerate(r_u)
        if first_day[k] >= 0
    }

    # Key of four codes, then the small table of distinct keys.
    k4, k4_u = pd.factorize(((r * len(i_u) + i) * len(t_u) + t) * len(d_u) + d)
    u4 = np.asarray(k4_u, dtype=np.int64)
    u_d = u4 % len(d_u) if len(d_u) else u4
    rest = u4 // max(len(d_u), 1)
    u_t = rest % max(len(t_u), 1)
    rest //= max(len(t_u), 1)
    u_i = rest % max(len(i_u), 1)
    u_r = rest // max(len(i_u), 1)
    tags = t_u[u_t] if len(u4) else np.array([], dtype=object)
    digs = d_u[u_d] if len(u4) else np.array([], dtype=object)
    images = i_u[u_i] if len(u4) else np.array([], dtype=object)
    # A digest-only pull of a digest seen under a tag counts for that tag (tag moves).
    known = {(im, dg): tg for im, tg, dg in zip(images, tags, digs, strict=True) if tg and dg}
    tags = np.array(
        [tg or known.get((im, dg), "") for im, tg, dg in zip(images, tags, digs, strict=True)],
        dtype=object,
    )
    pins = np.where(tags == "", digs, "")
    table = pd.DataFrame(
        {"region": r_u[u_r] if len(u4) else [], "image": images, "tag": tags, "pin": pins}
    )
    k3_of_k4 = table.groupby(["region", "image", "tag", "pin"], sort=False).ngroup().to_numpy()
    keys = table.drop_duplicates().reset_index(drop=True) if len(table) else table
    k3 = k3_of_k4[k4] if len(k4) else np.zeros(0, np.int64)
    n = int(k3_of_k4.max()) + 1 if len(k3_of_k4) else 0

    recent = (age >= 1) & (age <= lookback)
    width = lookback + 1
    # The recent rows' columns, gathered once for the sums below.
    k3_r, age_r, hour_r, pulls_r = k3[recent], age[recent], hour[recent], pulls[recent]
    cell = k3_r * width + age_r

    def by_day(weights: np.ndarray) -> np.ndarray:
        # float64 even with no rows (bincount of nothing with weights gives int64).
        sums = np.bincount(cell, weights=weights, minlength=n * width)
        return sums.astype(np.float64).reshape(n, width)

    daily = by_day(pulls_r)
    real_daily = by_day(real[recent])
    uses_daily = by_day(raw[recent])
    hourly = (
        np.bincount(k3_r * 24 + hour_r, weights=pulls_r, minlength=n * 24)
        .astype(np.float64)
        .reshape(n, 24)
    )
    dow = (day // _DAY_NS + 3) % 7  # Monday 0: 1970-01-01 was a Thursday
    weekday = recent & (dow < 5)
    # float64 even without a weekday pull (bincount of nothing with weights gives int64).
    weekday_hourly = (
        np.bincount(k3[weekday] * 24 + hour[weekday], weights=pulls[weekday], minlength=n * 24)
        .astype(np.float64)
        .reshape(n, 24)
    )

    # Weekly bump hours of the target's weekday, per region, and each key's pulls in them.
    g_n = len(r_u)
    bumps = np.zeros((g_n, 24), dtype=bool)
    if target.dayofweek < 5 and g_n:
        ages = np.arange(1, width)
        dows = (target.dayofweek - ages) % 7
        start_age = (target.value - first_day) // _DAY_NS  # region's oldest day
        in_history = ages[None, :] <= np.minimum(start_age, lookback)[:, None]
        same_day = in_history & (dows == target.dayofweek)[None, :]
        n_same = same_day.sum(axis=1).astype(np.float64)
        n_other = (
            (in_history & (dows < 5) & (dows != target.dayofweek)).sum(axis=1).astype(np.float64)
        )
        on = recent & (dow == target.dayofweek)
        off = weekday & (dow != target.dayofweek)
        same_sum = np.bincount(r[on] * 24 + hour[on], weights=pulls[on], minlength=g_n * 24)
        other_sum = np.bincount(r[off] * 24 + hour[off], weights=pulls[off], minlength=g_n * 24)
        per_day = np.bincount(
            (r[on] * 24 + hour[on]) * width + age[on], weights=pulls[on], minlength=g_n * 24 * width
        ).reshape(g_n, 24, width)
        # A day of the weekday without a pull in that hour is a zero; other days do not count.
        same_cols = np.pad(same_day, ((0, 0), (1, 0)))  # by age, column 0 unused
        per_day = np.where(same_cols[:, None, :], per_day, -np.inf)
        bumps = bump_hours(
            same_sum.astype(np.float64).reshape(g_n, 24),  # bincount of nothing: int64
            other_sum.astype(np.float64).reshape(g_n, 24),
            per_day,
            n_same,
            n_other,
        )
    bumped = recent & bumps[r, hour] if len(r) else np.zeros(0, dtype=bool)
    bump_daily = (
        np.bincount(k3[bumped] * width + age[bumped], weights=pulls[bumped], minlength=n * width)
        .astype(np.float64)
        .reshape(n, width)
    )

    # First and last pull of each (key, digest), over the lookback: one pass for both.
    # (A ufunc's ``at`` is six times faster than a groupby here.)
    k4_r, stamp_r = k4[recent], stamp[recent]
    first_t = np.full(len(u4), np.iinfo(np.int64).max)
    last_t = np.full(len(u4), np.iinfo(np.int64).min)
    np.minimum.at(first_t, k4_r, stamp_r)
    np.maximum.at(last_t, k4_r, stamp_r)
    seen = np.flatnonzero(np.bincount(k4_r, minlength=len(u4)))  # the (key, digest)s pulled
    # Newest digest and last time per key.
    per4 = pd.DataFrame({"k3": k3_of_k4[seen], "t": last_t[seen], "digest": digs[seen]})
    newest = per4.sort_values("t").drop_duplicates("k3", keep="last").set_index("k3")
    # The newest digest a log printed: a later pull logged without one does not hide it.
    printed = per4[per4["digest"] != ""].sort_values("t").drop_duplicates("k3", keep="last")
    info = keys.copy()
    info["digest"] = printed.set_index("k3")["digest"].reindex(range(n)).fillna("").to_numpy()
    info["last_seen"] = pd.to_datetime(newest["t"].reindex(range(n)).to_numpy())
    # When each later digest of a key was first pulled: the tag moved then.
    firsts = per4.assign(t=first_t[seen])
    firsts = firsts[firsts["digest"] != ""].sort_values(["k3", "t"])
    later = firsts[firsts.duplicated("k3", keep="first")]
    move_day = later["t"].to_numpy() // _DAY_NS * _DAY_NS
    move_age = (target.value - move_day) // _DAY_NS
    move_hour = (later["t"].to_numpy() - move_day) // 3_600_000_000_000
    moves: dict[int, list[tuple[int, int]]] = {}
    for k, a, h in zip(later["k3"].to_numpy(), move_age, move_hour, strict=True):
        moves.setdefault(int(k), []).append((int(a), int(h)))
    info["moves"] = [moves.get(k, []) for k in range(n)]
    named = per4[per4["digest"] != ""]
    info["digests"] = (
        named.groupby("k3")["digest"].nunique().reindex(range(n), fill_value=0).to_numpy()
    )

    week = (age >= 1) & (age <= 7)
    s, _ = _codes(usage["source"].to_numpy()[idx][week])  # only the last week's rows
    n_src = int(s.max()) + 1 if len(s) else 1
    combo = (k3[week] * 8 + age[week]) * n_src + s
    per_source = pd.Series(pipes[week]).groupby(combo).max()
    per_day = per_source.groupby(per_source.index // n_src).sum()
    best = per_day.groupby(per_day.index // 8).max()
    info["pipelines"] = best.reindex(range(n), fill_value=0).to_numpy().astype(np.int64)

    # Keys that had pulls only before the lookback (tagged ones): long memory.
    old = (age > lookback) & (tags != "")[k4] if len(k4) else np.zeros(0, bool)
    k3_o = k3[old]
    older_pulls = np.bincount(k3_o, weights=raw[old], minlength=n).astype(np.float64)
    older = pd.DataFrame(columns=["region", "image", "tag", "pulls", "last"])
    if len(k3_o):
        old_sum = np.bincount(k3_o, weights=pulls[old], minlength=n).astype(np.float64)
        old_last = np.full(n, np.iinfo(np.int64).min)
        np.maximum.at(old_last, k3_o, day[old])
        only = np.flatnonzero((np.bincount(k3_o, minlength=n) > 0) & (daily.sum(axis=1) == 0))
        older = keys.loc[only, ["region", "image", "tag"]].assign(
            pulls=old_sum[only], last=pd.to_datetime(old_last[only])
        )
    active = daily.sum(axis=1) > 0
    return Features(
        info[active].reset_index(drop=True),
        daily[active],
        hourly[active],
        weekday_hourly[active],
        region_start,
        older.reset_index(drop=True),
        bump_daily[active],
        {
            str(r_u[g]): [int(h) for h in np.flatnonzero(bumps[g])]
            for g in range(g_n)
            if bumps[g].any()
        },
        real_daily[active],
        uses_daily[active],
        older_pulls[active],
    )
