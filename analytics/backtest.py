"""Rolling-origin backtest of the ranking against baselines and the oracle.

For each day of the history after a warm-up, every strategy ranks with what was known
before midnight (usage strictly before the day, static references named before it; the
model and the ensemble read its last ``RANKING_DAYS`` days, as ``warmer rank`` does), a warm
set is chosen under a byte budget in distinct layer bytes (a layer shared by images is
counted once), and the set is scored against that day's actual pulls:

* pull hit rate: share of pulls whose every layer was warm;
* byte hit rate: share of the bytes really pulled (pulls minus already present ones) served
  by warm layers.

Tags are resolved at midnight, as the warmer would do in its window: a tag that moves during
the day makes later pulls miss the new layers, for every strategy but the oracle.

Strategies: ``ensemble`` (``analytics.ensemble``: the production ranking, which weighs the
others by their record on the region's recent days), ``model`` (``analytics.rank``),
``yesterday`` (the set pulled the day before), ``seasonal`` (the set pulled on the same
weekday one week before: seasonal-naive), ``frequency`` (all-time top by pulls), ``decayed``
(pulls weighted by half-life ``RankParams.half_life_days``), ``static`` (images named in
files, by file count) and ``oracle`` (that day's actual pulls). The ensemble is the ranking
exactly as ``warmer rank`` computes it (it knows neither budget nor layers). All go through
the selection production runs, the planner (``warmer.warm.plan``: greedy by value per new
byte, retried with each valuable image it left out taken first; see ``choose``), so
differences come from the predictions alone and the backtest scores the decision the warmer
makes. The model's predictions include ``stay`` (the share of a tag's pulls before its
expected weekly move), which the planner's value uses (see its "Value"). The planner's value
is the bytes the predicted pulls get, as the byte hit rate counts them. The oracle is the
planner with perfect knowledge, not an upper bound: the greedy is no exact knapsack, so a
choice at the budget edge can lose to another strategy's on a day.

With ``expected`` (a day's expected demand, known for a generated workload: see
``analytics.generate.expected``), every warm set is also scored against that expectation
(``exp_bytes``, ``exp_hit_bytes``: the day's random draw removed), and the ``ideal``
strategy ranks by it: a predictor that knows the workload's rates but not the day's draw.
``ideal_noisy`` ranks by the same rates blurred by the Poisson noise of as many days of
data as the model's decayed mean effectively holds (``effective_days``): a predictor that
knows everything about the workload but must measure each image's level from one history,
as any predictor must. It is a yardstick, not a strategy to run: the cells where it falls
below a baseline in expectation show how many a perfect model of the workload loses to
the noise of its data.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd

from analytics.ensemble import EnsembleParams, rank_ensemble, ranking_since
from analytics.frames import normalise_static, normalise_usage, static_at, utc_naive
from analytics.rank import RankParams, rank
from warmer.warm.plan import Blob, Budget, WantedImage, plan
from warmer.warm.topology import MirrorNode

DAY = pd.Timedelta(days=1)
Layer = tuple[str, int]
DEFAULT_IMAGE_BYTES = 250_000_000  # size model for an image without layer data
STRATEGIES = (
    "ensemble",
    "model",
    "yesterday",
    "seasonal",
    "frequency",
    "decayed",
    "static",
    "oracle",
    "ideal",
    "ideal_noisy",
)
BASELINES = ("yesterday", "seasonal", "frequency", "decayed", "static")
Demand = Callable[[pd.Timestamp], pd.DataFrame]  # a day -> image, tag, pulls, real, stay
# The budget counts distinct layer bytes: a mirror that caches by digest (a layer shared by
# images once), fetches a cold byte once and has no capped link.
_MIRROR = MirrorNode(
    "backtest", None, "", cache_scope="global", fetch_multiplicity=1, link_rate=None
)
KINDS = (
    "all",
    "weekday",
    "after_weekend",
    "weekend",
    "adoption",
    "migration",
    "release",
    "tag_move",
)


class LayerSource(Protocol):
    def layers(self, image: str, tag: str, digest: str, at: datetime) -> list[Layer] | None: ...


@dataclass
class Sizes:
    """Layers of an image, or one pseudo-layer of ``default_bytes`` when unknown."""

    source: LayerSource | None = None
    default_bytes: int = DEFAULT_IMAGE_BYTES

    def __call__(self, image: str, tag: str, digest: str, at: datetime) -> list[Layer]:
        found = self.source.layers(image, tag, digest, at) if self.source else None
        if found:
            return found
        return [(f"unknown:{image}:{tag}@{digest}", self.default_bytes)]


def wanted_images(
    candidates: pd.DataFrame, sizes: Sizes, at: datetime
) -> tuple[list[WantedImage], dict[str, list[Layer]]]:
    """The candidates with a positive score as the planner's wanted images, and each one's
    layers by its name.

    A tag is warmed as it resolves at ``at``; only a digest-pinned candidate keeps its
    digest. Rows naming the same image and tag (the oracle's, one per digest pulled that day)
    are one image: their scores add up, and ``stay`` (when the column is there) is their
    score-weighted mean. An image has one synthetic manifest of no bytes, since the planner
    plans manifests and the budget counts layers."""
    cands = candidates[candidates["score"] > 0]
    has_stay = "stay" in cands.columns
    first: dict[str, tuple[str, str, str]] = {}
    score: dict[str, float] = {}
    staying: dict[str, float] = {}  # score times stay, summed
    for row in cands.itertuples(index=False):
        tag = str(row.tag)
        digest = "" if tag else str(getattr(row, "digest", "") or "")
        name = f"{row.image}:{tag}" if tag else f"{row.image}@{digest}"
        first.setdefault(name, (str(row.image), tag, digest))
        value = float(row.score)
        score[name] = score.get(name, 0.0) + value
        staying[name] = staying.get(name, 0.0) + value * (float(row.stay) if has_stay else 1.0)
    out: list[WantedImage] = []
    layers: dict[str, list[Layer]] = {}
    for name, (image, tag, digest) in first.items():
        layers[name] = list(dict(sizes(image, tag, digest, at)).items())
        out.append(
            WantedImage(
                image=name,
                upstream=_MIRROR.name,
                repository=image,
                tag=tag or None,
                digest=f"manifest:{name}",
                score=score[name],
                manifests=(Blob(f"manifest:{name}", 0, "manifest"),),
                blobs=tuple(Blob(d, size, "blob") for d, size in layers[name]),
                stay=min(1.0, max(0.0, staying[name] / score[name])),
            )
        )
    return out, layers


def choose(candidates: pd.DataFrame, sizes: Sizes, at: datetime, budget: int) -> set[str]:
    """The layers the planner warms for ``candidates`` within ``budget`` distinct layer bytes.

    This is :func:`warmer.warm.plan.plan` itself, the selection production runs, on one
    mirror whose cost model is the backtest's budget: it caches by digest and fetches a cold
    byte once (a layer shared by images is counted once), with no window. Its value is the
    candidates' ``score`` and ``stay`` (see the planner's "Value")."""
    wanted, layers = wanted_images(candidates, sizes, at)
    if not wanted:
        return set()
    chosen = plan(wanted, [_MIRROR], [_MIRROR.name], (), Budget(budget, None), at)
    return {digest for name in chosen.images for digest, _ in layers[name]}


def score_day(actual: pd.DataFrame, warm: set[str], sizes: Sizes) -> dict[str, float]:
    pulls = hit_pulls = 0
    req = hit = 0.0
    for row in actual.itertuples(index=False):
        at = (row.day + pd.Timedelta(hours=int(row.hour))).to_pydatetime()
        layers = sizes(str(row.image), str(row.tag), str(row.digest), at)
        n, real = int(row.pulls), int(row.pulls) - int(row.present)
        total = sum(s for _, s in layers)
        served = sum(s for d, s in layers if d in warm)
        pulls += n
        hit_pulls += n if served == total else 0
        req += real * total
        hit += real * served
    return {"pulls": pulls, "hit_pulls": hit_pulls, "bytes": req, "hit_bytes": hit}


def expected_score(
    demand: pd.DataFrame, warm: set[str], sizes: Sizes, day: pd.Timestamp
) -> dict[str, float]:
    """Expected bytes pulled and served by ``warm`` under a day's expected ``demand``.

    A tag's ``real`` pulls fetch the digest it has at midnight, except the ``1 - stay``
    share made after it moves that day, which fetch the digest it has at the day's end."""
    start = day.to_pydatetime()
    end = (day + DAY - pd.Timedelta(minutes=1)).to_pydatetime()
    req = hit = 0.0
    for row in demand.itertuples(index=False):
        for at, share in ((start, float(row.stay)), (end, 1.0 - float(row.stay))):
            if share <= 0:
                continue
            layers = sizes(str(row.image), str(row.tag), "", at)
            req += row.real * share * sum(s for _, s in layers)
            hit += row.real * share * sum(s for d, s in layers if d in warm)
    return {"exp_bytes": req, "exp_hit_bytes": hit}


