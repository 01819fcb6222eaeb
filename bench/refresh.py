"""Refresh request-cost benchmark: what keeping N tracked tags fresh costs the upstream.

    .venv/bin/python bench/refresh.py [--tags 500] [--moved 0.05] [--repos 10] [--skip-skopeo]

A real upstream registry with many small tags (half the repositories multi-arch OCI
indexes, half single Docker v2 manifests), the sandbox's counting front before it (Docker
Hub's rules: manifest GETs counted, HEAD free), a central distribution mirror proxying the
front and a regional ``eu`` mirror proxying central. Every tag is warmed into eu, then a
fraction of them is moved upstream (new content under the same tag) and ``refresh`` runs.

Printed (one JSON object):

* ``unchanged``: a refresh before any move: counted upstream requests (expected 0);
* ``moved``: the refresh after the moves: the front's counted manifest GETs against the
  manifests the moved tags actually need (index + linux/amd64 manifest for an index tag,
  one manifest otherwise) -- they must be equal -- and the report's own count;
* ``repull``: what re-pulling every tag spends instead (``docker pull`` / ``skopeo sync``
  GET every tag's manifest, and the platform manifest under an index): computed per tag,
  and measured with a real ``skopeo sync`` of every repository through the front.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warmer.config import load  # noqa: E402
from warmer.oci.manifest import (  # noqa: E402
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    OCI_INDEX,
    sha256_digest,
)
from warmer.oci.reference import parse  # noqa: E402
from warmer.oci.registry import RegistryClient  # noqa: E402
from warmer.sandbox.front import FrontControl  # noqa: E402
from warmer.sandbox.procs import Proc, free_port, spawn, start_registry, wait_ready  # noqa: E402
from warmer.store.ledger import Ledger  # noqa: E402
from warmer.upkeep.refresh import refresh  # noqa: E402
from warmer.warm.resolve import Want  # noqa: E402
from warmer.warm.run import execute, prepare, start_run  # noqa: E402

PLATFORMS = (("linux", "amd64"), ("linux", "arm64"))


@dataclass(frozen=True)
class BenchTag:
    repository: str
    tag: str
    index: bool


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


async def push_tag(c: RegistryClient, t: BenchTag, layer: dict[str, Any], generation: int) -> None:
    """One tag: a config unique to (tag, generation) over the repository's shared layer."""
    manifests = []
    bodies = []
    for os_, arch in PLATFORMS if t.index else PLATFORMS[:1]:
        config = _json(
            {"architecture": arch, "os": os_, "config": {"Labels": {"tag": t.tag, "gen": str(generation)}},
             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}
        )  # fmt: skip
        await c.push_blob(t.repository, config)
        body = _json(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
             "config": {"mediaType": DOCKER_CONFIG, "digest": sha256_digest(config), "size": len(config)},
             "layers": [layer]}
        )  # fmt: skip
        bodies.append(body)
        if t.index:
            digest = await c.put_manifest(t.repository, sha256_digest(body), body, DOCKER_MANIFEST)
            manifests.append(
                {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(body),
                 "platform": {"os": os_, "architecture": arch}}
            )  # fmt: skip
    if t.index:
        index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        await c.put_manifest(t.repository, t.tag, index, OCI_INDEX)
    else:
        await c.put_manifest(t.repository, t.tag, bodies[0], DOCKER_MANIFEST)


async def seed(url: str, tags: list[BenchTag], generation: int = 0) -> None:
    gate = asyncio.Semaphore(8)
    layers: dict[str, dict[str, Any]] = {}
    async with RegistryClient(url, retries=2) as c:
        for repo in sorted({t.repository for t in tags}):
            data = f"shared layer of {repo}".encode() * 64
            await c.push_blob(repo, data)
            layers[repo] = {
                "mediaType": DOCKER_LAYER,
                "digest": sha256_digest(data),
                "size": len(data),
            }

        async def one(t: BenchTag) -> None:
            async with gate:
                await push_tag(c, t, layers[t.repository], generation)

        # Tags of a repository one after the other (distribution races on concurrent PUTs).
        async def repo_tags(repo: str) -> None:
            for t in tags:
                if t.repository == repo:
                    await one(t)

        await asyncio.gather(*(repo_tags(r) for r in sorted({t.repository for t in tags})))


def start_front(base: Path, upstream: str) -> Proc:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "warmer.sandbox.front",
        "--listen",
        str(port),
        "--upstream",
        upstream,
    ]
    proc = spawn("front", argv, base / "front.log", env={"PYTHONPATH": str(ROOT)})
    proc.url = f"http://127.0.0.1:{port}"
    wait_ready(proc.url, proc)
    return proc


def config_text(base: Path, front: str, central: str, eu: str) -> str:
    return f"""
[database]
url = "sqlite:///{base}/warmer.db"
[upstreams.dockerhub]
url = "{front}"
aliases = ["docker.io"]
ratelimit_reserve = 0
[run]
retries = 2
[mirrors.central]
url = "{central}"
parent = "dockerhub"
[mirrors.central.link]
concurrency = 16
[mirrors.eu]
url = "{eu}"
parent = "central"
[mirrors.eu.link]
concurrency = 16
[refresh]
concurrency = 16
[regions.eu]
mirrors = ["eu"]
"""


