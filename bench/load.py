"""Store-load benchmark: reading the usage rows a ranking needs out of the SQLite store.

    .venv/bin/python bench/load.py [--rows 400000] [--seed 1]

``warmer rank`` and the scheduler's ranking job read their usage rows with
``analytics.store.usage_frame`` (each hourly bucket with its distinct pipelines) before
ranking them. This writes a store shaped like the ranking benchmark's (Zipf-distributed
images, moved tags, 35 days of hours, two regions, five sources; one to three pipelines
per bucket, counted on the usage rows by the store's trigger) into a temporary SQLite
file, then times ``usage_frame`` against the floor in the same run: the plain ``sqlite3``
module fetching the usage table as stored, without SQLAlchemy or pandas. Each runs in a
process of its own, twice, alternating, and the best is reported, with the process's peak
resident memory over what its imports took. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
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
    """The plain ``sqlite3`` module reading the usage table as it is stored."""
    con = sqlite3.connect(path)
    try:
        return len(con.execute("SELECT * FROM analytics_usage").fetchall())
    finally:
        con.close()


def measure(what: str, path: Path) -> dict[str, float]:
    """In this process (a fresh one): load the rows one way, and say how long it took and
    how much memory it added at its peak."""
    base = peak_rss()
    t0 = time.perf_counter()
    rows = len(store.usage_frame(f"sqlite:///{path}")) if what == "usage_frame" else floor(path)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_added": peak_rss() - base, "rows": rows}


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux: ``VmHWM``; ``ru_maxrss`` would
    count the parent's memory at the fork too)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def in_process(what: str, path: Path) -> dict[str, float]:
    argv = [sys.executable, __file__, "--measure", what, "--store", str(path)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=3600)
    got: dict[str, float] = json.loads(out.stdout)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--measure", choices=["usage_frame", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:  # the child process of in_process
        print(json.dumps(measure(args.measure, args.store)))
        return
    with tempfile.TemporaryDirectory(prefix="warmer-load-") as tmp:
        path = Path(tmp) / "store.db"
        t0 = time.perf_counter()
        buckets, pipelines = build(path, args.rows, args.seed)
        built = time.perf_counter() - t0
        runs: dict[str, list[dict[str, float]]] = {"usage_frame": [], "floor": []}
        for _ in range(2):
            for what in runs:
                runs[what].append(in_process(what, path))
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    rss = {k: min(r["rss_added"] for r in v) for k, v in runs.items()}
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
                "rows_per_second": int(buckets / best["usage_frame"]),
                "usage_frame_rss_added_bytes": int(rss["usage_frame"]),
                "floor_rss_added_bytes": int(rss["floor"]),
                "rss_bytes_per_row": round(rss["usage_frame"] / max(buckets, 1)),
                "runs_seconds": {k: [round(r["seconds"], 2) for r in v] for k, v in runs.items()},
                "rows_read": {k: int(v[0]["rows"]) for k, v in runs.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
