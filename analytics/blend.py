"""Backtested choice of predictor: the ranking picks, per region, the blend of signals that
would have served the last days best.

Pure functions over the per-key daily matrix ``analytics.rank`` builds (``daily[key, age]``:
pulls ``age`` days before the target day, age 0 being the target itself and always empty).
Shifting the matrix by ``k`` columns gives exactly what was known at the origin ``k`` days
back, with that day's pulls as its outcome (column ``k``), so the last ``days`` origins are
replayed without re-reading the data and without look-ahead: a prediction for an origin only
sees columns older than it.

Signals per key, for an origin:

* ``model``: the ranking's own decayed same-kind estimate with its day-of-week factor;
* ``recency``: pulls on the last day of the same kind (the last working day for a weekday);
* ``frequency``: the mean daily pulls over the key's history in the lookback;
* ``week``: pulls on the same weekday a week before.

Candidates are fixed mixes of them (``CANDIDATES``). Each is scored on every replayed
origin of the target's kind (weekday or weekend) by a ``DayScorer`` (the backtest passes
one that packs real layers under the byte budget; the default counts the pulls caught by
the top ``top`` keys, for lack of sizes), the hits and totals are summed over the days
and the best rate wins; a tie keeps the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)
SIGNALS = ("model", "recency", "frequency", "week")

# name -> weights over SIGNALS; "model" first: it wins ties.
CANDIDATES: dict[str, tuple[float, float, float, float]] = {
    "model": (1.0, 0.0, 0.0, 0.0),
    "recency": (0.0, 1.0, 0.0, 0.0),
    "frequency": (0.0, 0.0, 1.0, 0.0),
    "model+recency": (0.75, 0.25, 0.0, 0.0),
    "model=recency": (0.5, 0.5, 0.0, 0.0),
    "model+frequency": (0.75, 0.0, 0.25, 0.0),
    "model=frequency": (0.5, 0.0, 0.5, 0.0),
    "model+week": (0.75, 0.0, 0.0, 0.25),
}

# keys (region, image, tag, pin) of the rows scored, the day, predictions per candidate name,
# actual pulls per key that day -> (hit, total) per candidate name.
DayScorer = Callable[
    [pd.DataFrame, pd.Timestamp, Mapping[str, np.ndarray], np.ndarray],
    Mapping[str, tuple[float, float]],
]
Estimator = Callable[[np.ndarray, np.ndarray, pd.Timestamp], np.ndarray]


def signals(
    daily: np.ndarray, valid: np.ndarray, target: pd.Timestamp, estimate: Estimator
) -> dict[str, np.ndarray]:
    """The signals for ``target`` from ``daily``/``valid`` (column 0 = the target day)."""
    n, width = daily.shape
    ages = np.arange(width)
    kind = target.dayofweek >= 5
    same = [a for a in ages[1:] if ((target - int(a) * DAY).dayofweek >= 5) == kind]
    zeros = np.zeros(n)
    hist = valid * (ages >= 1)
    days = hist.sum(axis=1)
    return {
        "model": estimate(daily, valid, target),
        "recency": daily[:, same[0]] * valid[:, same[0]] if same else zeros,
        "frequency": np.divide((daily * hist).sum(axis=1), days, out=zeros.copy(), where=days > 0),
        "week": daily[:, 7] * valid[:, 7] if width > 7 else zeros,
    }


def mix(sig: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    weights = CANDIDATES[name]
    out = np.zeros_like(sig["model"])
    for w, s in zip(weights, SIGNALS, strict=True):
        if w:
            out += w * sig[s]
    return out


@dataclass(frozen=True)
class Choice:
    name: str
    rate: float  # the winner's hit rate over the replayed days
    model_rate: float
    days: int  # replayed days of the target's kind
    kind: str = "weekday"

    def reason(self) -> str:
        if self.days == 0:
            return ""
        span = "weekdays" if self.kind == "weekday" else "weekend days"
        if self.name == "model":
            return f"model kept: best of {len(CANDIDATES)} blends on the last {self.days} {span}"
        return (
            f"blend {self.name}: {self.rate:.1%} hit on the last {self.days} {span} "
            f"(model {self.model_rate:.1%})"
        )


def top_scorer(top: int) -> DayScorer:
    """Size-free scorer: pulls on the ``top`` keys predicted highest, over all pulls."""

    def score(
        keys: pd.DataFrame,
        day: pd.Timestamp,
        preds: Mapping[str, np.ndarray],
        actual: np.ndarray,
    ) -> dict[str, tuple[float, float]]:
        total = float(actual.sum())
        out = {}
        for name, pred in preds.items():
            k = min(top, len(pred))
            idx = np.argpartition(-pred, k - 1)[:k] if k else np.zeros(0, np.int64)
            idx = idx[pred[idx] > 0]
            out[name] = (float(actual[idx].sum()), total)
        return out

    return score


def choose_blend(
    keys: pd.DataFrame,
    groups: np.ndarray,
    daily: np.ndarray,
    valid: np.ndarray,
    target: pd.Timestamp,
    days: int,
    estimate: Estimator,
    scorer: DayScorer,
) -> dict[int, Choice]:
    """Replay the origins of the target's kind (weekday or weekend) among the last ``days``
    before ``target``; the best candidate per group (``groups`` numbers each key's region).
    Only days of the same kind: a weekend is not predicted by what served weekdays best."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    hits = np.zeros((n_groups, len(CANDIDATES)))
    total = np.zeros(n_groups)
    replayed = np.zeros(n_groups, dtype=np.int64)
    weekend = target.dayofweek >= 5
    for k in range(1, min(days, daily.shape[1] - 2) + 1):
        if ((target - k * DAY).dayofweek >= 5) != weekend:
            continue
        sig = signals(daily[:, k:], valid[:, k:], target - k * DAY, estimate)
        preds = {name: mix(sig, name) for name in CANDIDATES}
        for g, idx in enumerate(members):
            actual = daily[idx, k]
            if actual.sum() <= 0:
                continue
            part = {name: pred[idx] for name, pred in preds.items()}
            scored = scorer(keys.iloc[idx], target - k * DAY, part, actual)
            hits[g] += [scored[name][0] for name in CANDIDATES]
            total[g] += scored["model"][1]
            replayed[g] += 1
    out = {}
    names = list(CANDIDATES)
    kind = "weekend" if weekend else "weekday"
    for g in range(n_groups):
        if total[g] <= 0:
            out[g] = Choice("model", 0.0, 0.0, 0, kind)
            continue
        rates = hits[g] / total[g]
        best = int(np.argmax(rates))  # first of the best: the model wins ties
        out[g] = Choice(names[best], float(rates[best]), float(rates[0]), int(replayed[g]), kind)
    return out


def blend_scores(
    keys: pd.DataFrame,
    groups: np.ndarray,
    daily: np.ndarray,
    valid: np.ndarray,
    target: pd.Timestamp,
    days: int,
    estimate: Estimator,
    scorer: DayScorer,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores for ``target`` from each group's chosen blend, and the reason per key."""
    choices = choose_blend(keys, groups, daily, valid, target, days, estimate, scorer)
    sig = signals(daily, valid, target, estimate)
    score = np.zeros(len(keys))
    reason = np.full(len(keys), "", dtype=object)
    for g, choice in choices.items():
        mine = groups == g
        score[mine] = mix(sig, choice.name)[mine]
        reason[mine] = choice.reason()
    return score, reason
