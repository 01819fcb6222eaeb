"""The production ranking: an ensemble that learns, per region, how much to trust each
predictor from the region's own recent days.

Predictors (``PREDICTORS``), each a score per (region, image, tag) for the day ahead:

* ``model``: ``analytics.rank`` (decayed kind mean, weekday factors, bumps, static prior,
  migrations, long memory);
* ``yesterday``: the day before's uses; ``frequency``: all uses in the usage given (in the
  lookback and before it); these four count every use (present ones too), as the
  backtest's baselines do; ``decayed``: the decayed mean over all days
  (half-life ``half_life_days``); ``seasonal``: the same weekday one week earlier;
* ``static``: files naming the image and tag (``analytics.staticrefs``, dated by history).

**Scores are combined as shares.** Each predictor's scores are divided by their sum in the
region (a share of its predicted pulls), so pulls, decayed means and file counts are
comparable; the ensemble's score is the weighted mix of shares times the model's predicted
total, so it stays in pulls for the planner. A predictor with nothing to say in a region
(no static reference, no pull yesterday) drops out and the others' weights are renormalised.

**The loss is measured on the region's recent days.** For each of the last
``window_days`` days before the target (a rolling origin, every day predicted from the days
before it only), each predictor's loss is the share of the day's real pulls its top images
miss, at the numbers of images at which the day's own pulls, best first, hold 50, 80 and
95 % of them (``cutoffs``), as a share of what those hold: the head of the ranking, at a
budget of any size. It needs neither the budget nor the images' layers, which the ranking
does not know; a loss that ran the planner at the budget on each predictor's scores
measured no better in the backtest (docs/benchmarks.md, session 35). A day's losses are
fixed once the day is over (``memo`` keeps them). The model's past days are its core
estimate (``analytics.estimates.past_estimate``) from the days before each, so its record
costs no extra pass over the rows (the static prior, migrations and bump hours are left
out of its record, not of its ranking).

**Weights: Hedge (exponentially weighted average forecaster) on the window.** Weight
``w_i`` is proportional to ``prior_i * exp(-eta * L_i)``, ``L_i`` the predictor's summed loss
over the window. Hedge's worst-case bound, regret <= ln N / eta + eta T / 8 against the best
predictor over T days (losses in [0, 1]), is smallest at ``eta = sqrt(8 ln N / T)``, where it
is sqrt(T ln N / 2): 2.5 days of loss in 14, a quarter of the hit rate on each day. It
guarantees nothing at the scale that matters (a point of hit rate), and the weights it sets
are nearly uniform: a blend that trails the best predictor on every workload with one clear
winner. So the rate is set from the precision wanted instead: ``eta = 2 ln N / (T delta)``,
at which a predictor that beats each other by ``delta`` (one point) on every day of a full
window holds all but 1/N of the weight. It is follow-the-leader smoothed by the
window's evidence: the weight moves with the summed advantage, not the days' count, and a
window of noise (advantages that cancel) leaves the weights near the prior. The window
(not a discount) keeps it following a region whose workload changes. Stacking (fitting
the mix's own loss on the last days) was the alternative: its loss of a mix is not linear
in the weights, so it has no such bound, and fitting six weights to fourteen noisy days
overfits. The prior gives the model ``prior_model`` of the mass: with no scored day yet,
the ranking is the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from analytics.estimates import DAY, RankParams, history, past_estimate, target_day
from analytics.frames import Features, normalise_static, static_at, usage_features, utc_naive
from analytics.rank import rank_features

# Days of usage a production ranking reads (``warmer rank``, the service's rank job): the
# model's lookback and its long memory; the backtest ranks from the same window.
RANKING_DAYS = 35


def ranking_since(now: datetime | pd.Timestamp) -> date:
    """The first day of usage a ranking at ``now`` reads (``since`` for ``usage_frame``)."""
    start: date = (pd.Timestamp(now) - pd.Timedelta(days=RANKING_DAYS)).date()
    return start


PREDICTORS = ("model", "yesterday", "frequency", "decayed", "seasonal", "static")
LABELS = {
    "model": "model",
    "yesterday": "yesterday",
    "frequency": "frequency",
    "decayed": "decayed mean",
    "seasonal": "same weekday last week",
    "static": "static references",
}


@dataclass(frozen=True)
class EnsembleParams:
    window_days: int = 14  # past days each predictor is scored on
    min_history_days: int = 7  # days of the region's history before a scored day
    precision: float = 0.01  # delta: the daily advantage the weights act on (hit rate)
    prior_model: float = 0.5  # prior weight of the model, the rest shared evenly
    cutoffs: tuple[float, ...] = (0.5, 0.8, 0.95)  # without a budget: oracle shares held
    half_life_days: float = 4.0  # of the decayed-mean predictor
    other_kind: float = 1.0  # weight of a day of the other kind (weekday/weekend) in the record


@dataclass
class Learned:
    """One region's record: ``losses`` (day, then one column per predictor) and weights."""

    losses: pd.DataFrame
    weights: dict[str, float]


