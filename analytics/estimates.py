"""The model's expected pulls per key on one day: its parameters and its per-day estimate.

Held apart from ``analytics.rank`` (which assembles the ranking: static prior, migrations,
long memory, reasons) so that ``analytics.ensemble`` can ask the same estimate for past
days, from the data before each of them, and score the model's track record without
ranking a whole history again. Pure functions over the arrays of
``analytics.frames.Features``: ``daily[k, a]`` is key ``k``'s pulls ``a`` days before the
target day.

The estimate: the decayed mean over the days of the target's kind (weekday or weekend),
shrunk toward all days; a weekend day from the key's weekday hours
(``weekend_from_weekdays``); a day-of-week factor kept only where it stands out of Poisson
noise, set from the region's weekly bump hours for a release train (``bump_factor``), and
faded once its weekly peak stops recurring (``fade``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analytics.frames import Features

DAY = pd.Timedelta(days=1)


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
    # Prior odds that a weekly peak still recurs after a weekday that fell short of it;
    # the pulls of that day update them (``fade``): a peak that stopped loses its boost.
    dow_recur_odds: float = 9.0
    # A level shift (``restart_at_shift``): the last 2-3 weekdays each this many Poisson
    # deviations off the level of the weekdays before them, on the same side, and
    # ``shift_z`` together; the key's history then starts at the shift.
    shift_day_z: float = 2.0
    shift_z: float = 4.0
    shift_level_days: int = 10  # weekdays before the run that set the level
    # A steady trend (``trend_factor``): applied where its slope is this many standard
    # errors from flat (0: never).
    trend_z: float = 3.0
    trend_max: float = 2.0  # the most a trend multiplies (or divides) an estimate by
    # A day's pulls count for the files still naming the key (``analytics.namedfiles``).
    removals: bool = True


def target_day(now: pd.Timestamp) -> pd.Timestamp:
    """The next whole UTC day: ``now`` itself at midnight, else the following midnight."""
    return (now - pd.Timedelta(1, "ns")).normalize() + DAY


def day_estimates(
    daily: np.ndarray,
    valid: np.ndarray,
    target: pd.Timestamp,
    day: pd.Timestamp,
    p: RankParams,
    groups: np.ndarray,
    weekend: np.ndarray | None = None,
    bump: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expected pulls on ``day`` per key, the day-of-week factor applied, whether that
    factor came from the region's weekly bump hours (``bump``: ``bump_factor``), and the
    trend factor applied (``trend_factor``).

    The decayed mean over days of the same kind (weekday or weekend) is shrunk toward the
    decayed mean over all days times the region's ratio between the two (``groups`` holds
    each key's region number), so a thin weekend history borrows from the week. For a
    weekend day, ``weekend`` (``weekend_from_weekdays``, -1 where unknown) is the target
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
    trend = trend_factor(daily, valid, target, day, p)
    est = est * trend
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
        train, bumped = bump_factor(bump, est, on, others, w, p)
        factor = np.where(train, bumped, factor)
    faded = fade(factor, daily, valid, est, np.flatnonzero(same & (dows == day.dayofweek)), p)
    train &= faded - 1.0 >= 0.5 * (factor - 1.0)  # a train that stopped is no train
    return est * faded, faded, train, trend


def trend_factor(
    daily: np.ndarray, valid: np.ndarray, target: pd.Timestamp, day: pd.Timestamp, p: RankParams
) -> np.ndarray:
    """Per key, what a steady trend makes of the decayed mean's estimate for ``day``.

    A decayed mean with a half-life of days estimates the rate of a week ago: an image
    whose pulls grow 3 % a day is under-estimated by a fifth. The slope is a regression of
    the weekday pulls on their age with the decayed mean's weights, carried from the
    weights' centre to ``day``; it is used only where it is ``trend_z`` standard errors
    from flat (Poisson noise, or the scatter around the line where that is wider: a weekly
    train is no trend) and at most ``trend_max`` times either way. A change from one level
    to another is ``restart_at_shift``'s; this is for the ones too gradual for it.
    """
    ones = np.ones(len(daily))
    if p.trend_z <= 0 or daily.shape[1] < 3:
        return ones
    ages = np.arange(daily.shape[1], dtype=np.float64)
    dows = np.array([(target - int(a) * DAY).dayofweek for a in ages])
    w = valid * np.where((dows < 5) & (ages >= 1), 0.5 ** ((ages - 1) / p.half_life_days), 0.0)
    sw = w.sum(axis=1)
    n = (w > 0).sum(axis=1)
    ok = (n >= 6) & (sw > 0)
    sw = np.where(ok, sw, 1.0)
    x_bar = (w * ages).sum(axis=1) / sw
    y_bar = (w * daily).sum(axis=1) / sw
    dx = ages[None, :] - x_bar[:, None]
    sxx = (w * dx**2).sum(axis=1)
    ok &= (sxx > 0) & (y_bar > 0)
    sxx = np.where(ok, sxx, 1.0)
    slope = (w * dx * (daily - y_bar[:, None])).sum(axis=1) / sxx
    resid = daily - y_bar[:, None] - slope[:, None] * dx
    scatter = (w * resid**2).sum(axis=1) / sw * n / np.maximum(n - 2, 1)
    var = np.maximum(np.maximum(y_bar, scatter), 1.0)
    se = np.sqrt(var * (w**2 * dx**2).sum(axis=1)) / sxx
    at = -float((day - target) / DAY)  # the age of ``day``: 0 for the target, -1 after it
    ahead = y_bar + slope * (at - x_bar)
    factor = np.clip(
        np.divide(ahead, y_bar, out=ones.copy(), where=y_bar > 0), 1 / p.trend_max, p.trend_max
    )
    return np.where(ok & (np.abs(slope) > p.trend_z * se), factor, 1.0)


def restart_at_shift(
    daily: np.ndarray, valid: np.ndarray, target: pd.Timestamp, p: RankParams
) -> np.ndarray:
    """``valid`` without the days before a key's level shift (``daily[k, a]``: pulls ``a``
    days before ``target``). Applied once per day estimated from, before its estimates.

    A pipeline adopting an image, or moving off it, changes its rate from one day to the
    next; a decayed mean with a half-life of days then trails the new level for a week
    (80 pulls a weekday, then 139 and 152: the mean says 86). Where the last ``s`` weekdays
    (3, else 2) each lie ``shift_day_z`` Poisson deviations off the plain mean of the
    ``shift_level_days`` weekdays before them, on the same side, and ``shift_z`` together,
    the key's history starts at the first of them. One day off its level (a release train,
    an outage) is no shift; nor are two that disagree; where the weekdays before vary more
    than Poisson noise (a weekly train and the zeros between), their own spread is the
    deviation.
    """
    ages = np.arange(daily.shape[1])
    dows = np.array([(target - int(a) * DAY).dayofweek for a in ages])
    weekdays = np.flatnonzero((dows < 5) & (ages >= 1))  # most recent first
    out = valid
    done = np.zeros(len(daily), dtype=bool)
    for s in (3, 2):
        if len(weekdays) < s + 3:
            continue
        recent, before = weekdays[:s], weekdays[s : s + p.shift_level_days]
        x = daily[:, recent]
        seen = valid[:, before] > 0
        n = seen.sum(axis=1)
        level = np.divide(
            (daily[:, before] * seen).sum(axis=1), n, out=np.zeros(len(daily)), where=n > 0
        )
        spread = np.divide(
            (((daily[:, before] - level[:, None]) ** 2) * seen).sum(axis=1),
            n - 1,
            out=np.zeros(len(daily)),
            where=n > 1,
        )
        # Poisson deviations, or the days' own spread where it is wider: a weekly train's
        # zeros between trains are its usual, not a drop.
        sd = np.sqrt(np.maximum(np.maximum(level, spread), 1.0))
        z = (x - level[:, None]) / sd[:, None]
        together = np.abs(x.sum(axis=1) - s * level) / (np.sqrt(s) * sd)
        side = (z > p.shift_day_z).all(axis=1) | (z < -p.shift_day_z).all(axis=1)
        hit = ~done & (valid[:, recent] > 0).all(axis=1) & (n >= 3) & side
        hit &= together > p.shift_z
        if hit.any():
            cut = ages > recent[-1]
            out = np.where(hit[:, None] & cut[None, :], 0.0, out)
            done |= hit
    return out


def shift_start(valid: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Per key, how many days before the target its level shift began (0: no shift), from
    ``valid`` before and after ``restart_at_shift``."""
    cut = (kept != valid).any(axis=1)
    return np.where(cut, kept.sum(axis=1) - 1, 0).astype(np.int64)


