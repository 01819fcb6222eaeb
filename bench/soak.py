"""Soak: two `warmer serve` replicas on one PostgreSQL over a simulated day, against the sandbox.

    .venv/bin/python bench/soak.py [--day-seconds 180] [--replicas 2]

The day is compressed with ``[serve] time_scale`` (86400 / day-seconds; 480 for 3 minutes):
eu has a 1 h window every 3 h, us one every 4 h from 01:30, refresh runs every 6 h, verify
and prune once. Mirror TTLs are shorter than the gaps between windows, so each window has
real work (re-warming through warm mirrors). Checks, from the replicas' JSON logs, the
ledger and /proc:

* every window of the simulated day has a warm run that started inside it;
* no job ran on two replicas at once (lease intervals [t0, t1] from the finish events);
* RSS flat: the median of the last third against the first third (after start-up);
* CPU idle between jobs: each replica's CPU share while it runs no job, against while it
  runs one (the baseline measured in the same run).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmer.sandbox.postgres import create_database, start_postgres  # noqa: E402
from warmer.sandbox.topology import Sandbox  # noqa: E402
from warmer.store.ledger import Ledger, as_utc  # noqa: E402
from warmer.windows import WindowSpec, next_windows  # noqa: E402

ORIGIN = datetime(2024, 6, 3, 0, 0, tzinfo=UTC)  # a Monday
WINDOWS = {
    "eu": [{"cron": "0 */3 * * *", "duration": "1h"}],
    "us": [{"cron": "30 1-23/4 * * *", "duration": "1h"}],
}
IMAGES = ["python:3.12", "node:20", "redis:7.4", "nginx:1.27"]
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def config(box: Sandbox, db_url: str, scale: float, ttl_s: int, anchor: float) -> str:
    lines = [
        "[database]", f'url = "{db_url}"',
        "[upstreams.dockerhub]", f'url = "{box.front_url}"', 'aliases = ["docker.io"]',
        "ratelimit_reserve = 0",
        "[run]", 'deadline_grace = "2s"', "retries = 1", 'timeout = "20s"',
    ]  # fmt: skip
    for name, parent in (("central", "dockerhub"), ("eu", "central"), ("us", "central")):
        lines += [
            f"[mirrors.{name}]", f'url = "{box.url(name)}"', f'parent = "{parent}"',
            f'ttl = "{ttl_s}s"', f"[mirrors.{name}.link]", "concurrency = 4",
        ]  # fmt: skip
    for region, specs in WINDOWS.items():
        wins = ", ".join(f'{{ cron = "{w["cron"]}", duration = "{w["duration"]}" }}' for w in specs)
        lines += [f"[regions.{region}]", f'mirrors = ["{region}"]', f"windows = [{wins}]"]
    lines += [
        "[serve]", "metrics_port = 0", 'lease_ttl = "3s"', 'poll = "1s"',
        'shutdown_grace = "6s"', f"time_scale = {scale}",
        f"time_origin = {ORIGIN.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"time_anchor = {datetime.fromtimestamp(anchor, UTC).isoformat().replace('+00:00', 'Z')}",
        "[serve.ingest]", 'every = "2h"',
        "[serve.warm]", "images = " + json.dumps(IMAGES),
        "[serve.refresh]", 'cron = "15 */6 * * *"',
        "[serve.verify]", 'cron = "45 13 * * *"', "sample = 0.5",
        "[serve.prune]", 'cron = "50 22 * * *"',
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of ``pid`` from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return (int(stat[11]) + int(stat[12])) / TICKS, rss_pages * PAGE


def events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def overlaps(intervals: list[tuple[str, str, float, float]]) -> list[dict[str, Any]]:
    """Pairs of executions of one job on different replicas that overlap in time."""
    bad = []
    by_job: dict[str, list[tuple[str, float, float]]] = {}
    for job, replica, t0, t1 in intervals:
        by_job.setdefault(job, []).append((replica, t0, t1))
    for job, runs in by_job.items():
        runs.sort(key=lambda r: r[1])
        for (ra, a0, a1), (rb, b0, b1) in itertools.pairwise(runs):
            if b0 < a1:
                bad.append({"job": job, "a": [ra, a0, a1], "b": [rb, b0, b1]})
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--day-seconds", type=float, default=180.0)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    scale = 86400.0 / args.day_seconds
    tmp = Path(tempfile.mkdtemp(prefix="warmer-soak-"))
    pg_root = Path(tempfile.mkdtemp(prefix="warmer-soak-pg-"))
    box = Sandbox.start(tmp / "sandbox", seed=20240601, scale=0.01)
    pg = start_postgres(pg_root)
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        box.seed_catalogue()
        db_url = create_database(pg.url, "soak")
        gap_real = 2 * 3600 / scale  # shortest gap between one region's windows
        started = time.time() + 3  # all replicas: schedule time ORIGIN at this real instant
        (tmp / "warmer.toml").write_text(
            config(box, db_url, scale, max(2, int(gap_real / 2)), started)
        )
        for i in range(args.replicas):
            log = tmp / f"replica{i}.log"
            argv = [sys.executable, "-m", "warmer.cli.main", "--config", str(tmp / "warmer.toml"),
                    "--log-format", "json", "serve"]  # fmt: skip
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                              env={**os.environ, "PYTHONPATH": str(ROOT)}))  # fmt: skip
            logs.append(log)
        samples: list[list[tuple[float, float, int]]] = [[] for _ in procs]
        end = started + args.day_seconds + 1
        while time.time() < end and all(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                got = proc_sample(p.pid)
                if got is not None:
                    samples[i].append((time.time(), *got))
            time.sleep(0.5)
        stop_sent = time.time()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        stop_seconds = []
        for p in procs:
            p.wait(timeout=15)
            stop_seconds.append(round(time.time() - stop_sent, 2))
        result = report(box, db_url, scale, started, logs, samples, stop_seconds)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pg.stop(grace=10)
        box.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pg_root, ignore_errors=True)
    print(json.dumps(result, indent=2))


def report(
    box: Sandbox,
    db_url: str,
    scale: float,
    started: float,
    logs: list[Path],
    samples: list[list[tuple[float, float, int]]],
    stop_seconds: list[float],
) -> dict[str, Any]:
    ledger = Ledger(db_url)
    real0 = datetime.fromtimestamp(started, UTC)

    def real(sim: datetime) -> datetime:
        return real0 + (sim - ORIGIN) / scale

    day_end = ORIGIN + timedelta(days=1)
    windows: dict[str, list[dict[str, Any]]] = {}
    runs = ledger.recent_runs(1000)
    for region, specs in WINDOWS.items():
        ws = [WindowSpec.coerce(s) for s in specs]
        out = []
        for w in next_windows(ws, ORIGIN, 50):
            if w.end > day_end:
                break
            lo, hi = real(w.start), real(w.end)
            in_window = [
                r.id for r in runs
                if r.region == region and (s := as_utc(r.started_at)) and lo <= s < hi
            ]  # fmt: skip
            out.append({"start": w.start.isoformat(), "runs": in_window})
        windows[region] = out
    intervals: list[tuple[str, str, float, float]] = []
    outcomes: Counter[str] = Counter()
    for i, log in enumerate(logs):
        for e in events(log):
            if e.get("event") == "finish":
                intervals.append((e["job"], f"r{i}", float(e["t0"]), float(e["t1"])))
                outcomes[f"{e['job'].split(':')[0]}:{e.get('outcome')}"] += 1
    cpu: list[dict[str, Any]] = []
    rss: list[dict[str, Any]] = []
    for i, series in enumerate(samples):
        mine = [(t0, t1) for _, r, t0, t1 in intervals if r == f"r{i}"]
        idle_cpu = busy_cpu = idle_wall = busy_wall = 0.0
        for (ta, ca, _), (tb, cb, _) in itertools.pairwise(series):
            busy = any(t0 < tb and ta < t1 for t0, t1 in mine)
            if busy:
                busy_cpu, busy_wall = busy_cpu + cb - ca, busy_wall + tb - ta
            else:
                idle_cpu, idle_wall = idle_cpu + cb - ca, idle_wall + tb - ta
        cpu.append({
            "idle_pct": round(100 * idle_cpu / idle_wall, 2) if idle_wall else None,
            "busy_pct": round(100 * busy_cpu / busy_wall, 2) if busy_wall else None,
            "idle_seconds": round(idle_wall, 1), "busy_seconds": round(busy_wall, 1),
        })  # fmt: skip
        steady = [s[2] for s in series if s[0] > started + 15]
        third = max(1, len(steady) // 3)
        first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
        rss.append({
            "first_third_mb": round(first / 1e6, 1), "last_third_mb": round(last / 1e6, 1),
            "growth_pct": round(100 * (last - first) / first, 2), "max_mb": round(max(steady) / 1e6, 1),
        })  # fmt: skip
    used = {r: sum(bool(w["runs"]) for w in ws) for r, ws in windows.items()}
    total = {r: len(ws) for r, ws in windows.items()}
    overlap = overlaps(intervals)
    done = Counter(r.state for r in runs)
    return {
        "time_scale": scale,
        "windows_total": total,
        "windows_used": used,
        "every_window_used": used == total,
        "runs_by_state": dict(done),
        "job_outcomes": dict(sorted(outcomes.items())),
        "job_overlaps": len(overlap),
        "overlap_examples": overlap[:3],
        "rss": rss,
        "rss_flat": all(abs(r["growth_pct"]) < 10 for r in rss),
        "cpu": cpu,
        "cpu_idle_between_jobs": all((c["idle_pct"] or 0) < 5 for c in cpu),
        "sigterm_stop_seconds": stop_seconds,
        "front": {k: v for k, v in box.front.stats().get("requests", {}).items()},
    }


if __name__ == "__main__":
    main()