def learning_rate(ep: EnsembleParams) -> float:
    """``2 ln N / (T delta)``: see the module docstring."""
    return 2.0 * math.log(len(PREDICTORS)) / (ep.window_days * ep.precision)


def prior(ep: EnsembleParams) -> np.ndarray:
    rest = (1.0 - ep.prior_model) / (len(PREDICTORS) - 1)
    return np.array([ep.prior_model if n == "model" else rest for n in PREDICTORS])


def hedge(losses: np.ndarray, ep: EnsembleParams, days: np.ndarray | None = None) -> np.ndarray:
    """Hedge weights from ``losses`` (days x predictors), each day counted ``days`` times
    (default once), and the prior."""
    if days is None:
        days = np.ones(len(losses))
    total = days @ losses if len(losses) else np.zeros(len(PREDICTORS))
    logw = np.log(prior(ep)) - learning_rate(ep) * (total - total.min())
    w = np.exp(logw - logw.max())
    out: np.ndarray = w / w.sum()
    return out


def capture_loss(
    score: np.ndarray, actual: np.ndarray, cutoffs: tuple[float, ...] = (0.5, 0.8, 0.95)
) -> float:
    """A day's loss: one minus the share of ``actual`` (real pulls per
    key) held by the top keys of positive ``score``, at each budget (a number of images) at
    which the day's own pulls, best first, hold a ``cutoffs`` share of them, as a share of
    what those hold; averaged over the cutoffs."""
    total = float(actual.sum())
    if total <= 0:
        return 0.0
    pick = np.flatnonzero(score > 0)
    held = np.cumsum(actual[pick[np.argsort(-score[pick], kind="stable")]])
    best = np.cumsum(np.sort(actual)[::-1])
    shares = []
    for q in cutoffs:
        n = min(int(np.searchsorted(best, q * total - 1e-9)), len(best) - 1) + 1
        shares.append((float(held[min(n, len(held)) - 1]) if len(held) else 0.0) / best[n - 1])
    return 1.0 - float(np.mean(shares))


def _decayed(daily: np.ndarray, back: int, half_life: float) -> np.ndarray:
    ages = np.arange(daily.shape[1] - back - 1)
    out: np.ndarray = daily[:, back + 1 :] @ (0.5 ** (ages / half_life))
    return out


def _files(st: pd.DataFrame, day: pd.Timestamp) -> dict[tuple[str, str], int]:
    """Files naming each (image, tag) at ``day``."""
    named = static_at(st, day)
    named = named[named["tag"] != ""]
    counts = named.groupby(["image", "tag"])["file"].nunique()
    return {(str(i), str(t)): int(n) for (i, t), n in counts.items()}


def usage_scores(daily: np.ndarray, back: int, ep: EnsembleParams) -> dict[str, np.ndarray]:
    """The simple predictors' scores per key for the day ``back`` days before the target
    (0: the target), from the days before it (``daily[k, a]``: pulls ``a`` days back)."""
    width = daily.shape[1]
    zeros = np.zeros(len(daily))
    return {
        "yesterday": daily[:, back + 1] if back + 1 < width else zeros,
        "frequency": daily[:, back + 1 :].sum(axis=1),
        "decayed": _decayed(daily, back, ep.half_life_days),
        "seasonal": daily[:, back + 7] if back + 7 < width else zeros,
    }


