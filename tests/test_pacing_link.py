"""The warmer's pacing holds its cap on a link faster than the cap, with real registries.

An upstream registry behind the WAN front (its link 10 x the cap) and a distribution 2.8
mirror proxying the front; ``warmer run`` warms the mirror with a cap on its parent link.
The front records when each body chunk left (towards the mirror): the bytes of every
sliding 10 s window stay within the cap, scaled down (cap 2 MB/s) to keep the test short. No timing is asserted, only bytes per window of the front's own clock.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from warmer.sandbox.catalogue import build
from warmer.sandbox.front import FrontControl
from warmer.sandbox.procs import Proc, free_port, spawn, wait_ready
from warmer.sandbox.seed import seed

RegistryFactory = Callable[..., Proc]
ROOT = Path(__file__).resolve().parents[1]

CAP = 2_000_000  # bytes/s: the warmer's cap
LINK = 20_000_000  # bytes/s: the front's own speed
SCALE = 0.05  # about 14 MB of linux/amd64 (repository, blob) pairs, blobs under 1 MB


@pytest.mark.timeout(240)
async def test_pacing_keeps_the_windows_within_the_cap_on_a_faster_link(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    upstream = await asyncio.to_thread(registry_factory, "pace-upstream")
    catalogue = build(7, SCALE)
    await seed(upstream.url, catalogue, concurrency=4, fresh=True)
    # The front is a process of its own, as between real hosts: in the test's process its
    # clock and its rate limiter would share the suite's event loop and pauses.
    port = free_port()
    argv = [sys.executable, "-m", "warmer.sandbox.front", "--listen", str(port)]
    argv += ["--upstream", upstream.url, "--bandwidth", str(LINK), "--latency-ms", "2"]
    argv += ["--ratelimit", "-1", "--auth", "none"]
    front = spawn("pace-front", argv, tmp_path / "front.log", env={"PYTHONPATH": str(ROOT)})
    front.url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, front.url, front)
        control = FrontControl(front.url)
        mirror = await asyncio.to_thread(registry_factory, "pace-mirror", parent_url=front.url)
        config = tmp_path / "warmer.toml"
        config.write_text(
            f"""
[database]
url = "sqlite:///{tmp_path / "warmer.db"}"
[upstreams.hub]
url = "{front.url}"
aliases = ["docker.io"]
ratelimit_reserve = 0
[mirrors.central]
url = "{mirror.url}"
parent = "hub"
[mirrors.central.link]
bandwidth = "{CAP}"
concurrency = 8
[regions.all]
mirrors = ["central"]
"""
        )
        refs = [f"{t.repository}:{t.tag}" for t in catalogue.tags]
        await asyncio.to_thread(control.reset)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warmer.cli.main", "--config", str(config),
            "run", "--region", "all", "--json", *refs,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert json.loads(out.decode().strip().splitlines()[-1])  # the run's summary
        await asyncio.sleep(1.0)  # the mirror's last background stores
        windows = await asyncio.to_thread(control.windows)
    finally:
        front.stop()

    largest = max(layer.size for t in catalogue.tags for layer in t.image("linux/amd64").layers)
    total = windows["bytes"]
    # The link did carry the warm (about twice the pairs' bytes through distribution 2.8),
    # and more than a 10 s window's allowance of it: the windows below are not trivially met.
    assert total > 12 * CAP
    # Every sliding 10 s window within the cap, but for a single object's burst (its
    # background store and our read of it, taken whole: the blobs are smaller than the
    # read-ahead). Shorter windows are the benchmark's (bench/warm.py --scenario fast-link):
    # over 1 s and 5 s, how far a burst reaches depends on the machine's scheduling (one
    # full-suite run here saw a 5 s window at 1.10 x), which a test must not depend on.
    # Without the warmer's pacing (a cap 100 x higher) this window fails: 28.3 MB > 22.5 MB.
    assert windows["peak"]["10"] <= 1.05 * 10 * CAP + 2 * largest, windows["peak"]
