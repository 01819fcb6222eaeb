"""Backtest benchmark: the production ranking (the ensemble) and the model against every
baseline and the oracle, on the generator and on the workload archetypes.

    .venv/bin/python bench/backtest.py [--weeks 8] [--seed 1] [--budget 2GiB] [--also 1GiB,5GiB]
        [--seeds 4,5,6,7,8,9] [--archetype-seeds 10,11,12]

Generates the workload in memory (ground truth, no text), runs the rolling-origin backtest
per region with the generator's catalogue (layers, tag history) and day labels, and prints
one JSON object: byte and pull hit rates per day kind and strategy, the ensemble's (and the
model's) share of the oracle and margin over the best baseline on every kind of day.

Baselines (``analytics.backtest.BASELINES``): yesterday, seasonal (the same weekday one
week earlier), frequency, decayed mean, static. Every strategy's warm set is what the
planner (``warmer.warm.plan``) plans from its scores: the benchmark scores the production
decision. The planner values the bytes the predicted pulls get, as the byte hit rate
counts them; ``pull_hit_rate`` (the share of pulls wholly warm) is reported beside it. The
oracle (the planner with the day's pulls) is no upper bound: the greedy is no exact
knapsack.

Targets (issue 18): the ensemble's byte hit rate at or above the best baseline on every
(region, kind of day) cell at the default budget, on the default seed and on held-out
seeds (``--seeds``: 4-9, never looked at while the ensemble and the model were tuned, on
seeds 1-3), and
within one point of the best predictor on every archetype
(``analytics.generate.archetypes``; ``--archetype-seeds`` 10, 11, 12 are held out, 0-2
were tuned on; their backtest warms up 14 days: a week of history before the ensemble's
first scored day, then a week of record). Every seed also scores the ``ideal`` predictor
(the workload's true rates): the cells where even it falls below the best baseline on the
day's draw are the noise floor of the per-cell target, and the summary gives both counts
over the same cells. The default budget is 2 GiB per
region and day: the generated regions pull 3.5-4.5 GB of distinct layers a weekday out of a
6 GB catalogue, so 5 GiB holds almost everything and no strategy can be told apart;
``--also`` adds other budgets. A kind of day has 6-7 days per region, and one day's greedy
choice at the budget edge moves its byte hit rate by several points, so margins under about
a point on one seed are not a ranking of the strategies: each cell also reports
``over_best_ci95``, a paired bootstrap interval over its days
(``analytics.backtest.margin_interval``), and the cells whose whole interval is below zero.

The day's draw is removed as well on the default seed: every warm set is also scored
against the generator's expected demand for its day (``analytics.generate.expected``;
``expected_byte_hit_rate``, ``expected_over_best``), and the ``ideal`` strategy ranks by
that expectation (it knows the workload's rates, not the day's draw).
``ideal_kinds_below_best_baseline`` is the noise floor of the per-cell target: the cells
where even the ideal predictor falls below a baseline on the day's draw; ``ideal_noisy``
(the ideal's rates blurred by the Poisson noise of the ~8 days of data the model's decayed
mean holds) counts what a perfect model of the workload loses to that noise alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.backtest import (  # noqa: E402
    BASELINES,
    backtest,
    margin_interval,
    margins,
    summarise,
)
from analytics.frames import usage_from_pulls  # noqa: E402
from analytics.generate.archetypes import ARCHETYPES, REGION, build  # noqa: E402
from analytics.generate.expected import expected_demand  # noqa: E402
from analytics.generate.workload import Params, generate  # noqa: E402
from warmer.units import parse_size  # noqa: E402


def _cells(summary: Any, days: Any, strategy: str, rate: str) -> dict[str, Any]:
    """Per kind: ``strategy``'s ``rate``, share of the oracle's, margins over the baselines,
    and the 95 % interval of its margin over the best one."""
    hit, total = (
        ("hit_bytes", "bytes") if rate == "byte_hit_rate" else ("exp_hit_bytes", "exp_bytes")
    )
    cells: dict[str, Any] = {}
    for row in margins(summary, strategy, rate).to_dict("records"):
        best = max(BASELINES, key=lambda b: -row[f"over_{b}"])
        lo, hi = margin_interval(days, row["kind"], strategy, best, hit=hit, total=total)
        cells[row["kind"]] = {
            strategy: round(row[strategy], 4),
            "oracle": round(row["oracle"], 4),
            "of_oracle": round(row["of_oracle"], 4),
            "margin": {b: round(row[f"over_{b}"], 4) for b in BASELINES},
            "best_baseline": best,
            "over_best": round(row[f"over_{best}"], 4),
            "below_best": bool(row[f"over_{best}"] < 0),  # unrounded
            "over_best_ci95": [round(lo, 4), round(hi, 4)],
            "days": int(summary[summary["kind"] == row["kind"]]["days"].iloc[0]),
        }
    return cells


def _below(cells: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in cells.items() if v["below_best"])


def run(weeks: int, seed: int, budget: int, expected: bool = True) -> dict[str, Any]:
    work = generate(Params(weeks=weeks, seed=seed))
    usage = usage_from_pulls(work.pulls)
    out: dict[str, Any] = {}
    for region in work.params.regions:
        t0 = time.perf_counter()

        def demand(day: Any, region: str = region) -> Any:
            return expected_demand(work, region, day)

        days = backtest(
            usage,
            work.static,
            region,
            budget,
            work.catalogue,
            labels=work.labels,
            expected=demand if expected else None,
        )
        summary = summarise(days)
        kinds = _cells(summary, days, "ensemble", "byte_hit_rate")
        model = _cells(summary, days, "model", "byte_hit_rate")
        pulls = summary.pivot(index="kind", columns="strategy", values="pull_hit_rate")
        result: dict[str, Any] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "days": int(days["day"].nunique()),
            "byte_hit_rate": kinds,
            "model_byte_hit_rate": model,
            "pull_hit_rate": {
                k: {s: round(v, 4) for s, v in r.items()} for k, r in pulls.iterrows()
            },
            "targets": {
                "ge_best_baseline_every_kind": not _below(kinds),
                "kinds_below_best_baseline": _below(kinds),
                # Below with the whole 95 % interval under zero: not the luck of a few days.
                "kinds_significantly_below_best_baseline": sorted(
                    k for k, v in kinds.items() if v["over_best_ci95"][1] < 0
                ),
                "of_oracle_ge_0.9_every_kind": all(v["of_oracle"] >= 0.9 for v in kinds.values()),
                "model_kinds_below_best_baseline": _below(model),
            },
        }
        if expected:
            exp_cells = _cells(summary, days, "ensemble", "expected_byte_hit_rate")
            ideal = _cells(summary, days, "ideal", "byte_hit_rate")
            ideal_expected = _cells(summary, days, "ideal", "expected_byte_hit_rate")
            noisy_expected = _cells(summary, days, "ideal_noisy", "expected_byte_hit_rate")
            exp = summary.pivot(index="kind", columns="strategy", values="expected_byte_hit_rate")
            # The same warm sets scored against each day's expected demand (the day's draw
            # removed), and the ensemble's margin over the best baseline in that light.
            result["expected_byte_hit_rate"] = {
                k: {s: round(v, 4) for s, v in r.items()} for k, r in exp.iterrows()
            }
            result["expected_over_best"] = {k: v["over_best"] for k, v in exp_cells.items()}
            result["targets"] |= {
                "kinds_below_best_baseline_expected": _below(exp_cells),
                # The noise floor: the ideal predictor (the workload's rates, not the day's
                # draw) against the same baselines, on the day's draw and expected.
                "ideal_kinds_below_best_baseline": _below(ideal),
                "ideal_kinds_below_best_baseline_expected": _below(ideal_expected),
                # A perfect model of the workload measuring each level from ~8 days of
                # Poisson data: what the noise of one history costs any predictor.
                "noisy_ideal_kinds_below_best_baseline_expected": _below(noisy_expected),
            }
        out[region] = result
    return out


ARCHETYPE_WARMUP = 14  # days: a week of history, then a week of the ensemble's record


def archetypes(seeds: list[int]) -> dict[str, Any]:
    """Per archetype and seed: every predictor's byte hit rate over all days, the best one,
    and the ensemble's margin over it (target: above -0.01)."""
    out: dict[str, Any] = {}
    for name in ARCHETYPES:
        per_seed: dict[str, Any] = {}
        for seed in seeds:
            a = build(name, seed)
            days = backtest(a.usage, a.static, REGION, a.budget, warmup_days=ARCHETYPE_WARMUP)
            s = summarise(days)
            rates = s[s["kind"] == "all"].set_index("strategy")["byte_hit_rate"]
            best = max(("model", *BASELINES), key=lambda k: float(rates[k]))
            per_seed[str(seed)] = {
                "rates": {k: round(float(v), 4) for k, v in rates.items()},
                "built_for": a.best,
                "best": best,
                "ensemble_over_best": round(float(rates["ensemble"] - rates[best]), 4),
                "ensemble_over_model": round(float(rates["ensemble"] - rates["model"]), 4),
                "within_1_point": bool(rates["ensemble"] >= rates[best] - 0.01),
            }
        out[name] = per_seed
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", default="2GiB")
    ap.add_argument(
        "--also", default="1GiB,5GiB", help="Other budgets, comma separated ('' for none)."
    )
    ap.add_argument(
        "--seeds", default="4,5,6,7,8,9", help="Held-out seeds at the default budget ('' none)."
    )
    ap.add_argument(
        "--archetype-seeds", default="10,11,12", help="Held-out archetype seeds ('' none)."
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "backtest",
        "weeks": args.weeks,
        "seed": args.seed,
        "budget": args.budget,
        "default": run(args.weeks, args.seed, parse_size(args.budget)),
        "other_budgets": {
            b: run(args.weeks, args.seed, parse_size(b), expected=False)
            for b in filter(None, args.also.split(","))
        },
    }
    seeds = [int(x) for x in filter(None, args.seeds.split(","))]
    runs = {args.seed: result["default"]} | {
        s: run(args.weeks, s, parse_size(args.budget), expected=True)
        for s in seeds
        if s != args.seed
    }
    result["robustness"] = {
        str(s): {
            region: {
                "below_best_baseline": r["targets"]["kinds_below_best_baseline"],
                "significantly_below": r["targets"]["kinds_significantly_below_best_baseline"],
                "model_below_best_baseline": r["targets"]["model_kinds_below_best_baseline"],
                "ideal_below_best_baseline": r["targets"]["ideal_kinds_below_best_baseline"],
                "all_over_best": r["byte_hit_rate"]["all"]["over_best"],
                "min_over_best": min(v["over_best"] for v in r["byte_hit_rate"].values()),
                "cells": {k: v["over_best"] for k, v in r["byte_hit_rate"].items()},
            }
            for region, r in out.items()
        }
        for s, out in runs.items()
    }
    arche = archetypes([int(x) for x in filter(None, args.archetype_seeds.split(","))])
    result["archetypes"] = arche
    cells = [
        (s, region, kind, over)
        for s, regions in result["robustness"].items()
        for region, r in regions.items()
        for kind, over in r["cells"].items()
    ]
    rob = [r for regions in result["robustness"].values() for r in regions.values()]
    held = [r for s, regions in result["robustness"].items() if int(s) in seeds
            for r in regions.values()]  # fmt: skip
    result["summary"] = {
        "cells": len(cells),
        "cells_at_or_above_best_baseline": sum(over >= 0 for *_, over in cells),
        # The same cells for the model, for the ideal predictor (the noise floor) and the
        # ensemble's cells whose whole 95 % interval is below zero.
        "model_cells_below": sum(len(r["model_below_best_baseline"]) for r in rob),
        "ideal_cells_below": sum(len(r["ideal_below_best_baseline"]) for r in rob),
        "cells_significantly_below": sum(len(r["significantly_below"]) for r in rob),
        "held_out": {
            "seeds": seeds,
            "cells": sum(len(r["cells"]) for r in held),
            "ensemble_below": sum(len(r["below_best_baseline"]) for r in held),
            "model_below": sum(len(r["model_below_best_baseline"]) for r in held),
            "ideal_below": sum(len(r["ideal_below_best_baseline"]) for r in held),
            "ensemble_significantly_below": sum(len(r["significantly_below"]) for r in held),
            "ensemble_mean_over_best": round(
                sum(sum(r["cells"].values()) for r in held)
                / max(sum(len(r["cells"]) for r in held), 1),
                4,
            ),
        },
        "cells_below": [
            f"seed {s} {region} {kind}: {over:+.4f}" for s, region, kind, over in cells if over < 0
        ],
        "worst_cell_over_best": min((over for *_, over in cells), default=None),
        "archetypes_within_1_point": all(
            v["within_1_point"] for seeds_ in arche.values() for v in seeds_.values()
        ),
        "worst_archetype_over_best": min(
            (v["ensemble_over_best"] for seeds_ in arche.values() for v in seeds_.values()),
            default=None,
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
