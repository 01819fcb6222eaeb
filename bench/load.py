"""Store-load benchmark: reading the usage rows a ranking needs out of the SQLite store.

    .venv/bin/python bench/load.py [--rows 400000] [--seed 1]

``warmer rank`` and the scheduler's ranking job read their usage rows with
``analytics.store.usage_frame`` (each hourly bucket with its distinct pipelines) before
ranking them. This writes a store shaped like the ranking benchmark's (Zipf-distributed
images, moved tags, 35 days of hours, two regions, five sources; one to three pipelines
per bucket) into a temporary SQLite file, then times ``usage_frame`` against the floor in
the same run: the plain ``sqlite3`` module fetching the usage table and the pipelines
table grouped by bucket (what any reader of these rows has to read), without SQLAlchemy
or pandas. Each is timed twice, alternating, and the best is reported. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics import store  # noqa: E402
from warmer.store import db  # noqa: E402

KEY = "day, hour, region, image, tag, digest, source"


def build(path: Path, rows: int, seed: int) -> tuple[int, int]:
    """Write about ``rows`` usage buckets (duplicates folded) and their pipelines."""
    url = f"sqlite:///{path}"
    db.engine_for(url)  # the schema, migrated
    db.dispose_all()
    rng = np.random.default_rng(seed)
    n_images = 3000
    zipf = 1.0 / np.arange(1, n_images + 1) ** 1.1
    img = rng.choice(n_images, size=rows, p=zipf / zipf.sum())
    days = [(date(2024, 3, 1) + timedelta(days=d)).isoformat() for d in range(35)]
    tags = ["latest", "1.0", "1.1", "2.0", "stable", "3.12-slim"]
    sources = ["github", "gitlab", "jenkins", "kubelet", "distribution"]
    day = rng.integers(0, 35, rows)
    hour = rng.integers(0, 24, rows)
    region = rng.integers(0, 2, rows)
    moved = rng.integers(0, 4, rows)  # tags moved up to three times: several digests
    source = rng.integers(0, len(sources), rows)
    pulls = rng.integers(1, 20, rows)
    pipes = rng.integers(1, 4, rows)
    buckets: dict[tuple[object, ...], tuple[int, int]] = {}
    for k in range(rows):
        i = int(img[k])
        key = (
            days[day[k]],
            int(hour[k]),
            ("eu", "us")[region[k]],
            f"registry.example/team-{i % 97}/app-{i}",
            tags[i % len(tags)],
            f"sha256:{i * 4 + int(moved[k]):064x}",
            sources[source[k]],
        )
        buckets[key] = (int(pulls[k]), int(pipes[k]))
    con = sqlite3.connect(path)
    con.executemany(
        f"INSERT INTO analytics_usage ({KEY}, pulls, present) VALUES (?,?,?,?,?,?,?,?,0)",
        [(*key, p) for key, (p, _) in buckets.items()],
    )
    con.executemany(
        f"INSERT INTO analytics_usage_pipelines ({KEY}, pipeline) VALUES (?,?,?,?,?,?,?,?)",
        [(*key, f"{j:016x}") for key, (_, n) in buckets.items() for j in range(n)],
    )
    con.commit()
    n_pipes = con.execute("SELECT count(*) FROM analytics_usage_pipelines").fetchone()[0]
    con.close()
    return len(buckets), int(n_pipes)


def floor(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        got = con.execute(f"SELECT {KEY}, pulls, present FROM analytics_usage").fetchall()
        con.execute(
            f"SELECT {KEY}, count(*) FROM analytics_usage_pipelines GROUP BY {KEY}"
        ).fetchall()
    finally:
        con.close()
    return len(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="warmer-load-") as tmp:
        path = Path(tmp) / "store.db"
        t0 = time.perf_counter()
        buckets, pipelines = build(path, args.rows, args.seed)
        built = time.perf_counter() - t0
        url = f"sqlite:///{path}"
        times: dict[str, list[float]] = {"usage_frame": [], "floor": []}
        frame_rows = floor_rows = 0
        for _ in range(2):
            t0 = time.perf_counter()
            frame_rows = len(store.usage_frame(url))
            times["usage_frame"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            floor_rows = floor(path)
            times["floor"].append(time.perf_counter() - t0)
        db.dispose_all()
    best = {k: min(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "load",
                "buckets": buckets,
                "pipeline_rows": pipelines,
                "build_seconds": round(built, 2),
                "usage_frame_seconds": round(best["usage_frame"], 2),
                "floor_seconds": round(best["floor"], 2),
                "ratio_to_floor": round(best["usage_frame"] / best["floor"], 2),
                "rows_per_second": int(frame_rows / best["usage_frame"]),
                "runs_seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
                "rows_read": frame_rows,
                "floor_rows": floor_rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