def learn(
    feats: Features,
    st: pd.DataFrame,
    target: pd.Timestamp,
    p: RankParams,
    ep: EnsembleParams,
    memo: dict[tuple[str, pd.Timestamp], list[float]] | None = None,
) -> dict[str, Learned]:
    """Per region: each predictor's loss on each of the last ``window_days`` days that has
    ``min_history_days`` of history before it and real pulls, and the Hedge weights.

    The loss is ``capture_loss``. A day's losses are fixed once the day is over: ``memo``
    keeps them between calls (per (region, day)), as a service would store them, so a
    rolling run scores each predictor once per day."""
    info = feats.info
    valid = history(feats, target, p)
    days = [
        b
        for b in range(1, ep.window_days + 1)
        if b + ep.min_history_days < feats.daily.shape[1] - 1
    ]
    memo = {} if memo is None else memo
    model_past: dict[int, np.ndarray] = {}
    out: dict[str, Learned] = {}
    for region, start in feats.region_start.items():
        mine = np.flatnonzero(((info["region"] == region) & (info["tag"] != "")).to_numpy())
        age = (target - start) // DAY
        keys = list(zip(info["image"].to_numpy()[mine], info["tag"].to_numpy()[mine], strict=True))
        have = set(keys)
        rows: list[list[float]] = []
        used: list[pd.Timestamp] = []
        for b in days:
            day = target - b * DAY
            if b + ep.min_history_days > age:
                continue
            if (region, day) not in memo:
                actual = np.maximum(feats.real_daily[mine, b], 0.0)
                if actual.sum() <= 0:
                    continue
                named = _files(st, day)
                extra = sorted(k for k in named if k not in have)
                every = keys + extra
                actual = np.concatenate([actual, np.zeros(len(extra))])
                scores = usage_scores(feats.uses_daily[mine], b, ep)
                scores["frequency"] = scores["frequency"] + feats.older_pulls[mine]
                if b not in model_past:  # all regions at once, once per day
                    model_past[b] = past_estimate(feats, valid, target, b, p)
                scores["model"] = model_past[b][mine]
                loss = []
                for name in PREDICTORS:
                    if name == "static":
                        s = np.array([float(named.get(k, 0)) for k in every])
                    else:
                        s = np.concatenate([scores[name], np.zeros(len(extra))])
                    loss.append(capture_loss(s, actual, ep.cutoffs))
                memo[(region, day)] = loss
            rows.append(memo[(region, day)])
            used.append(day)
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), len(PREDICTORS))
        weekend = target.dayofweek >= 5
        counted = np.array([1.0 if (d.dayofweek >= 5) == weekend else ep.other_kind for d in used])
        weights = hedge(arr, ep, counted)
        frame = pd.DataFrame(arr, columns=list(PREDICTORS)).assign(day=used)
        out[region] = Learned(
            frame[["day", *PREDICTORS]], dict(zip(PREDICTORS, map(float, weights), strict=True))
        )
    return out


def rank_ensemble(
    usage: pd.DataFrame,
    static: pd.DataFrame | None,
    now: datetime | pd.Timestamp,
    window: tuple[datetime | pd.Timestamp, datetime | pd.Timestamp] | None = None,
    region: str | None = None,
    params: RankParams | None = None,
    ensemble: EnsembleParams | None = None,
    memo: dict[tuple[str, pd.Timestamp], list[float]] | None = None,
) -> pd.DataFrame:
    """The production ranking at ``now``: ``analytics.rank``'s rows and columns, scored by
    the ensemble, best first per region; each row's reasons start with the predictors that
    drove its score. ``attrs["weights"]`` holds each region's weights, ``attrs["losses"]``
    its record (``Learned``)."""
    p = params or RankParams()
    ep = ensemble or EnsembleParams()
    now_ts = utc_naive(now)
    target = target_day(now_ts)
    feats = usage_features(usage, now_ts, target, p.lookback_days, region, p.present_weight)
    ranked = rank_features(feats, static, now_ts, window, region, p)
    learned = learn(feats, normalise_static(static), target, p, ep, memo)
    out = blend(ranked, feats, learned, ep)
    out.attrs["weights"] = {r: v.weights for r, v in learned.items()}
    out.attrs["losses"] = {r: v.losses for r, v in learned.items()}
    return out