def _by_tag(frame: pd.DataFrame, weight: str = "pulls") -> pd.DataFrame:
    g = frame.groupby(["image", "tag"], as_index=False)[weight].sum()
    return g.rename(columns={weight: "score"}).assign(digest="")


Strategy = Callable[[pd.DataFrame, pd.DataFrame, pd.Timestamp, pd.DataFrame], pd.DataFrame]


def _read(before: pd.DataFrame, day: pd.Timestamp) -> pd.DataFrame:
    """The usage a production ranking on ``day`` reads: its last ``RANKING_DAYS`` days."""
    return before[before["day"] >= pd.Timestamp(ranking_since(day))]


def _model(params: RankParams) -> Strategy:
    def run(
        before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
    ) -> pd.DataFrame:
        ranked = rank(_read(before, day), static, day, params=params)
        return ranked[["image", "tag", "digest", "score", "stay"]]

    return run


def _yesterday(
    before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
) -> pd.DataFrame:
    return _by_tag(before[before["day"] == day - DAY])


def _seasonal(
    before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
) -> pd.DataFrame:
    return _by_tag(before[before["day"] == day - 7 * DAY])


def _frequency(
    before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
) -> pd.DataFrame:
    return _by_tag(before)


def _decayed(half_life: float) -> Strategy:
    def run(
        before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
    ) -> pd.DataFrame:
        age = (day - before["day"]) / DAY
        return _by_tag(before.assign(w=before["pulls"] * 0.5 ** ((age - 1) / half_life)), "w")

    return run