def manifest_gets(stats: dict[str, Any]) -> int:
    return int(stats["requests"].get("manifest", {}).get("GET", 0))


def skopeo_sync(front_url: str, repos: list[str], dest: Path) -> float:
    host = front_url.split("://", 1)[1]
    t0 = time.monotonic()
    for repo in repos:
        proc = subprocess.run(
            ["skopeo", "sync", "--src", "docker", "--dest", "dir",
             "--src-tls-verify=false", f"{host}/{repo}", str(dest)],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo sync {repo}: {proc.stderr.strip()[-400:]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=500)
    ap.add_argument("--moved", type=float, default=0.05)
    ap.add_argument("--repos", type=int, default=10)
    ap.add_argument("--skip-skopeo", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    procs: list[Proc] = []
    try:
        up = start_registry("upstream", base / "upstream")
        procs.append(up)
        repos = [f"bench/app{i}" for i in range(args.repos)]
        tags = [
            BenchTag(repos[i % len(repos)], f"v{i // len(repos)}", index=(i % len(repos)) % 2 == 0)
            for i in range(args.tags)
        ]
        t0 = time.monotonic()
        asyncio.run(seed(up.url, tags))
        seeded_s = time.monotonic() - t0
        front = start_front(base, up.url)
        procs.append(front)
        central = start_registry("central", base / "central", parent_url=front.url)
        procs.append(central)
        eu = start_registry("eu", base / "eu", parent_url=central.url)
        procs.append(eu)
        (base / "warmer.toml").write_text(config_text(base, front.url, central.url, eu.url))
        cfg = load(base / "warmer.toml")
        ledger = Ledger(cfg.database.url)
        fc = FrontControl(front.url)

        async def warm_all() -> dict[str, Any]:
            now = datetime.now(UTC)
            wants = [Want(parse(f"docker.io/{t.repository}:{t.tag}")) for t in tags]
            prepared = await prepare(cfg, ledger, "eu", wants, now=now)
            run_id = start_run(ledger, prepared, now, None)
            stats = await execute(cfg, ledger, run_id, deadline=None)
            return {"items": len(prepared.plan.items), "failed": stats.failed}

        t0 = time.monotonic()
        warmed = asyncio.run(warm_all())
        warm_s = time.monotonic() - t0

        fc.reset()
        t0 = time.monotonic()
        quiet = asyncio.run(refresh(cfg, ledger, region="eu", now=datetime.now(UTC)))
        quiet_s = time.monotonic() - t0
        quiet_stats = fc.stats()

        n_moved = max(1, round(args.tags * args.moved))
        step = max(1, len(tags) // n_moved)
        # Spread over the repositories (index and single-manifest ones alike).
        moved = sorted({(j * step + j) % len(tags) for j in range(n_moved)})
        moved_tags = [tags[i] for i in moved]
        asyncio.run(seed(up.url, moved_tags, generation=1))
        needed = sum(2 if t.index else 1 for t in moved_tags)

        fc.reset()
        t0 = time.monotonic()
        report = asyncio.run(refresh(cfg, ledger, region="eu", now=datetime.now(UTC)))
        moved_s = time.monotonic() - t0
        stats = fc.stats()
        counted = manifest_gets(stats)

        repull_computed = sum(2 if t.index else 1 for t in tags)
        repull: dict[str, Any] = {"computed_manifest_gets": repull_computed}
        if not args.skip_skopeo and shutil.which("skopeo"):
            fc.reset()
            dest = base / "sync"
            dest.mkdir()
            secs = skopeo_sync(front.url, repos, dest)
            sstats = fc.stats()
            repull.update(
                skopeo_sync_manifest_gets=manifest_gets(sstats),
                skopeo_sync_manifest_heads=int(
                    sstats["requests"].get("manifest", {}).get("HEAD", 0)
                ),
                skopeo_sync_seconds=round(secs, 2),
            )
        result = {
            "tags": args.tags,
            "repositories": args.repos,
            "moved_tags": len(moved),
            "seed_seconds": round(seeded_s, 2),
            "initial_warm": {**warmed, "seconds": round(warm_s, 2)},
            "unchanged": {
                "counted_manifest_gets": manifest_gets(quiet_stats),
                "manifest_heads": int(quiet_stats["requests"].get("manifest", {}).get("HEAD", 0)),
                "report_counted": quiet.upstream_counted_requests,
                "checked": quiet.checked,
                "seconds": round(quiet_s, 2),
            },
            "moved": {
                "counted_manifest_gets": counted,
                "manifests_needed": needed,
                "equal": counted == needed,
                "report_counted": report.upstream_counted_requests,
                "report_moved": report.moved,
                "warmed_items": report.warmed_items,
                "manifest_heads": int(stats["requests"].get("manifest", {}).get("HEAD", 0)),
                "blob_gets": int(stats["requests"].get("blob", {}).get("GET", 0)),
                "errors": report.errors[:5],
                "seconds": round(moved_s, 2),
            },
            "repull": repull,
            "saving_vs_repull": round(repull_computed / counted, 1) if counted else None,
        }
        print(json.dumps(result, indent=2))
        ok = counted == needed and manifest_gets(quiet_stats) == 0 and report.moved == len(moved)
        sys.exit(0 if ok else 1)
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