def target_scores(
    ranked: pd.DataFrame, feats: Features, ep: EnsembleParams
) -> dict[str, np.ndarray]:
    """Each predictor's scores for the target day on the rows of the model's ranking."""
    info = feats.info
    pins = np.where(ranked["tag"] == "", ranked["digest"], "")
    index = {
        k: i
        for i, k in enumerate(
            zip(info["region"], info["image"], info["tag"], info["pin"], strict=True)
        )
    }
    rows = np.array(
        [
            index.get(k, -1)
            for k in zip(ranked["region"], ranked["image"], ranked["tag"], pins, strict=True)
        ],
        dtype=np.int64,
    )
    found = rows >= 0
    base = usage_scores(feats.uses_daily, 0, ep)
    base["frequency"] = base["frequency"] + feats.older_pulls
    out = {"model": ranked["score"].to_numpy(dtype=np.float64)}
    for name in ("yesterday", "frequency", "decayed", "seasonal"):
        v = np.zeros(len(ranked))
        v[found] = base[name][rows[found]]
        out[name] = v
    old = feats.older
    if len(old):
        keys = zip(old["region"], old["image"], old["tag"], strict=True)
        pulls = dict(zip(keys, old["pulls"], strict=True))
        extra = np.array(
            [
                float(pulls.get(k, 0.0))
                for k in zip(ranked["region"], ranked["image"], ranked["tag"], strict=True)
            ]
        )
        out["frequency"] = out["frequency"] + np.where(found, 0.0, extra)
    out["static"] = np.where(ranked["tag"] != "", ranked["files"].to_numpy(dtype=np.float64), 0.0)
    return out


def blend(
    ranked: pd.DataFrame, feats: Features, learned: dict[str, Learned], ep: EnsembleParams
) -> pd.DataFrame:
    """The model's rows re-scored by the weighted mix of the predictors' shares."""
    if ranked.empty:
        return ranked
    scores = target_scores(ranked, feats, ep)
    out = ranked.copy()
    region = out["region"].to_numpy()
    score = np.zeros(len(out))
    parts = np.zeros((len(out), len(PREDICTORS)))
    for reg in pd.unique(region):
        mine = region == reg
        w = np.array([learned[reg].weights[n] if reg in learned else 0.0 for n in PREDICTORS])
        if reg not in learned:
            w = prior(ep)
        shares = np.zeros((int(mine.sum()), len(PREDICTORS)))
        for j, name in enumerate(PREDICTORS):
            v = np.maximum(scores[name][mine], 0.0)
            if v.sum() > 0:
                shares[:, j] = v / v.sum()
            else:
                w[j] = 0.0  # nothing to say here: the others' weights renormalised
        w = w / w.sum() if w.sum() > 0 else prior(ep)
        mix = shares * w[None, :]
        total = float(scores["model"][mine].sum())
        score[mine] = mix.sum(axis=1) * total
        parts[mine] = mix
    model = out["score"].to_numpy(dtype=np.float64)
    ratio = np.divide(
        out["window_score"].to_numpy(dtype=np.float64),
        model,
        out=np.ones(len(out)),
        where=model > 0,
    )
    out["score"] = score
    out["window_score"] = score * ratio
    out["reasons"] = [
        _drivers(row) + "; " + str(reason) if reason else _drivers(row)
        for row, reason in zip(parts, out["reasons"], strict=True)
    ]
    out = out.sort_values(
        ["region", "score", "window_score", "image", "tag"],
        ascending=[True, False, False, True, True],
        kind="stable",
    )
    out["rank"] = out.groupby("region").cumcount() + 1
    return out.reset_index(drop=True)


def _drivers(part: np.ndarray) -> str:
    """``ensemble: same weekday last week 81%, model 15%``: the predictors behind a score,
    by their share of it (those of at least 10 %, at least one)."""
    total = float(part.sum())
    if total <= 0:
        return "ensemble: no predictor"
    share = part / total
    order = np.argsort(-share, kind="stable")
    shown = [j for j in order if share[j] >= 0.1] or [int(order[0])]
    return "ensemble: " + ", ".join(f"{LABELS[PREDICTORS[j]]} {share[j]:.0%}" for j in shown)


def weights_over_time(
    usage: pd.DataFrame,
    static: pd.DataFrame | None,
    region: str,
    days: list[pd.Timestamp],
    params: RankParams | None = None,
    ensemble: EnsembleParams | None = None,
) -> pd.DataFrame:
    """The region's weights as of each of ``days`` (midnight): day, predictor, weight."""
    p = params or RankParams()
    ep = ensemble or EnsembleParams()
    st = normalise_static(static)
    rows = []
    for day in days:
        t = utc_naive(day)
        feats = usage_features(usage, t, target_day(t), p.lookback_days, region, p.present_weight)
        learned = learn(feats, st, target_day(t), p, ep).get(region)
        weights = learned.weights if learned else dict(zip(PREDICTORS, prior(ep), strict=True))
        rows += [{"day": t, "predictor": n, "weight": w} for n, w in weights.items()]
    return pd.DataFrame(rows, columns=["day", "predictor", "weight"])
