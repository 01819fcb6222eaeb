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
* **hour-of-day** profile, for the share of a day's pulls that falls inside a window;
* **recency**: the decay itself, plus the last pull shown in the reasons; a key's history
  starts at its first pull in the lookback, so an image adopted on Wednesday is not
  predicted from the zeros of the weekend before it existed;
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
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from analytics.frames import normalise_static, static_at, usage_features, utc_naive

DAY = pd.Timedelta(days=1)
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


@dataclass(frozen=True)
class RankParams:
    half_life_days: float = 4.0
    lookback_days: int = 28
    dow_shrink: float = 3.0  # pseudo-weeks pulling the day-of-week factor toward 1
    dow_z: float = 3.0  # Poisson deviations a weekday must differ by to get a factor at all
    kind_shrink: float = 1.0  # pseudo-days pulling a weekday/weekend mean toward all days
    weekend_shrink: float = 40.0  # pseudo-days pulling a weekend mean toward the weekdays'
    hour_shrink: float = 24.0  # pseudo-pulls pulling an image's hours toward the region's
    # A newer tag named this recently is a migration in progress: as long as the lookback,
    # since the old tag's decayed history outlives a migration spread over two weeks.
    migration_days: int = 28
    prior_half_life_days: float = 7.0
    long_memory: float = 0.01  # weight of the daily rate of images not pulled in the lookback
    key_history: bool = True  # a key's history starts at its first pull in the lookback
    present_weight: float = 0.3  # a use of an image already on the node, in pulls
    bumps: bool = True  # weekly bump hours (release trains) set their images' weekday factor


def target_day(now: pd.Timestamp) -> pd.Timestamp:
    """The next whole UTC day: ``now`` itself at midnight, else the following midnight."""
    return (now - pd.Timedelta(1, "ns")).normalize() + DAY


