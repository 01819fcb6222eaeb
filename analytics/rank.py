"""Predicted pulls per region and image tag: the ranking the planner warms from.

Pure functions over frames; ``now`` is always passed in. For every (region, image, tag):

* **decayed frequency** of daily pulls (half-life ``half_life_days``), computed over the days
  of the same kind as the day predicted (weekdays for a weekday, weekend days for a
  weekend day), so a Monday is predicted from last week's working days, not the weekend;
  a weekend day leans on the weekdays hour by hour (scheduled jobs run every day, people
  push on weekdays: each hour keeps the region's weekend share of its weekday pulls), as
  two weekend days a week are too few to tell a nightly job from a quiet one;
* **day-of-week** factor (weekly release trains pull on one day only), shrunk toward 1,
  and only where the weekday differs from its kind by more than Poisson noise; a train
  also shows region-wide in a few hours of its weekday, week after week (the weekday's
  *bump hours*, ``Features.bump_hours``), and there a key's excess stands out of the day's
  noise: a key pulled in them more than on its other weekdays gets that excess added;
  a boost fades once the peak stops recurring (by the odds that it still does after a
  weekday that fell short of it; the per-day estimate lives in ``analytics.estimates``);
* **hour-of-day** profile, for the share of a day's pulls that falls inside a window;
* **recency**: the decay itself, plus the last pull shown in the reasons; a key's history
  starts at its first pull in the lookback, so an image adopted on Wednesday is not
  predicted from the zeros of the weekend before it existed, and again at a level shift
  (``analytics.estimates.restart_at_shift``: its last weekdays all well off the level
  before them; reason ``new level since 2d ago``); a steady trend carries the decayed
  mean, which lags it by about a week, to the day predicted
  (``analytics.estimates.trend_factor``; reason ``trend +18% on the recent level``);
* **files that stopped naming it**: each past day's pulls count for the files naming the
  key now (``analytics.namedfiles``: files now over files that day, where fewer name it
  now), so a pipeline moved off an image stops counting from the commit that moved it;
* **real pulls**: a use of an image already on the node (``present``) counts as
  ``present_weight`` of a pull: warming a mirror only helps the pulls that reach it, but a
  present use still says the image is in use (a fresh node will pull it);
* **pipelines**: distinct pipelines per day; they set the per-pipeline rate used by the prior;
* **static prior**: an image named in repository files but not pulled yet in a region is
  predicted at the region's median per-pipeline rate times the files naming it, fading
  with the age of the reference;
* **tag moves**: pulls are counted per tag whatever digest they resolved to (a moved tag
  sends every consumer to the new digest); a digest-only pull of a digest once seen under
  a tag counts for that tag; the ``digest`` column is the newest digest seen. A tag rebuilt
  on a weekly schedule is expected to move again on that weekday at that hour: ``stay`` is
  the share of the day's pulls expected before the move (after it, the new digest's own
  layers were not warmed at midnight), 1 for tags with no such pattern;
* **migrations**: when files name a newer tag of a repository within the lookback, the
  repository's predicted pulls are split between its tags by their pulls of the last days.
"""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import pandas as pd

from analytics.estimates import (
    DAY,
    RankParams,
    day_estimates,
    history,
    region_groups,
    restart_at_shift,
    shift_start,
    target_day,
    weekend_from_weekdays,
)
from analytics.frames import Features, normalise_static, static_at, usage_features, utc_naive
from analytics.namedfiles import named_scale

__all__ = ["OUTPUT_COLUMNS", "RankParams", "rank", "rank_features", "target_day"]
_DOW = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
OUTPUT_COLUMNS = [
    "region",
    "image",
    "tag",
    "digest",
    "score",
    "window_score",
    "rank",
    "reasons",
    "pulls_7d",
    "pipelines",
    "files",
    "last_seen",
    "stay",
]


RECENT_DAYS = 3  # days behind the split between tags, each worth half the next


def _recent(daily: np.ndarray) -> np.ndarray:
    """Pulls of the last ``RECENT_DAYS`` days, each day worth half the next: the current
    split between a repository's tags during a migration. Not by kind of day: the last two
    weekend days are a week old on a Saturday, from before a migration that began on
    Monday, and gave the new tag no share at all."""
    days = daily[:, 1 : 1 + RECENT_DAYS]
    weights = 0.5 ** np.arange(days.shape[1], dtype=np.float64)
    return np.asarray(days @ weights, dtype=np.float64)