def fade(
    factor: np.ndarray,
    daily: np.ndarray,
    valid: np.ndarray,
    est: np.ndarray,
    occurrences: np.ndarray,
    p: RankParams,
) -> np.ndarray:
    """Weekday boosts that fade once the weekly peak stops recurring.

    ``occurrences`` are the ages of the weekday's past days. When the latest of them (in a
    row, most recent first) fell short of the boosted level ``est * factor``, the boost's
    excess is kept in proportion to the chance that the peak still recurs: prior odds
    ``dow_recur_odds`` times the Poisson likelihood ratio of those days' pulls ``x`` under
    the peak and under the usual level, ``exp(x ln factor - est (factor - 1))`` each. A
    train of 17 that pulled nothing last Tuesday (``0 pulls/7d, last pulled 12d ago``)
    keeps none of its boost (a ratio of ``e^-16``); a 20 % uplift a few pulls short keeps
    most of it. A peak that reached its level on the latest day is untouched.
    """
    boosted = factor > 1.0
    ratio = np.log(np.where(boosted, factor, 1.0))
    logit = np.full(len(factor), np.log(p.dow_recur_odds))
    missed = np.zeros(len(factor), dtype=bool)
    going = np.ones(len(factor), dtype=bool)
    for age in sorted(int(a) for a in occurrences):
        x = daily[:, age]
        miss = going & boosted & (valid[:, age] > 0) & (x < est * factor)
        logit = np.where(miss, logit + x * ratio - est * (factor - 1.0), logit)
        missed |= miss
        going &= miss
    keep = 1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0)))
    return np.where(missed, 1.0 + (factor - 1.0) * keep, factor)