def _day_estimates(
    daily: np.ndarray,
    valid: np.ndarray,
    target: pd.Timestamp,
    day: pd.Timestamp,
    p: RankParams,
    groups: np.ndarray,
    weekend: np.ndarray | None = None,
    bump: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected pulls on ``day`` per key, the day-of-week factor applied, and whether that
    factor came from the region's weekly bump hours (``bump``: ``_bump_factor``).

    The decayed mean over days of the same kind (weekday or weekend) is shrunk toward the
    decayed mean over all days times the region's ratio between the two (``groups`` holds
    each key's region number), so a thin weekend history borrows from the week. For a
    weekend day, ``weekend`` (``_weekend_from_weekdays``, -1 where unknown) is the target
    instead: two weekend days a week are too few to tell a nightly job from a quiet one.
    """
    ages = np.arange(daily.shape[1])
    dows = np.array([(target - int(a) * DAY).dayofweek for a in ages])
    is_weekend = day.dayofweek >= 5
    same = ((dows >= 5) == is_weekend) & (ages >= 1)
    weights = np.where(same, 0.5 ** ((ages - 1) / p.half_life_days), 0.0)
    w = valid * weights  # valid: (keys, ages) days inside the region's history
    denom = w.sum(axis=1)
    zeros = np.zeros(len(daily))
    same_est = np.divide((daily * w).sum(axis=1), denom, out=zeros.copy(), where=denom > 0)
    w_all = valid * np.where(ages >= 1, 0.5 ** ((ages - 1) / p.half_life_days), 0.0)
    d_all = w_all.sum(axis=1)
    all_est = np.divide((daily * w_all).sum(axis=1), d_all, out=zeros.copy(), where=d_all > 0)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    num = np.bincount(groups, weights=same_est, minlength=n_groups)
    den = np.bincount(groups, weights=all_est, minlength=n_groups)
    # A region with no day of that kind yet (logs of one weekend) has no ratio: 1.
    seen_kind = np.bincount(groups, weights=denom > 0, minlength=n_groups) > 0
    ratio = np.divide(num, den, out=np.ones(n_groups), where=(den > 0) & seen_kind)[groups]
    c = p.kind_shrink
    est = (denom * same_est + c * ratio * all_est) / (denom + c)
    if is_weekend and weekend is not None:
        c = p.weekend_shrink
        est = np.where(weekend >= 0, (denom * same_est + c * weekend) / (denom + c), est)
    # Day-of-week factor: the decayed mean on that weekday over the decayed mean on days
    # of its kind, shrunk toward 1 by ``dow_shrink`` pseudo-weeks; kept only where the
    # weekday's pulls over the lookback differ from what the mean of its kind gives by more
    # than ``dow_z`` Poisson deviations. A release train (3-5 times its weekday mean)
    # passes at once; the week-to-week noise of a busy image on an ordinary weekday does
    # not, since an unfounded factor moves big images across the budget edge.
    on = valid * (same & (dows == day.dayofweek))
    w_dow = w * on
    n_dow = on.sum(axis=1)
    sum_dow = w_dow.sum(axis=1)
    mean_dow = np.divide((daily * w_dow).sum(axis=1), sum_dow, out=zeros.copy(), where=sum_dow > 0)
    k = p.dow_shrink
    factor = np.divide(
        n_dow * mean_dow + k * est,
        (n_dow + k) * est,
        out=np.ones(len(daily)),
        where=est > 0,
    )
    of_kind = valid * same
    n_kind = of_kind.sum(axis=1)
    mean_kind = np.divide((daily * of_kind).sum(axis=1), n_kind, out=zeros.copy(), where=n_kind > 0)
    usual = n_dow * mean_kind
    deviation = np.abs((daily * on).sum(axis=1) - usual) / np.sqrt(np.maximum(usual, 1.0))
    factor = np.where(deviation > p.dow_z, factor, 1.0)
    train = np.zeros(len(daily), dtype=bool)
    if bump is not None and not is_weekend:
        others = valid * same * (dows != day.dayofweek)
        train, bumped = _bump_factor(bump, est, on, others, w, p)
        factor = np.where(train, bumped, factor)
    return est * factor, factor, train


def _bump_factor(
    bump: np.ndarray,
    est: np.ndarray,
    on: np.ndarray,
    others: np.ndarray,
    w: np.ndarray,
    p: RankParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The day-of-week factor of keys pulled in their region's weekly bump hours, and which
    keys it is for.

    A release train adds the same runs every week in the same few hours; over the whole day
    its images' excess hides in the day's noise (a 20 % uplift on 60 pulls a day passes 3
    Poisson deviations one week in two), in the train's hours it stands out. ``bump[k, a]``
    is the key's pulls in those hours (``Features.bump_daily``); where its excess on the
    weekday's days over its other weekdays passes ``dow_z`` deviations, the day is the
    key's kind mean without the weekday's share of that excess, plus the excess: a plain
    mean of the weekday's days, since a train repeats week after week and one week's
    count is noise.
    """
    n_on, n_off = on.sum(axis=1), others.sum(axis=1)
    s_on, s_off = (bump * on).sum(axis=1), (bump * others).sum(axis=1)
    usual = np.divide(n_on * s_off, n_off, out=np.zeros(len(est)), where=n_off > 0)
    z = (s_on - usual) / np.sqrt(np.maximum(usual, 1.0))
    excess = np.divide(s_on, n_on, out=np.zeros(len(est)), where=n_on > 0) - np.divide(
        s_off, n_off, out=np.zeros(len(est)), where=n_off > 0
    )
    # The weekday's share of the kind mean's weights: that much of the excess is in ``est``.
    w_sum = w.sum(axis=1)
    share = np.divide((w * on).sum(axis=1), w_sum, out=np.zeros(len(est)), where=w_sum > 0)
    day = est + (1.0 - share) * excess
    train = (z > p.dow_z) & (excess > 0) & (n_off > 0) & (est > 0)
    return train, np.divide(day, est, out=np.ones(len(est)), where=est > 0)


def _weekend_from_weekdays(
    daily: np.ndarray,
    valid: np.ndarray,
    target: pd.Timestamp,
    weekday_hourly: np.ndarray,
    hourly: np.ndarray,
    groups: np.ndarray,
    p: RankParams,
) -> np.ndarray:
    """A weekend day's pulls per key from its weekdays, hour by hour (-1: no weekdays).

    Scheduled jobs run every day at their hour; people push on weekdays. So each UTC hour
    keeps, on a weekend day, the share of its weekday pulls that the whole region keeps
    in that hour (about all of them at night, a few at the office peak), and a key's
    weekend day is its decayed weekday rate spread over its weekday hours, each hour
    weighted by that share: a key pulled at 3 a.m. keeps its rate, one pulled at 10 a.m.
    keeps a few per cent, whatever its own two weekend days a week happened to show.
    """
    ages = np.arange(daily.shape[1])
    dows = np.array([(target - int(a) * DAY).dayofweek for a in ages])
    weekday = valid * ((dows < 5) & (ages >= 1))
    weekend = valid * ((dows >= 5) & (ages >= 1))
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    keep = np.zeros((n_groups, 24))
    weekend_hourly = np.maximum(hourly - weekday_hourly, 0.0)
    for g in range(n_groups):
        mine = groups == g
        # The region's days: those of its longest-lived key.
        n_weekdays = max(float(weekday[mine].sum(axis=1).max()), 1.0)
        n_weekend = max(float(weekend[mine].sum(axis=1).max()), 1.0)
        per_weekday = weekday_hourly[mine].sum(axis=0) / n_weekdays
        per_weekend = weekend_hourly[mine].sum(axis=0) / n_weekend
        keep[g] = np.divide(per_weekend, per_weekday, out=np.zeros(24), where=per_weekday > 0)
    w = weekday * 0.5 ** (np.maximum(ages - 1, 0) / p.half_life_days)
    denom = w.sum(axis=1)
    rate = np.divide((daily * w).sum(axis=1), denom, out=np.zeros(len(daily)), where=denom > 0)
    total = weekday_hourly.sum(axis=1)
    share = np.divide(
        weekday_hourly, total[:, None], out=np.zeros_like(weekday_hourly), where=total[:, None] > 0
    )
    kept = (share * keep[groups]).sum(axis=1)
    return np.where((total > 0) & (denom > 0), rate * kept, -1.0)


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
    target = target_day(now_ts)
    w_start, w_end = (
        (utc_naive(window[0]), utc_naive(window[1])) if window else (target, target + DAY)
    )
    feats = usage_features(usage, now_ts, target, p.lookback_days, region, p.present_weight)
    info, daily, hourly, region_start = feats.info, feats.daily, feats.hourly, feats.region_start
    st = static_at(normalise_static(static), now_ts)
    regions = sorted(region_start) if region is None else [region]
    ages = np.arange(daily.shape[1])
    first_valid = np.array(
        [((target - region_start[r]) // DAY) for r in info["region"]], dtype=np.int64
    )
    if p.key_history and len(info):
        # A key's history starts at its first pull in the lookback: days before an image
        # was adopted (or a tag existed) are not zeros of its demand.
        seen = daily > 0
        oldest = daily.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        first_valid = np.minimum(first_valid, np.maximum(np.where(seen.any(axis=1), oldest, 0), 1))
    valid = (ages[None, :] <= first_valid[:, None]).astype(np.float64)

    groups = (
        pd.factorize(info["region"])[0].astype(np.int64) if len(info) else np.zeros(0, np.int64)
    )
    weekend = _weekend_from_weekdays(daily, valid, target, feats.weekday_hourly, hourly, groups, p)
    bump = feats.bump_daily if p.bumps else None
    score, factor, train = _day_estimates(daily, valid, target, target, p, groups, weekend, bump)
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
        est, _, _ = _day_estimates(daily, valid, target, day, p, groups, weekend, day_bump)
        window_score += est * (profile @ hours)
        day += DAY
    stay, move_at = _stay(info, profile, target, first_valid)
    out = info.assign(
        score=score, window_score=window_score, dow_factor=factor, stay=stay, move_at=move_at
    )
    bump_text = {r: _hours(h) for r, h in feats.bump_hours.items()}
    out["bump"] = [
        bump_text.get(r, "") if t else "" for r, t in zip(out["region"], train, strict=True)
    ]
    out["pulls_7d"] = daily[:, 1:8].sum(axis=1).astype(np.int64) if len(info) else 0
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
    migrating = set(recent.index.get_level_values(0))
    extra: list[dict[str, object]] = []
    for reg in regions:
        mine = out["region"] == reg
        used = out[mine & (out["pin"] == "")]
        per_pipe = (used["score"] / used["pipelines"].clip(lower=1)).replace(0, np.nan).median()
        prior_rate = float(per_pipe) if per_pipe == per_pipe else 1.0
        for image, tags in used[used["image"].isin(migrating)].groupby("image").groups.items():
            named_all = files.loc[image]
            for variant in {_variant(t) for t in named_all.index if (image, t) in recent.index}:
                named = named_all[[_variant(t) == variant for t in named_all.index]]
                rows = [i for i in tags if _variant(out.at[i, "tag"]) == variant]
                if rows:
                    _migrate(out, extra, reg, str(image), rows, named, recent)
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


def _migrate(
    out: pd.DataFrame,
    extra: list[dict[str, object]],
    reg: str,
    image: str,
    rows: list[int],
    named: pd.Series,
    recent: pd.Series,
) -> None:
    """Split a migrating repository's demand by the tags' pulls on the latest days.

    Triggered by a tag of the repository named in files for the first time recently. The
    repository's predicted total is kept (by kind of day); its split between tags follows
    the latest days, most recent first (a rising new tag takes demand from the old one as
    it happens; see ``_recent``), since files are not per region and their count says
    nothing about how busy each user is.
    """
    total, wtotal = out.loc[rows, "score"].sum(), out.loc[rows, "window_score"].sum()
    latest = out.loc[rows, "recent"].astype(float)
    new_tags = {t for t in named.index if (image, t) in recent.index}
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
    reasons = []
    weekday = "weekday" if target.dayofweek < 5 else "weekend"
    for row in out.itertuples(index=False):
        parts: list[str] = []
        if row.pulls_7d or row.peak:
            parts.append(f"{row.pulls_7d} pulls/7d (half-life {p.half_life_days:g}d)")
        if row.pipelines:
            parts.append(f"{row.pipelines} pipeline{'s' if row.pipelines != 1 else ''}")
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
        if row.files and not str(row.reasons_extra).startswith("named in"):
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
