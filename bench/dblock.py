"""Database-lock benchmark: does a warm run keep moving bytes while another process holds
the SQLite write lock of its ledger?

    .venv/bin/python bench/dblock.py [--scale 0.2] [--cap 12MB/s] [--hold 3] [--holds 2]
                                     [--baseline DIR]

Starts the sandbox (upstream behind the WAN front, capped at ``--cap``), seeds it at
``--scale`` and warms every tag of the catalogue into a fresh ``central`` -> ``eu`` chain
with a fresh SQLite ledger, twice:

* ``plain``: nothing else touches the database;
* ``locked``: ``--delay`` seconds after the executor starts, a second process takes the
  database's write lock (``BEGIN IMMEDIATE``), keeps it ``--hold`` seconds, commits, waits
  ``--gap`` seconds, ``--holds`` times.

The executor runs in this process beside a ticker task that sleeps 10 ms at a time and
records how late each wake-up is (the event loop's lag); the executor's progress hook
records each chunk of bytes read, on the same loop. Reported per run: the loop's max and
p99 lag, the bytes read while the lock was held (and in the same windows of the plain run,
as offsets from the run's start), and the ratios locked/plain of max lag and of
throughput in those windows. With ``--baseline DIR`` the same benchmark also runs with
``PYTHONPATH=DIR`` (a worktree of another commit) and both results are printed, so the
comparison is made in the same run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if "PYTHONPATH" not in os.environ:  # a baseline run imports its warmer from PYTHONPATH
    sys.path.insert(0, str(ROOT))

import warmer  # noqa: E402
from warmer.config import load  # noqa: E402
from warmer.sandbox.procs import Proc, start_registry  # noqa: E402
from warmer.sandbox.topology import Sandbox  # noqa: E402
from warmer.store.ledger import Ledger, RunItem, utcnow  # noqa: E402
from warmer.units import parse_rate  # noqa: E402
from warmer.warm import run as warm  # noqa: E402
from warmer.warm.execute import SETTLE, Executor  # noqa: E402
from warmer.warm.resolve import mirror_client, wants_from_args  # noqa: E402

# The lock holder: a separate process, as another warmer (or `sqlite3`) would be. Prints the
# monotonic time (system-wide on Linux) at which it took and released the lock.
HOLDER = """
import json, sqlite3, sys, time
path, hold, holds, gap = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
conn = sqlite3.connect(path, timeout=60, isolation_level=None)
for n in range(holds):
    if n:
        time.sleep(gap)
    conn.execute("BEGIN IMMEDIATE")
    took = time.monotonic()
    time.sleep(hold)
    conn.execute("COMMIT")
    print(json.dumps([took, time.monotonic()]), flush=True)
"""

TICK = 0.01


def config_for(base: Path, front_url: str, procs: dict[str, Proc]) -> Path:
    text = f"""
