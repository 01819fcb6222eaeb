"""Ingest benchmark: `warmer ingest --dry-run` over generated mixed logs, against grep.

    .venv/bin/python bench/ingest.py [--size 1GB] [--seed 1] [--repeat 3] [--keep DIR [--reuse]]
                                     [--concat-buildkit] [--no-variants]

Generates about ``--size`` of log text in twelve formats (the workload generator with
enough weeks and build output per pull to reach the size; plain files so grep reads the
same bytes; a third of GitHub, Jenkins and docker pipelines written as CircleCI, Cloud
Build, CodeBuild or Buildkite logs unless ``--no-variants``), then times, in the same run, each ``--repeat`` times (median; the machine may
be shared, so the 1-minute load average is printed too):

* ``grep -rcE`` with the parsers' trigger phrases over the same files: the reference;
* ``warmer ingest DIR --db sqlite:///...`` into a fresh database: what users run, and the
  path the target applies to (MB/s and the peak RSS of that process);
* ``warmer ingest DIR --dry-run`` (text) and ``--dry-run --json`` (stdout to /dev/null):
  parsing without the store, plus the cost of printing every event;
* the same stored ingest again: every file already read to its end (the per-file cost of a
  walk: fingerprint lookups and bookkeeping).

``--concat-buildkit`` writes each pipeline's BuildKit builds of a day into one log, without
the headers between builds (``write_logs(concat_buildkit=True)``); the dry run's summary
then shows whether every pull was counted (``pulls`` against ``events``) and the coverage.

Targets (issue 4): >= 50 MB/s on one core, RSS < 300 MB. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.generate.workload import Params, generate  # noqa: E402
from analytics.generate.write import write_logs  # noqa: E402
from warmer.units import parse_size  # noqa: E402

WARMER = str(Path(sys.executable).with_name("warmer"))
PATTERN = (
    r"Pulling from |Digest: sha256|Status: (Downloaded|Image is up to date)|Trying to pull|"
    r"load metadata for|\] FROM |Pulling docker image|Using docker image|docker (pull|inspect)|"
    r"Pulling image|already present on machine|/manifests/|Starting container |using image |"
    r"Already have image|Running command docker"
)


def make_logs(
    out: Path, size: int, seed: int, concat: bool = False, variants: bool = True
) -> dict[str, object]:
    """Scale the default workload (weeks, then build output per pull) to about ``size``."""
    probe = generate(Params(weeks=1, seed=seed, pipelines_per_region=10))
    with tempfile.TemporaryDirectory() as tmp:
        base = write_logs(probe, Path(tmp), noise=0, gzip_every=0).bytes
        with_noise = write_logs(probe, Path(tmp) / "n", noise=20, gzip_every=0).bytes
    per_pull = base / len(probe.pulls)
    per_line = (with_noise - base) / 20 / len(probe.pulls)
    weeks = 8 if size >= 200_000_000 else 2
    work = generate(Params(weeks=weeks, seed=seed))
    noise = max(0, int((size / len(work.pulls) - per_pull) / per_line))
    t0 = time.perf_counter()
    written = write_logs(
        work, out, noise=noise, gzip_every=0, concat_buildkit=concat, variants=variants
    )
    return {
        "weeks": weeks,
        "pulls": len(work.pulls),
        "noise_lines_per_pull": noise,
        "files": written.files,
        "bytes": written.bytes,
        "bytes_per_source": written.per_source,
        "pulls_per_format": written.pulls,
        "generate_seconds": round(time.perf_counter() - t0, 1),
    }


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of this child alone (bytes) and its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # grep exits 1 when a file has no match
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-500:]}")
    return wall, usage.ru_maxrss * 1024, err.strip()


def median_run(
    cmd: list[str], repeat: int, before: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Median wall time and the largest peak RSS over ``repeat`` runs of ``cmd``."""
    walls, rss, last = [], 0, ""
    for _ in range(repeat):
        if before:
            before()
        wall, peak, last = timed(cmd)
        walls.append(wall)
        rss = max(rss, peak)
    return {
        "seconds": statistics.median(walls),
        "runs": [round(w, 2) for w in walls],
        "rss": rss,
        "last": last,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="Runs per measurement (median).")
    ap.add_argument("--keep", type=Path, default=None, help="Write the logs here and keep them.")
    ap.add_argument("--reuse", action="store_true", help="Use the logs already in --keep.")
    ap.add_argument(
        "--concat-buildkit",
        action="store_true",
        help="Write a day's BuildKit builds of a pipeline into one log, without headers.",
    )
    ap.add_argument(
        "--no-variants",
        action="store_true",
        help="Only the eight formats the workload draws (no CircleCI, Cloud Build, CodeBuild, "
        "Buildkite).",
    )
    args = ap.parse_args()
    size = parse_size(args.size)
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        if args.reuse and (out / "logs").is_dir():
            files = [p for p in (out / "logs").rglob("*") if p.is_file()]
            gen: dict[str, object] = {
                "files": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "reused": str(out),
            }
        else:
            gen = make_logs(out, size, args.seed, args.concat_buildkit, not args.no_variants)
        mb = int(gen["bytes"]) / 1e6  # type: ignore[call-overload]
        logs = str(out / "logs")
        db = out / "bench.db"
        rules = ["--rule", "path:*/logs/eu/*=eu", "--rule", "path:*/logs/us/*=us"]
        timed(["grep", "-rcE", PATTERN, logs])  # warm the page cache: every run reads from RAM
        grep = median_run(["grep", "-rcE", PATTERN, logs], args.repeat)
        dry = median_run([WARMER, "ingest", logs, "--dry-run", *rules], args.repeat)
        dry_json = median_run([WARMER, "ingest", logs, "--dry-run", "--json", *rules], args.repeat)
        store_cmd = [WARMER, "ingest", logs, "--db", f"sqlite:///{db}", *rules]
        stored = median_run(store_cmd, args.repeat, before=lambda: db.unlink(missing_ok=True))
        again = median_run(store_cmd, args.repeat)  # every file already ingested to its end

        def rate(m: dict[str, Any]) -> float:
            return float(round(mb / m["seconds"], 1))

        print(
            json.dumps(
                {
                    "bench": "ingest",
                    "generated": gen,
                    "megabytes": round(mb, 1),
                    "repeat": args.repeat,
                    "load_average_1m": round(os.getloadavg()[0], 2),
                    "grep": {
                        "seconds": round(grep["seconds"], 2),
                        "mb_per_s": rate(grep),
                        "runs": grep["runs"],
                    },
                    "store": {
                        "seconds": round(stored["seconds"], 2),
                        "mb_per_s": rate(stored),
                        "peak_rss_bytes": stored["rss"],
                        "runs": stored["runs"],
                        "time_over_grep": round(stored["seconds"] / grep["seconds"], 2),
                    },
                    "dry_run_text": {
                        "seconds": round(dry["seconds"], 2),
                        "mb_per_s": rate(dry),
                        "peak_rss_bytes": dry["rss"],
                        "runs": dry["runs"],
                        "summary": _line(dry["last"], " file(s), "),
                        "unused": _line(dry["last"], "unused: ") or "none",
                    },
                    "dry_run_json": {
                        "seconds": round(dry_json["seconds"], 2),
                        "mb_per_s": rate(dry_json),
                        "peak_rss_bytes": dry_json["rss"],
                        "runs": dry_json["runs"],
                    },
                    "rewalk_unchanged": {
                        "seconds": round(again["seconds"], 2),
                        "files_per_s": round(int(gen["files"]) / again["seconds"]),  # type: ignore[call-overload]
                        "runs": again["runs"],
                    },
                    "target_store_mb_per_s_ge_50": rate(stored) >= 50,
                    "target_dry_run_mb_per_s_ge_50": rate(dry) >= 50,
                    "target_rss_lt_300mb": max(stored["rss"], dry["rss"], dry_json["rss"])
                    < 300_000_000,
                },
                indent=1,
            )
        )
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)


def _line(text: str, marker: str) -> str:
    """The first line of ``text`` containing ``marker`` ("" if none)."""
    return next((ln for ln in text.splitlines() if marker in ln), "")


if __name__ == "__main__":
    main()