def _stay(
    info: pd.DataFrame, profile: np.ndarray, target: pd.Timestamp, first_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Share of the target day's pulls expected to resolve to the digest the tag has at
    midnight, and the usual UTC hour of the tag's move on that weekday (-1: none).

    A tag rebuilt weekly (official images, internal ``latest``) moves on the same weekday at
    about the same hour: its pulls after the move fetch the new digest, whose own layers
    nobody warmed at midnight. The chance of a move is the share of the last four same
    weekdays (those inside the key's history, at least two) with one; the pulls after it
    are the key's hourly profile from the usual hour on.
    """
    stay = np.ones(len(info))
    move_at = np.full(len(info), -1, dtype=np.int64)
    if "moves" not in info.columns:
        return stay, move_at
    weeks = (7, 14, 21, 28)
    for k, moves in enumerate(info["moves"]):
        if not moves:
            continue
        valid = [a for a in weeks if a <= first_valid[k]]
        hours = [h for a, h in moves if a in valid]
        if len(valid) < 2 or not hours:
            continue
        chance = len(hours) / len(valid)
        hour = int(np.median(hours))
        stay[k] = 1.0 - chance * float(profile[k, hour:].sum())
        move_at[k] = hour if chance >= 0.5 else -1
    return stay, move_at


def _peak(profile: np.ndarray) -> str:
    """The busiest hours: the run of hours around the top one with at least half its mass."""
    top = int(np.argmax(profile))
    lo = hi = top
    while lo > 0 and profile[lo - 1] >= profile[top] / 2 and hi - lo < 5:
        lo -= 1
    while hi < 23 and profile[hi + 1] >= profile[top] / 2 and hi - lo < 5:
        hi += 1
    return f"{lo:02d}-{hi + 1:02d}h UTC"


def _hours(hours: list[int]) -> str:
    """[13, 14, 15, 19] -> "13-16h, 19-20h UTC": runs of UTC hours, as ``_peak`` writes them."""
    runs: list[list[int]] = []
    for h in sorted(hours):
        if runs and h == runs[-1][1]:
            runs[-1][1] = h + 1
        else:
            runs.append([h, h + 1])
    return ", ".join(f"{a:02d}-{b:02d}h" for a, b in runs) + " UTC"


def _age(delta: pd.Timedelta) -> str:
    hours = delta / pd.Timedelta(hours=1)
    return f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f}d"


def rank(
    usage: pd.DataFrame,
    static: pd.DataFrame | None,
    now: datetime | pd.Timestamp,
    window: tuple[datetime | pd.Timestamp, datetime | pd.Timestamp] | None = None,
    region: str | None = None,
    params: RankParams | None = None,
) -> pd.DataFrame:
    """The ranking at ``now``: one row per (region, image, tag), best first per region."""
    p = params or RankParams()
    now_ts = utc_naive(now)
    feats = usage_features(
        usage, now_ts, target_day(now_ts), p.lookback_days, region, p.present_weight
    )
    return rank_features(feats, static, now_ts, window, region, p)


def rank_features(
    feats: Features,
    static: pd.DataFrame | None,
    now: datetime | pd.Timestamp,
    window: tuple[datetime | pd.Timestamp, datetime | pd.Timestamp] | None,
    region: str | None,
    p: RankParams,
) -> pd.DataFrame:
    """``rank`` over features already aggregated (``usage_features`` for ``now``'s target
    day, with ``p.lookback_days``): the ensemble aggregates once for all its predictors."""
    now_ts = utc_naive(now)
    target = target_day(now_ts)
    w_start, w_end = (
        (utc_naive(window[0]), utc_naive(window[1])) if window else (target, target + DAY)
    )
    info, daily, hourly, region_start = feats.info, feats.daily, feats.hourly, feats.region_start
    every = normalise_static(static)
    st = static_at(every, now_ts)
    regions = sorted(region_start) if region is None else [region]
    valid = history(feats, target, p)
    first_valid = valid.sum(axis=1).astype(np.int64) - 1
    pulled = daily
    named = named_scale(info, every, daily.shape[1], target, now_ts) if p.removals else None
    if named is not None:  # each day counted with the files naming the key now
        daily = daily * named.scale
    kept = restart_at_shift(daily, valid, target, p)
    shift = shift_start(valid, kept)
    valid = kept
    groups = region_groups(feats)
    weekend = weekend_from_weekdays(daily, valid, target, feats.weekday_hourly, hourly, groups, p)
    bump = feats.bump_daily if p.bumps else None
    score, factor, train, trend = day_estimates(
        daily, valid, target, target, p, groups, weekend, bump
    )
    region_prof = pd.DataFrame(hourly).groupby(info["region"].to_numpy()).sum()
    window_score = np.zeros(len(info))
    profile = np.zeros_like(hourly)
    if len(info):
        rp = region_prof.loc[info["region"]].to_numpy()
        rp = rp / np.maximum(rp.sum(axis=1, keepdims=True), 1.0)
        profile = (hourly + p.hour_shrink * rp) / (
            hourly.sum(axis=1, keepdims=True) + p.hour_shrink
        )
    day = w_start.normalize()
    while day < w_end:
        lo = max(w_start, day)
        hi = min(w_end, day + DAY)
        hours = np.zeros(24)
        first_h, last_h = (
            int((lo - day) / pd.Timedelta(hours=1)),
            int(np.ceil((hi - day) / pd.Timedelta(hours=1))),
        )
        hours[first_h:last_h] = 1.0
        # The bump hours are the target's weekday's: other days of a window go without.
        day_bump = bump if day == target else None
        est, *_ = day_estimates(daily, valid, target, day, p, groups, weekend, day_bump)
        window_score += est * (profile @ hours)
        day += DAY
    stay, move_at = _stay(info, profile, target, first_valid)
    out = info.assign(
        score=score,
        window_score=window_score,
        dow_factor=factor,
        stay=stay,
        move_at=move_at,
        shift=shift,
        trend=trend,
    )
    bump_text = {r: _hours(h) for r, h in feats.bump_hours.items()}
    out["bump"] = [
        bump_text.get(r, "") if t else "" for r, t in zip(out["region"], train, strict=True)
    ]
    out["pulls_7d"] = pulled[:, 1:8].sum(axis=1).astype(np.int64) if len(info) else 0
    out["named_before"] = named.before if named is not None else 0.0
    # Decayed pulls of the last days: the current split between a repository's tags.
    out["recent"] = _recent(daily) if len(info) else 0.0
    out["peak"] = [_peak(row) for row in profile]
    out["reasons_extra"] = ""
    out = _static_adjust(out, st, regions, now_ts, w_start, w_end, p)
    span = (target - min(region_start.values())) / DAY if region_start else 1.0
    out = _long_memory(out, feats.older, span, p)
    return _finish(out, st, target, now_ts, p)


def _static_adjust(
    out: pd.DataFrame,
    st: pd.DataFrame,
    regions: list[str],
    now: pd.Timestamp,
    w_start: pd.Timestamp,
    w_end: pd.Timestamp,
    p: RankParams,
) -> pd.DataFrame:
    """Migrations toward newly named tags, and the prior for named but unpulled images."""
    if st.empty:
        return out
    files = st.groupby(["image", "tag"])["file"].nunique()
    newest = st.groupby(["image", "tag"])["first_seen"].max()
    earliest = st.groupby(["image", "tag"])["first_seen"].min()
    # A tag first named anywhere recently: a migration in progress toward it.
    recent = earliest[earliest >= now - p.migration_days * DAY]
    window_frac = min(1.0, (w_end - w_start) / DAY)
    new_tags: dict[str, set[str]] = {}  # image -> its tags first named recently
    for image, tag in recent.index:
        new_tags.setdefault(image, set()).add(tag)
    extra: list[dict[str, object]] = []
    for reg in regions:
        mine = out["region"] == reg
        used = out[mine & (out["pin"] == "")]
        per_pipe = (used["score"] / used["pipelines"].clip(lower=1)).replace(0, np.nan).median()
        prior_rate = float(per_pipe) if per_pipe == per_pipe else 1.0
        moving = used[used["image"].isin(new_tags.keys())]
        for image, tags in moving.groupby("image").groups.items():
            fresh = new_tags[str(image)]
            for variant in {_variant(t) for t in fresh}:
                rows = [i for i in tags if _variant(out.at[i, "tag"]) == variant]
                if rows:
                    _migrate(out, rows, {t for t in fresh if _variant(t) == variant})
        have_keys = set(zip(out.loc[mine, "image"], out.loc[mine, "tag"], strict=True))
        have_keys |= {(str(e["image"]), str(e["tag"])) for e in extra if e["region"] == reg}
        for (image, tag), n in files.items():
            if (image, tag) in have_keys or not tag:
                continue
            age = now - newest[(image, tag)]
            fade = 0.5 ** ((age / DAY) / p.prior_half_life_days)
            # An old reference never pulled here keeps a floor: below anything pulled,
            # it only fills spare budget.
            prior = max(prior_rate * n * fade, 1e-4 * n)
            extra.append(
                {
                    "region": reg,
                    "image": image,
                    "tag": tag,
                    "pin": "",
                    "score": prior,
                    "window_score": prior * window_frac,
                    "reasons_extra": f"named in {n} file(s) {_age(age)} ago, "
                    "no pulls yet (static prior)",
                }
            )
    if extra:
        add = pd.DataFrame(extra)
        add["pulls_7d"] = 0
        add["pipelines"] = 0
        add["digest"] = ""
        add["dow_factor"] = 1.0
        add["peak"] = ""
        add["recent"] = 0.0
        out = pd.concat([out, add], ignore_index=True)
    return out


def _long_memory(out: pd.DataFrame, old: pd.DataFrame, span: float, p: RankParams) -> pd.DataFrame:
    """Images pulled only before the lookback keep a tiny score (``long_memory`` of their
    old daily rate): they rank below everything seen recently and fill spare budget."""
    if old.empty:
        return out
    span = max(1.0, span)
    have = set(zip(out["region"], out["image"], out["tag"], strict=True))
    old = old[[k not in have for k in zip(old["region"], old["image"], old["tag"], strict=True)]]
    if old.empty:
        return out
    rate = old["pulls"] / span * p.long_memory
    add = pd.DataFrame(
        {
            "region": old["region"],
            "image": old["image"],
            "tag": old["tag"],
            "pin": "",
            "score": rate,
            "window_score": rate,
            "reasons_extra": [
                f"{n} pulls before the last {p.lookback_days}d, last on {d:%Y-%m-%d} (long memory)"
                for n, d in zip(old["pulls"], old["last"], strict=True)
            ],
            "pulls_7d": 0,
            "pipelines": 0,
            "digest": "",
            "dow_factor": 1.0,
            "peak": "",
            "recent": 0.0,
        }
    )
    return pd.concat([out, add], ignore_index=True)


def _variant(tag: str) -> str:
    """``3.12-slim`` -> ``-slim``: tags of one variant differ only by version numbers."""
    return re.sub(r"[0-9.]+", "", tag)


def _migrate(out: pd.DataFrame, rows: list[int], new_tags: set[str]) -> None:
    """Split a migrating repository's demand by the tags' pulls on the latest days.

    Triggered by a tag of the repository named in files for the first time recently. The
    repository's predicted total is kept (by kind of day); its split between tags follows
    the latest days, most recent first (a rising new tag takes demand from the old one as
    it happens; see ``_recent``), since files are not per region and their count says
    nothing about how busy each user is.
    """
    total, wtotal = out.loc[rows, "score"].sum(), out.loc[rows, "window_score"].sum()
    latest = out.loc[rows, "recent"].astype(float)
    if total <= 0 or latest.sum() <= 0 or not any(out.at[i, "tag"] in new_tags for i in rows):
        return  # the new tag is not pulled here yet: the static prior covers it
    shares = latest / latest.sum()
    old = ",".join(sorted(str(out.at[i, "tag"]) for i in rows if out.at[i, "tag"] not in new_tags))
    for i in rows:
        before = out.at[i, "score"] / total
        out.at[i, "score"] = shares[i] * total
        out.at[i, "window_score"] = shares[i] * wtotal
        tag = out.at[i, "tag"]
        if tag in new_tags and old:
            out.at[i, "reasons_extra"] = (
                f"migration {old}->{tag}: {shares[i]:.0%} of the latest pulls (was {before:.0%})"
            )


def _finish(
    out: pd.DataFrame, st: pd.DataFrame, target: pd.Timestamp, now: pd.Timestamp, p: RankParams
) -> pd.DataFrame:
    if out.empty:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    files = st.groupby(["image", "tag"])["file"].agg(
        ["nunique", lambda f: f.str.endswith("Dockerfile").all()]
    )
    files.columns = ["n", "docker"]
    out = out.join(files, on=["image", "tag"])
    out["files"] = out["n"].fillna(0).astype(np.int64)
    # Rows of the static prior and long memory have no moves of their own.
    out["stay"] = out["stay"].fillna(1.0).astype(float)
    out["move_at"] = out["move_at"].fillna(-1).astype(np.int64)
    out["shift"] = out["shift"].fillna(0).astype(np.int64)
    out["trend"] = out["trend"].fillna(1.0).astype(float)
    out["named_before"] = out["named_before"].fillna(0.0).astype(float)
    reasons = []
    weekday = "weekday" if target.dayofweek < 5 else "weekend"
    for row in out.itertuples(index=False):
        parts: list[str] = []
        if row.pulls_7d or row.peak:
            parts.append(f"{row.pulls_7d} pulls/7d (half-life {p.half_life_days:g}d)")
        if row.pipelines:
            parts.append(f"{row.pipelines} pipeline{'s' if row.pipelines != 1 else ''}")
        if row.shift > 0:
            parts.append(f"new level since {row.shift}d ago")
        if abs(row.trend - 1) >= 0.05:
            parts.append(f"trend {row.trend - 1:+.0%} on the recent level")
        if row.peak:
            parts.append(f"{weekday} peak {row.peak}")
        if isinstance(row.bump, str) and row.bump:
            parts.append(f"{_DOW[target.dayofweek]} x{row.dow_factor:.2f} (weekly bump {row.bump})")
        elif row.dow_factor >= 1.5 or row.dow_factor <= 0.67:
            parts.append(f"{_DOW[target.dayofweek]} x{row.dow_factor:.1f}")
        if isinstance(row.last_seen, pd.Timestamp) and not pd.isna(row.last_seen):
            parts.append(f"last pulled {_age(now - row.last_seen)} ago")
        if getattr(row, "digests", 0) and row.digests > 1 and row.pin == "":
            parts.append(f"tag moved ({int(row.digests)} digests), now {row.digest[:19]}")
        if row.move_at >= 0:
            parts.append(
                f"moves {_DOW[target.dayofweek]}s ~{int(row.move_at):02d}h UTC "
                f"({1 - row.stay:.0%} of pulls after, to layers not warmed)"
            )
        if row.pin:
            parts.append("pinned by digest")
        if row.named_before > row.files:
            parts.append(
                f"named in {row.files} of the {int(row.named_before)} files that named it "
                "(earlier pulls scaled to the files left)"
            )
        elif row.files and not str(row.reasons_extra).startswith("named in"):
            kind = "Dockerfile" if row.docker else "file"
            parts.append(f"named in {row.files} {kind}{'s' if row.files != 1 else ''}")
        if row.reasons_extra:
            parts.append(str(row.reasons_extra))
        reasons.append(", ".join(parts))
    out["reasons"] = reasons
    out["tag"] = np.where(out["pin"] != "", "", out["tag"])
    out["digest"] = np.where(out["pin"] != "", out["pin"], out["digest"].fillna(""))
    out = out.sort_values(
        ["region", "score", "window_score", "pipelines", "image", "tag"],
        ascending=[True, False, False, False, True, True],
        kind="stable",
    )
    out["rank"] = out.groupby("region").cumcount() + 1
    # Not rounded: the floors of long-memory and old static-prior images are ~1e-4, and a
    # score rounded to 0 is no candidate at all (spare budget would not take them).
    out["score"] = out["score"].astype(float)
    out["window_score"] = out["window_score"].astype(float)
    return out[OUTPUT_COLUMNS].reset_index(drop=True)
