"""Ingest benchmark: `warmer ingest --dry-run` over generated mixed logs, against grep.

    .venv/bin/python bench/ingest.py [--size 1GB] [--seed 1] [--keep DIR]

Generates about ``--size`` of log text in all eight formats (the workload generator with
enough weeks and build output per pull to reach the size; plain files so grep reads the
same bytes), then times, in the same run:

* ``warmer ingest DIR --dry-run`` in one process (stdout to /dev/null): MB/s and the peak
  RSS of that process;
* ``grep -rcE`` with the parsers' trigger phrases over the same files: the reference.

Targets (issue 4): >= 50 MB/s on one core, RSS < 300 MB. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics.generate.workload import Params, generate  # noqa: E402
from analytics.generate.write import write_logs  # noqa: E402
from warmer.units import parse_size  # noqa: E402

WARMER = str(Path(sys.executable).with_name("warmer"))
PATTERN = (
    r"Pulling from |Digest: sha256|Status: (Downloaded|Image is up to date)|Trying to pull|"
    r"load metadata for|\] FROM |Pulling docker image|Using docker image|docker (pull|inspect)|"
    r"Pulling image|already present on machine|/manifests/"
)


def make_logs(out: Path, size: int, seed: int) -> dict[str, object]:
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
    written = write_logs(work, out, noise=noise, gzip_every=0)
    return {
        "weeks": weeks,
        "pulls": len(work.pulls),
        "noise_lines_per_pull": noise,
        "files": written.files,
        "bytes": written.bytes,
        "bytes_per_source": written.per_source,
        "generate_seconds": round(time.perf_counter() - t0, 1),
    }


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the child (bytes) and the first stderr line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, 1):  # grep exits 1 when a file has no match
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return (
        wall,
        max(peak, before) * 1024,
        proc.stderr.strip().splitlines()[-1] if proc.stderr else "",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="Write the logs here and keep them.")
    args = ap.parse_args()
    size = parse_size(args.size)
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        gen = make_logs(out, size, args.seed)
        mb = int(gen["bytes"]) / 1e6  # type: ignore[call-overload]
        grep_s, _, _ = timed(["grep", "-rcE", PATTERN, str(out / "logs")])
        rules = ["--rule", "path:*/logs/eu/*=eu", "--rule", "path:*/logs/us/*=us"]
        ingest_s, rss, summary = timed([WARMER, "ingest", str(out / "logs"), "--dry-run", *rules])
        print(
            json.dumps(
                {
                    "bench": "ingest",
                    "generated": gen,
                    "megabytes": round(mb, 1),
                    "ingest_seconds": round(ingest_s, 2),
                    "ingest_mb_per_s": round(mb / ingest_s, 1),
                    "ingest_peak_rss_bytes": rss,
                    "ingest_summary": summary,
                    "grep_seconds": round(grep_s, 2),
                    "grep_mb_per_s": round(mb / grep_s, 1),
                    "ingest_time_over_grep": round(ingest_s / grep_s, 2),
                    "target_mb_per_s_ge_50": mb / ingest_s >= 50,
                    "target_rss_lt_300mb": rss < 300_000_000,
                },
                indent=1,
            )
        )
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