def bump_factor(
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


def weekend_from_weekdays(
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


def history(feats: Features, target: pd.Timestamp, p: RankParams) -> np.ndarray:
    """``valid[k, a]``: 1.0 where the day ``a`` days before ``target`` is inside key ``k``'s
    history (its region's, and with ``key_history`` from its first pull in the lookback:
    days before an image was adopted, or a tag existed, are not zeros of its demand)."""
    info, daily = feats.info, feats.daily
    ages = np.arange(daily.shape[1])
    first_valid = np.array(
        [((target - feats.region_start[r]) // DAY) for r in info["region"]], dtype=np.int64
    )
    if p.key_history and len(info):
        seen = daily > 0
        oldest = daily.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        first_valid = np.minimum(first_valid, np.maximum(np.where(seen.any(axis=1), oldest, 0), 1))
    return (ages[None, :] <= first_valid[:, None]).astype(np.float64)


def region_groups(feats: Features) -> np.ndarray:
    """Each key's region as a number (``pd.factorize`` of ``info["region"]``)."""
    if not len(feats.info):
        return np.zeros(0, np.int64)
    codes: np.ndarray = np.asarray(pd.factorize(feats.info["region"])[0], dtype=np.int64)
    return codes


def past_estimate(
    feats: Features, valid: np.ndarray, target: pd.Timestamp, back: int, p: RankParams
) -> np.ndarray:
    """The model's estimate for the day ``back`` days before ``target``, from the days
    before it only: the arrays shifted by ``back`` days. The weekly bump hours, the static
    prior, migrations and long memory are left out (they need the raw rows of that day's
    past), and the hour shares of the weekend estimate are the whole lookback's: the core
    of the model, as ``analytics.ensemble`` scores its track record."""
    day = target - back * DAY
    daily = feats.daily[:, back:]
    ok = restart_at_shift(daily, valid[:, back:], day, p)
    groups = region_groups(feats)
    weekend = weekend_from_weekdays(daily, ok, day, feats.weekday_hourly, feats.hourly, groups, p)
    est, *_ = day_estimates(daily, ok, day, day, p, groups, weekend, None)
    return est