def _ensemble(params: RankParams, ensemble: EnsembleParams) -> Strategy:
    """The production ranking as ``warmer rank`` computes it."""
    memo: dict[tuple[str, pd.Timestamp], list[float]] = {}  # a day's losses, once over

    def run(
        before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
    ) -> pd.DataFrame:
        ranked = rank_ensemble(
            _read(before, day), static, day, params=params, ensemble=ensemble, memo=memo
        )
        return ranked[["image", "tag", "digest", "score", "stay"]]

    return run


def _static(
    before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
) -> pd.DataFrame:
    named = static_at(static, day)
    return (
        named.groupby(["image", "tag"], as_index=False)["file"]
        .nunique()
        .rename(columns={"file": "score"})
        .assign(digest="")
    )


def _oracle(
    before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
) -> pd.DataFrame:
    real = actual.assign(real=actual["pulls"] - actual["present"] + 1e-3 * actual["pulls"])
    return (
        real.groupby(["image", "tag", "digest"], as_index=False)["real"]
        .sum()
        .rename(columns={"real": "score"})
    )


def _ideal(demand: Demand) -> Strategy:
    def run(
        before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
    ) -> pd.DataFrame:
        d = demand(day)
        # Ties broken by all uses, as the oracle's: a present-only image still ranks.
        return pd.DataFrame(
            {
                "image": d["image"],
                "tag": d["tag"],
                "digest": "",
                "score": d["real"] + 1e-3 * d["pulls"],
                "stay": d["stay"],
            }
        )

    return run


def effective_days(p: RankParams) -> float:
    """Days of data the model's decayed mean holds: the effective sample size of its weights
    over the lookback, (sum w)^2 / sum w^2, times the share of days of one kind (5 in 7)."""
    ages = np.arange(1, p.lookback_days + 1)
    w = 0.5 ** ((ages - 1) / p.half_life_days)
    return float(w.sum() ** 2 / (w**2).sum() * 5 / 7)


