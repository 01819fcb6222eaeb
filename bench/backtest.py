"""Backtest benchmark: the ranking model against its baselines and the oracle.

    .venv/bin/python bench/backtest.py [--weeks 8] [--seed 1] [--budget 2GiB] [--also 1GiB,5GiB]
        [--seeds 2,3]

Generates the workload in memory (ground truth, no text), runs the rolling-origin backtest
per region with the generator's catalogue (layers, tag history) and day labels, and prints
one JSON object: byte and pull hit rates per day kind and strategy, the model's share of
the oracle and its margin over the best baseline on every kind of day.

Every strategy's warm set is what the planner (``warmer.warm.plan``) plans from its scores:
the benchmark scores the production decision. The planner values pulls per byte; the byte
hit rate weights pulls by size, so ``pull_hit_rate`` is the planner's own measure, and the
oracle (the planner with the day's pulls) is no upper bound on bytes.

Targets (issue 4): model byte hit rate >= 90% of the oracle's and >= the best baseline on
every kind of day. The default budget is 2 GiB per region and day: the generated regions
pull 3.5-4.5 GB of distinct layers a weekday out of a 6 GB catalogue, so 5 GiB holds
almost everything and no strategy can be told apart; ``--also`` adds other budgets.
``--seeds`` repeats the default budget on other generated histories: a kind of day has 6-7
days per region, and one day's greedy choice at the budget edge moves its byte hit rate by
several points, so margins under about a point on one seed are not a ranking of the
strategies; ``robustness`` counts the (region, kind) cells below the best baseline per seed.
So each cell also reports ``over_best_ci95``, a paired bootstrap interval over its days
(``analytics.backtest.margin_interval``), and the cells whose whole interval is below zero.

The day's draw is removed as well: every warm set is also scored against the generator's
expected demand for its day (``analytics.generate.expected``; ``expected_byte_hit_rate``,
``expected_over_best``), and the ``ideal`` strategy ranks by that expectation (it knows the
workload's rates, not the day's draw). ``ideal_kinds_below_best_baseline`` is the noise
floor of the per-cell target: the cells where even the ideal predictor falls below a
baseline on the day's draw. A cell below in expectation is a shortfall of the model or the
noise of the history it learned from: ``ideal_noisy`` (the ideal's rates blurred by the
Poisson noise of the ~8 days of data the model's decayed mean holds) tells the two apart,
and ``noisy_ideal_kinds_below_best_baseline_expected`` counts what a perfect model of the
workload loses to that noise alone.
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


def run(weeks: int, seed: int, budget: int) -> dict[str, Any]:
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
            expected=demand,
        )
        summary = summarise(days)
        kinds = _cells(summary, days, "model", "byte_hit_rate")
        expected = _cells(summary, days, "model", "expected_byte_hit_rate")
        ideal = _cells(summary, days, "ideal", "byte_hit_rate")
        ideal_expected = _cells(summary, days, "ideal", "expected_byte_hit_rate")
        noisy_expected = _cells(summary, days, "ideal_noisy", "expected_byte_hit_rate")
        pulls = summary.pivot(index="kind", columns="strategy", values="pull_hit_rate")
        exp = summary.pivot(index="kind", columns="strategy", values="expected_byte_hit_rate")
        out[region] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "days": int(days["day"].nunique()),
            "byte_hit_rate": kinds,
            "pull_hit_rate": {
                k: {s: round(v, 4) for s, v in r.items()} for k, r in pulls.iterrows()
            },
            # The same warm sets scored against each day's expected demand (the day's draw
            # removed), and the margin of the model over the best baseline in that light.
            "expected_byte_hit_rate": {
                k: {s: round(v, 4) for s, v in r.items()} for k, r in exp.iterrows()
            },
            "expected_over_best": {k: v["over_best"] for k, v in expected.items()},
            "targets": {
                "of_oracle_ge_0.9_every_kind": all(v["of_oracle"] >= 0.9 for v in kinds.values()),
                "ge_best_baseline_every_kind": not _below(kinds),
                "kinds_below_best_baseline": _below(kinds),
                # Below with the whole 95 % interval under zero: not the luck of a few days.
                "kinds_significantly_below_best_baseline": sorted(
                    k for k, v in kinds.items() if v["over_best_ci95"][1] < 0
                ),
                "kinds_below_best_baseline_expected": _below(expected),
                # The noise floor: the ideal predictor (the workload's rates, not the
                # day's draw) against the same baselines, on the day's draw and expected.
                "ideal_kinds_below_best_baseline": _below(ideal),
                "ideal_kinds_below_best_baseline_expected": _below(ideal_expected),
                # A perfect model of the workload measuring each level from ~8 days of
                # Poisson data: what the noise of one history costs any predictor.
                "noisy_ideal_kinds_below_best_baseline_expected": _below(noisy_expected),
            },
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", default="2GiB")
    ap.add_argument(
        "--also", default="1GiB,5GiB", help="Other budgets, comma separated ('' for none)."
    )
    ap.add_argument("--seeds", default="", help="Other seeds at the default budget ('' none).")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "bench": "backtest",
        "weeks": args.weeks,
        "seed": args.seed,
        "budget": args.budget,
        "default": run(args.weeks, args.seed, parse_size(args.budget)),
        "other_budgets": {
            b: run(args.weeks, args.seed, parse_size(b)) for b in filter(None, args.also.split(","))
        },
    }
    seeds = [int(x) for x in filter(None, args.seeds.split(","))]
    runs = {args.seed: result["default"]} | {
        s: run(args.weeks, s, parse_size(args.budget)) for s in seeds if s != args.seed
    }
    result["robustness"] = {
        str(s): {
            region: {
                "below_best_baseline": r["targets"]["kinds_below_best_baseline"],
                "significantly_below": r["targets"]["kinds_significantly_below_best_baseline"],
                "below_expected": r["targets"]["kinds_below_best_baseline_expected"],
                "ideal_below": r["targets"]["ideal_kinds_below_best_baseline"],
                "ideal_below_expected": r["targets"]["ideal_kinds_below_best_baseline_expected"],
                "noisy_ideal_below_expected": r["targets"][
                    "noisy_ideal_kinds_below_best_baseline_expected"
                ],
                "all_over_best": r["byte_hit_rate"]["all"]["over_best"],
                "min_over_best": min(v["over_best"] for v in r["byte_hit_rate"].values()),
            }
            for region, r in out.items()
        }
        for s, out in runs.items()
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