[database]
url = "sqlite:///{base}/warmer.db"
[upstreams.dockerhub]
url = "{front_url}"
aliases = ["docker.io"]
ratelimit_reserve = 0
[mirrors.central]
url = "{procs["central"].url}"
parent = "dockerhub"
[mirrors.central.link]
concurrency = 8
[mirrors.eu]
url = "{procs["eu"].url}"
parent = "central"
[mirrors.eu.link]
concurrency = 8
[regions.eu]
mirrors = ["eu"]
"""
    path = base / "warmer.toml"
    path.write_text(text)
    return path


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bytes_within(events: list[tuple[float, int]], windows: list[tuple[float, float]]) -> int:
    return sum(n for t, n in events if any(a <= t < b for a, b in windows))


class Holder:
    """Starts the lock-holding process ``delay`` seconds after ``start`` (in a thread, so
    the benchmark's own event loop plays no part in it) and collects its lock windows."""

    def __init__(self, db: Path, delay: float, hold: float, holds: int, gap: float) -> None:
        self.argv = [sys.executable, "-c", HOLDER, str(db), str(hold), str(holds), str(gap)]
        self.delay = delay
        self.windows: list[tuple[float, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self.delay)
        out = subprocess.run(self.argv, capture_output=True, text=True, check=True, timeout=600)
        for line in out.stdout.splitlines():
            took, released = json.loads(line)
            self.windows.append((float(took), float(released)))

    def join(self) -> list[tuple[float, float]]:
        self._thread.join(timeout=600)
        return self.windows


Events = list[tuple[float, int]]  # (seconds from the run's start, bytes read)


def one_run(
    box: Sandbox, base: Path, refs: list[str], lock: Holder | None
) -> tuple[dict[str, Any], Events]:
    """Warm ``refs`` into a fresh chain, under ``lock`` when given: the measurements
    (lock windows as offsets from the run's start) and the bytes read."""
    base.mkdir(parents=True)
    central = start_registry("central", base / "central", parent_url=box.front_url)
    eu = start_registry("eu", base / "eu", parent_url=central.url)
    try:
        cfg_path = config_for(base, box.front_url, {"central": central, "eu": eu})
        cfg = load(cfg_path)
        ledger = Ledger(cfg.database.url)
        lags: list[tuple[float, float]] = []
        events: list[tuple[float, int]] = []

        def progress(what: str, item: RunItem, n: int) -> None:
            if what == "bytes":
                events.append((time.monotonic(), n))

        async def ticker() -> None:
            while True:
                t = time.monotonic()
                await asyncio.sleep(TICK)
                lags.append((t, time.monotonic() - t - TICK))

        async def go() -> tuple[float, float, dict[str, Any]]:
            wants = wants_from_args(refs)
            prepared = await warm.prepare(cfg, ledger, "eu", wants, now=utcnow())
            run_id = warm.start_run(ledger, prepared, utcnow(), None)
            executor = Executor(
                cfg, ledger, run_id, settle=SETTLE, on_progress=progress,
                client_factory=lambda m, url: mirror_client(cfg, m, url),
            )  # fmt: skip
            tick = asyncio.create_task(ticker())
            started = time.monotonic()
            if lock is not None:
                lock.start()
            stats = await executor.run()
            ended = time.monotonic()
            tick.cancel()
            return started, ended, stats.as_dict()

        started, ended, stats = asyncio.run(go())
        windows = lock.join() if lock is not None else []
        # The lock windows while the run ran (a late one may outlast it).
        clipped = [(max(a, started), min(b, ended)) for a, b in windows if a < ended]
        during = [lag for t, lag in lags if started <= t < ended]
        # A tick counts in a window when its sleep overlapped it (a frozen loop's late tick
        # may have started just before the lock was taken).
        in_lock = [lag for t, lag in lags if any(t < b and t + TICK + lag > a for a, b in clipped)]
        total = sum(n for _, n in events)
        result = {
            "wall_s": round(ended - started, 3),
            "bytes": total,
            "mb_per_s": round(total / (ended - started) / 1e6, 2),
            "done": stats["done"],
            "failed": stats["failed"],
            "lag_max_ms": round(max(during, default=0.0) * 1e3, 1),
            "lag_p99_ms": round(percentile(during, 0.99) * 1e3, 1),
            "lag_max_in_lock_ms": round(max(in_lock, default=0.0) * 1e3, 1),
            "lag_max_at_s": round(max(lags, key=lambda x: x[1])[0] - started, 3) if lags else None,
            "lock_windows_s": [(round(a - started, 3), round(b - started, 3)) for a, b in clipped],
        }
        return result, [(t - started, n) for t, n in events]
    finally:
        eu.stop()
        central.stop()
        shutil.rmtree(base, ignore_errors=True)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    cap = parse_rate(args.cap)
    tmp = Path(tempfile.mkdtemp(prefix="dblock-bench-"))
    box = Sandbox.start(tmp / "sandbox", seed=args.seed, scale=args.scale, bandwidth=str(cap))
    try:
        box.seed_catalogue()
        refs = [f"{t.repository}:{t.tag}" for t in box.catalogue.tags]
        plain, plain_events = one_run(box, tmp / "plain", refs, None)
        db = tmp / "locked" / "warmer.db"
        holder = Holder(db, args.delay, args.hold, args.holds, args.gap)
        locked, locked_events = one_run(box, tmp / "locked", refs, holder)
    finally:
        box.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    # Throughput in the lock windows, and in the same windows (from the start) of the plain run.
    windows: list[tuple[float, float]] = locked["lock_windows_s"]
    seconds = sum(b - a for a, b in windows)
    in_locked = bytes_within(locked_events, windows)
    in_plain = bytes_within(plain_events, windows)
    locked["bytes_in_lock"], plain["bytes_in_lock_windows"] = in_locked, in_plain
    locked["mb_per_s_in_lock"] = round(in_locked / seconds / 1e6, 2) if seconds else None
    plain["mb_per_s_in_lock_windows"] = round(in_plain / seconds / 1e6, 2) if seconds else None
    return {
        "code": str(Path(warmer.__file__).resolve().parents[1]),
        "images": len(refs),
        "cap": args.cap,
        "plain": plain,
        "locked": locked,
        "ratios": {
            "lag_max": round(locked["lag_max_ms"] / max(plain["lag_max_ms"], 0.1), 2),
            "lag_p99": round(locked["lag_p99_ms"] / max(plain["lag_p99_ms"], 0.1), 2),
            "throughput_in_lock": round(in_locked / in_plain, 3) if in_plain else None,
            "wall": round(locked["wall_s"] / plain["wall_s"], 3),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.2)
    ap.add_argument("--cap", default="12MB/s", help="the WAN front's bandwidth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--delay", type=float, default=1.0, help="seconds into the run")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds per hold of the lock")
    ap.add_argument("--holds", type=int, default=2)
    ap.add_argument("--gap", type=float, default=1.5, help="seconds between holds")
    ap.add_argument("--baseline", type=Path, help="a worktree of the code to compare with")
    args = ap.parse_args()
    result = bench(args)
    if args.baseline is not None:
        argv = [a for a in sys.argv[1:] if a != "--baseline" and a != str(args.baseline)]
        env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
        out = subprocess.run(
            [sys.executable, __file__, *argv], env=env, capture_output=True, text=True,
            check=True, timeout=3600,
        )  # fmt: skip
        baseline = json.loads(out.stdout)
        result = {
            "this": result,
            "baseline": baseline,
            "lag_max_ratio": {"this": result["ratios"]["lag_max"], "baseline": baseline["ratios"]["lag_max"]},
            "throughput_in_lock_ratio": {
                "this": result["ratios"]["throughput_in_lock"],
                "baseline": baseline["ratios"]["throughput_in_lock"],
            },
        }  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