def noisy_ideal(demand: Demand, days: float, region: str) -> Strategy:
    """The ideal predictor with each tag's expected real pulls replaced by a Poisson count
    over ``days`` days, divided by ``days``: the rates as one history of that length shows
    them (see the module docstring)."""
    ideal = _ideal(demand)

    def run(
        before: pd.DataFrame, static: pd.DataFrame, day: pd.Timestamp, actual: pd.DataFrame
    ) -> pd.DataFrame:
        out = ideal(before, static, day, actual)
        d = demand(day)
        # One draw per (region, day), the same in every run.
        rng = np.random.default_rng([zlib.crc32(region.encode()), int(day.value // 10**9)])
        seen = rng.poisson(d["real"].to_numpy() * days) / days
        return out.assign(score=seen + 1e-3 * d["pulls"].to_numpy())

    return run


def derive_kinds(
    usage: pd.DataFrame, region: str, days: list[pd.Timestamp]
) -> dict[pd.Timestamp, set[str]]:
    """Day kinds from the data alone: calendar, first pulls of new images and new tags."""
    u = usage[usage["region"] == region]
    first = u.groupby(["image", "tag"])["day"].min()
    repo_first = u.groupby("image")["day"].min()
    out: dict[pd.Timestamp, set[str]] = {}
    for day in days:
        kinds = {"weekday" if day.dayofweek < 5 else "weekend"}
        if day.dayofweek < 5 and (day - DAY).dayofweek >= 5:
            kinds.add("after_weekend")
        new = first[first == day]
        for image, _tag in new.index:
            kinds.add("migration" if repo_first[image] < day else "adoption")
        out[day] = kinds
    return out


def backtest(
    usage: pd.DataFrame,
    static: pd.DataFrame | None,
    region: str,
    budget: int,
    layers: LayerSource | None = None,
    warmup_days: int = 7,
    labels: Mapping[tuple[str, pd.Timestamp], set[str]] | None = None,
    params: RankParams | None = None,
    default_bytes: int = DEFAULT_IMAGE_BYTES,
    expected: Demand | None = None,
    ensemble: EnsembleParams | None = None,
) -> pd.DataFrame:
    """One row per (day, strategy): pulls, hits, bytes, hit bytes and the day's kinds; with
    ``expected``, also the expected bytes and hit bytes, and the ``ideal`` and
    ``ideal_noisy`` strategies."""
    u = normalise_usage(usage)
    u = u[u["region"] == region]
    st = normalise_static(static)
    sizes = Sizes(layers, default_bytes)
    if u.empty:
        return pd.DataFrame(
            columns=["day", "strategy", "pulls", "hit_pulls", "bytes", "hit_bytes", "kinds"]
        )
    start = u["day"].min() + warmup_days * DAY
    days = list(pd.date_range(start, u["day"].max(), freq="D"))
    derived = derive_kinds(u, region, days)
    p = params or RankParams()
    strategies: dict[str, Strategy] = {
        "ensemble": _ensemble(p, ensemble or EnsembleParams()),
        "model": _model(p),
        "yesterday": _yesterday,
        "seasonal": _seasonal,
        "frequency": _frequency,
        "decayed": _decayed(p.half_life_days),
        "static": _static,
        "oracle": _oracle,
    }
    if expected is not None:
        demand = _memo(expected)
        strategies["ideal"] = _ideal(demand)
        strategies["ideal_noisy"] = noisy_ideal(
            demand, effective_days(params or RankParams()), region
        )
    rows = []
    for day in days:
        before = u[u["day"] < day]
        actual = u[u["day"] == day]
        kinds = set(derived[day])
        if labels is not None:
            given = labels.get((region, day), set())
            kinds = (kinds - {"adoption", "migration"}) | given
        for name, strategy in strategies.items():
            cands = strategy(before, st, day, actual)
            warm = choose(cands, sizes, day.to_pydatetime(), budget)
            result = score_day(actual, warm, sizes)
            if expected is not None:
                result |= expected_score(demand(day), warm, sizes, day)
            rows.append({"day": day, "strategy": name, **result, "kinds": ",".join(sorted(kinds))})
    return pd.DataFrame(rows)


def _memo(demand: Demand) -> Demand:
    cache: dict[pd.Timestamp, pd.DataFrame] = {}

    def get(day: pd.Timestamp) -> pd.DataFrame:
        if day not in cache:
            cache[day] = demand(day)
        return cache[day]

    return get


def of_kind(days: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of ``backtest``'s output for the days of ``kind`` ("all": every day)."""
    return days if kind == "all" else days[days["kinds"].str.contains(rf"(?:^|,){kind}(?:,|$)")]


def summarise(days: pd.DataFrame) -> pd.DataFrame:
    """Hit rates per (kind, strategy), micro-averaged over the days of that kind; with
    expected scores, ``expected_byte_hit_rate`` as well."""
    cols = ["pulls", "hit_pulls", "bytes", "hit_bytes"]
    has_expected = "exp_bytes" in days.columns
    if has_expected:
        cols += ["exp_bytes", "exp_hit_bytes"]
    out = []
    for kind in KINDS:
        sel = of_kind(days, kind)
        if sel.empty:
            continue
        g = sel.groupby("strategy")[cols].sum()
        for strategy, r in g.iterrows():
            row = {
                "kind": kind,
                "strategy": strategy,
                "days": int(sel["day"].nunique()),
                "pull_hit_rate": float(r["hit_pulls"] / r["pulls"]) if r["pulls"] else np.nan,
                "byte_hit_rate": float(r["hit_bytes"] / r["bytes"]) if r["bytes"] else np.nan,
            }
            if has_expected:
                row["expected_byte_hit_rate"] = (
                    float(r["exp_hit_bytes"] / r["exp_bytes"]) if r["exp_bytes"] else np.nan
                )
            out.append(row)
    return pd.DataFrame(out)


def margins(
    summary: pd.DataFrame, strategy: str = "model", rate: str = "byte_hit_rate"
) -> pd.DataFrame:
    """Per kind: the strategy's ``rate`` (a column of ``summarise``) in a column named for
    the strategy, its ratio to the oracle's (``of_oracle``), and its margin over each
    baseline (``over_<baseline>``)."""
    rows = []
    for kind, sel in summary.groupby("kind", sort=False):
        rates = dict(zip(sel["strategy"], sel[rate], strict=True))
        row: dict[str, object] = {
            "kind": kind,
            strategy: rates.get(strategy),
            "oracle": rates.get("oracle"),
        }
        row["of_oracle"] = rates[strategy] / rates["oracle"] if rates.get("oracle") else np.nan
        for b in BASELINES:
            row[f"over_{b}"] = rates[strategy] - rates[b]
        rows.append(row)
    return pd.DataFrame(rows)


def margin_interval(
    days: pd.DataFrame,
    kind: str,
    strategy: str,
    baseline: str,
    resamples: int = 2000,
    seed: int = 0,
    hit: str = "hit_bytes",
    total: str = "bytes",
) -> tuple[float, float]:
    """95 % paired bootstrap interval of ``strategy``'s byte hit rate minus ``baseline``'s
    over the days of ``kind``: days are drawn with replacement, and both strategies are
    scored on the same drawn days (the day's pulls are shared, so the pairing removes
    how hard each day is). A kind of day has a handful of days, and one day's choice at the
    budget edge moves its rate by points: the interval says whether a margin is a ranking.
    """
    sel = of_kind(days, kind)
    a = sel[sel["strategy"] == strategy].sort_values("day")
    b = sel[sel["strategy"] == baseline].sort_values("day")
    if a.empty or list(a["day"]) != list(b["day"]):
        return (np.nan, np.nan)
    hit_a = a[hit].to_numpy(dtype=np.float64)
    hit_b = b[hit].to_numpy(dtype=np.float64)
    req = a[total].to_numpy(dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    drawn = req[draws].sum(axis=1)
    diff = (hit_a[draws].sum(axis=1) - hit_b[draws].sum(axis=1)) / np.where(drawn > 0, drawn, 1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return (float(lo), float(hi))


def at_utc(value: datetime | str) -> pd.Timestamp:
    return utc_naive(value)
