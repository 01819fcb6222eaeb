"""Backtest benchmark: the ranking model against its baselines and the oracle.

    .venv/bin/python bench/backtest.py [--weeks 8] [--seed 1] [--budget 2GiB] [--also 1GiB,5GiB]
        [--seeds 2,3]

Generates the workload in memory (ground truth, no text), runs the rolling-origin backtest
per region with the generator's catalogue (layers, tag history) and day labels, and prints
one JSON object: byte and pull hit rates per day kind and strategy, the model's share of
the oracle and its margin over the best baseline on every kind of day.

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

from analytics.backtest import backtest, margin_interval, margins, summarise  # noqa: E402
from analytics.frames import usage_from_pulls  # noqa: E402
from analytics.generate.workload import Params, generate  # noqa: E402
from warmer.units import parse_size  # noqa: E402

BASELINES = ("yesterday", "frequency", "static")


def run(weeks: int, seed: int, budget: int) -> dict[str, Any]:
    work = generate(Params(weeks=weeks, seed=seed))
    usage = usage_from_pulls(work.pulls)
    out: dict[str, Any] = {}
    for region in work.params.regions:
        t0 = time.perf_counter()
        days = backtest(usage, work.static, region, budget, work.catalogue, labels=work.labels)
        summary = summarise(days)
        table = margins(summary)
        kinds: dict[str, Any] = {}
        for row in table.to_dict("records"):
            best = max(BASELINES, key=lambda b: -row[f"over_{b}"])
            lo, hi = margin_interval(days, row["kind"], "model", best)
            kinds[row["kind"]] = {
                "model": round(row["model"], 4),
                "oracle": round(row["oracle"], 4),
                "of_oracle": round(row["of_oracle"], 4),
                "margin": {b: round(row[f"over_{b}"], 4) for b in BASELINES},
                "best_baseline": best,
                "over_best": round(row[f"over_{best}"], 4),
                "over_best_ci95": [round(lo, 4), round(hi, 4)],
                "days": int(summary[summary["kind"] == row["kind"]]["days"].iloc[0]),
            }
        pulls = summary.pivot(index="kind", columns="strategy", values="pull_hit_rate")
        out[region] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "days": int(days["day"].nunique()),
            "byte_hit_rate": kinds,
            "pull_hit_rate": {
                k: {s: round(v, 4) for s, v in r.items()} for k, r in pulls.iterrows()
            },
            "targets": {
                "of_oracle_ge_0.9_every_kind": all(v["of_oracle"] >= 0.9 for v in kinds.values()),
                "ge_best_baseline_every_kind": all(v["over_best"] >= 0 for v in kinds.values()),
                "kinds_below_best_baseline": sorted(
                    k for k, v in kinds.items() if v["over_best"] < 0
                ),
                # Below with the whole 95 % interval under zero: not the luck of a few days.
                "kinds_significantly_below_best_baseline": sorted(
                    k for k, v in kinds.items() if v["over_best_ci95"][1] < 0
                ),
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
