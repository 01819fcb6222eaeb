"""The warm engine end to end against the sandbox's real registries.

Each test gets fresh mirrors (real ``docker-registry`` processes) proxying the session
sandbox's Docker-Hub-like front, a fresh SQLite ledger and a config pointing at them, so the
front's counters tell exactly what a run cost the upstream link.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from click.testing import CliRunner, Result

from warmer.cli.main import cli
from warmer.ledger import Ledger, as_utc
from warmer.sandbox.front import FrontControl
from warmer.sandbox.procs import Proc, free_port
from warmer.sandbox.topology import Sandbox

RegistryFactory = Callable[..., Proc]
ROOT = Path(__file__).resolve().parents[1]


# --- a per-test topology -------------------------------------------------------------------


@dataclass
class Topo:
    """Fresh mirrors over the sandbox front, a config file and a ledger for one test."""

    box: Sandbox
    tmp: Path
    urls: dict[str, str]
    mirrors: dict[str, dict[str, Any]] = field(default_factory=dict)
    regions: dict[str, list[str]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    reserve: int = 0

    @property
    def front(self) -> FrontControl:
        return self.box.front

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.tmp / 'warmer.db'}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "warmer.toml"

    def ledger(self) -> Ledger:
        return Ledger(self.db_url)

    def write(self) -> Path:
        lines = [
            "[database]",
            f'url = "{self.db_url}"',
            "[upstreams.dockerhub]",
            f'url = "{self.box.front_url}"',
            'aliases = ["docker.io"]',
            f"ratelimit_reserve = {self.reserve}",
            "[run]",
            'deadline_grace = "{}"'.format(self.run.get("deadline_grace", "5s")),
            "retries = {}".format(self.run.get("retries", 1)),
            'timeout = "20s"',
        ]
        for name, m in self.mirrors.items():
            lines += [f"[mirrors.{name}]", f'url = "{m["url"]}"', f'parent = "{m["parent"]}"']
            for key in ("naming", "path_prefix"):
                if key in m:
                    lines.append(f'{key} = "{m[key]}"')
            if "credentials" in m:
                lines.append(f"credentials = {m['credentials']}")
            lines += [f"[mirrors.{name}.link]", "concurrency = 4"]
            if m.get("bandwidth"):
                lines.append(f'bandwidth = "{m["bandwidth"]}"')
        for region, mirrors in self.regions.items():
            lines += [f"[regions.{region}]", "mirrors = " + json.dumps(mirrors)]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def warmer(self, *args: str) -> Result:
        """``warmer --config ... ARGS`` in process (exit code, stdout and stderr apart)."""
        return CliRunner().invoke(cli, ["--config", str(self.config_path), *args])

    def warmer_proc(self, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "warmer.cli.main", "--config", str(self.config_path)]
        return subprocess.Popen(
            [*argv, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


@pytest.fixture
def topo(sandbox: Sandbox, registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Topo]:
    """central (proxy of the front) -> eu, us; all cold; the front's counters at zero."""
    central = registry_factory("central", parent_url=sandbox.front_url)
    eu = registry_factory("eu", parent_url=central.url)
    us = registry_factory("us", parent_url=central.url)
    t = Topo(sandbox, tmp_path, {"central": central.url, "eu": eu.url, "us": us.url})
    t.mirrors = {
        "central": {"url": central.url, "parent": "dockerhub"},
        "eu": {"url": eu.url, "parent": "central"},
        "us": {"url": us.url, "parent": "central"},
    }
    t.regions = {"eu": ["eu"], "us": ["us"], "both": ["eu", "us"]}
    t.write()
    sandbox.front.clear_faults()
    sandbox.front.reset()
    try:
        yield t
    finally:
        sandbox.front.clear_faults()
        sandbox.front.configure(
            latency_ms=0, bandwidth=None, ratelimit_limit=10_000, ratelimit_window=21_600,
            ratelimit_reset=True,
        )  # fmt: skip
        for proc in (us, eu, central):
            proc.stop()


def items_of(ledger: Ledger, run_id: int) -> list[Any]:
    return ledger.items(run_id)


def last_run(ledger: Ledger) -> Any:
    runs = ledger.recent_runs(1)
    assert runs, "no run recorded"
    return runs[0]


def central_blobs(items: list[Any]) -> set[tuple[str, str]]:
    return {
        (i.upstream_repository, i.digest)
        for i in items
        if i.mirror == "central" and i.kind == "blob"
    }


def json_out(result: Result) -> Any:
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- 1. two regions through central at the mirror minimum ---------------------------------

IMAGES = ["python:3.12", "node:20", "redis:7.4"]


def test_warm_two_regions_at_the_mirror_minimum(topo: Topo) -> None:
    result = topo.warmer("run", "--region", "both", *IMAGES, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json_out(result)
    ledger = topo.ledger()
    run = last_run(ledger)
    items = items_of(ledger, run.id)
    assert run.state == "done" and items
    assert Counter(i.state for i in items) == {"done": len(items)}
    assert {i.mirror for i in items} == {"central", "eu", "us"}
    assert summary["done"] == len(items) and summary["failed"] == 0

    stats = topo.front.stats()
    pairs = central_blobs(items)
    repos_of: Counter[str] = Counter(d for _, d in pairs)
    # Each (repository, blob) crossed the WAN exactly fetch_multiplicity (2) times: no
    # duplicate caused by the warmer (two requests at once, a second tier asking early).
    for digest, n_repos in repos_of.items():
        assert stats["blobs"][digest]["GET"] == 2 * n_repos, digest
    assert sum(c.get("GET", 0) for c in stats["blobs"].values()) == 2 * len(pairs)
    manifests = {(i.upstream_repository, i.digest) for i in items if i.kind == "manifest"}
    assert stats["requests"]["manifest"]["GET"] == len(manifests)
    size = {(i.upstream_repository, i.digest): i.size for i in items if i.mirror == "central"}
    minimum = 2 * sum(size[p] for p in pairs) + sum(size[m] for m in manifests)
    # Content bytes (per repository); the rest is /v2/ pings of a few bytes each.
    wan = sum(r["bytes_served"] for r in stats["repositories"].values())
    print(f"WAN content bytes {wan} / mirror minimum {minimum} = {wan / minimum:.3f}")
    assert wan == minimum

    again = topo.warmer("plan", "--region", "both", *IMAGES, "--json")
    assert again.exit_code == 0, again.stderr
    plan = json_out(again)
    assert plan["items"] == []
    assert {s["reason"] for s in plan["skipped"]} == {"already warm"}
    assert len(plan["skipped"]) == len(IMAGES)

    status = topo.warmer("status", "--json")
    assert status.exit_code == 0
    held = {h["mirror"]: h for h in json_out(status)["holdings"] if h["state"] == "warm"}
    per_mirror = Counter(i.mirror for i in items)
    assert {m: h["items"] for m, h in held.items()} == dict(per_mirror)
    text = topo.warmer("status")
    assert "central" in text.stdout and "done" in text.stdout


# --- 2. a real client pulls from a warm regional mirror with the upstream down -------------


def test_skopeo_pulls_warm_image_with_upstream_down(topo: Topo, tmp_path: Path) -> None:
    result = topo.warmer("run", "--region", "eu", "python:3.12")
    assert result.exit_code == 0, result.output + result.stderr
    tag = topo.box.catalogue.tag("library/python", "3.12")
    topo.front.add_fault("status", "", count=100_000, status=503)
    host = topo.urls["eu"].removeprefix("http://")
    out = subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", "--override-os", "linux",
         "--override-arch", "amd64",
         f"docker://{host}/library/python:3.12", f"dir:{tmp_path / 'py'}"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    applied = topo.front.stats()["faults_applied"].get("status", 0)
    topo.front.clear_faults()
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert applied > 0, "the upstream was not asked at all: the fault proved nothing"
    manifest = json.loads((tmp_path / "py" / "manifest.json").read_bytes())
    image = tag.image("linux/amd64")
    assert [layer["digest"] for layer in manifest["layers"]] == [x.digest for x in image.layers]
    assert manifest["config"]["digest"] == image.config_digest


# --- 3. kill -9 mid-run, then --resume ------------------------------------------------------

MANY = [
    "python:3.12", "python:3.11", "node:22", "node:20", "golang:1.23", "nginx:1.27",
    "redis:7.4", "someorg/app:v1.1",
]  # fmt: skip


def _states(db: Path) -> Counter[str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return Counter(
                dict(conn.execute("SELECT state, count(*) FROM run_item GROUP BY state"))
            )
    except sqlite3.OperationalError:  # not created yet
        return Counter()


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(topo: Topo) -> None:
    topo.front.configure(bandwidth="300KB/s", latency_ms=20)
    proc = topo.warmer_proc("run", "--region", "eu", *MANY)
    db = topo.tmp / "warmer.db"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _states(db)["done"] >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed: slow the link"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.5)  # let the mirror's background fetches of in-flight blobs register
    ledger = topo.ledger()
    run = last_run(ledger)
    assert run.state == "running"  # nobody closed it
    before = {i.seq: i for i in items_of(ledger, run.id)}
    done_before = {s for s, i in before.items() if i.state == "done"}
    inflight = {s for s, i in before.items() if i.state == "running"}
    assert done_before and len(done_before) < len(before)
    gets_at_kill = {d: c.get("GET", 0) for d, c in topo.front.stats()["blobs"].items()}

    topo.front.configure(bandwidth=None, latency_ms=0)
    result = topo.warmer("run", "--region", "eu", "--resume", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    after = {i.seq: i for i in items_of(ledger, run.id)}
    assert all(i.state == "done" for i in after.values())
    assert ledger.run(run.id).state == "done"
    # Nothing done before the kill was asked for again ...
    for seq in done_before:
        assert after[seq].attempts == before[seq].attempts == 1
        assert after[seq].started_at == before[seq].started_at
    stats = topo.front.stats()["blobs"]
    repos: Counter[str] = Counter(d for _, d in central_blobs(list(after.values())))
    # (the front counts per digest: look at digests whose every central item was done)
    central = [i for i in before.values() if i.mirror == "central" and i.kind == "blob"]
    done_digests = {i.digest for i in central if i.seq in done_before} - {
        i.digest for i in central if i.seq not in done_before
    }
    assert done_digests
    for digest in done_digests:
        assert stats[digest]["GET"] == gets_at_kill[digest] == 2 * repos[digest], digest
    # ... and only blobs in flight at the kill crossed the WAN more than the minimum.
    extra = {d for d, n in repos.items() if stats[d]["GET"] > 2 * n}
    assert extra <= {before[s].digest for s in inflight}
    print(f"killed with {len(done_before)} done, {len(inflight)} in flight; re-fetched {extra}")
    held = ledger.holdings(["central", "eu"], datetime.now(UTC))
    assert len(held) == len(after)


# --- 4. a deadline cuts a run; --resume finishes it -----------------------------------------


@pytest.mark.slow
def test_deadline_cuts_run_then_resume(topo: Topo) -> None:
    topo.run["deadline_grace"] = "1s"
    topo.write()
    topo.front.configure(bandwidth="200KB/s")
    deadline = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    result = topo.warmer("run", "--region", "eu", *MANY, "--deadline", deadline, "--json")
    # A window ending is not a failure: exit 0, the run "aborted", pending items kept.
    assert result.exit_code == 0, result.output + result.stderr
    summary = json_out(result)
    assert summary["deadline_hit"] and summary["pending"] > 0 and summary["failed"] == 0
    ledger = topo.ledger()
    run = last_run(ledger)
    assert run.state == "aborted"
    cut = Counter(i.state for i in items_of(ledger, run.id))
    assert cut["pending"] == summary["pending"] and cut["running"] == 0
    late = [i for i in items_of(ledger, run.id) if i.started_at is not None]
    # No item started after the deadline (one that started may be cut and left pending).
    assert all(as_utc(i.started_at) <= datetime.fromisoformat(deadline) for i in late)

    topo.front.configure(bandwidth=None)
    again = topo.warmer("run", "--region", "eu", "--resume", "--json")
    assert again.exit_code == 0, again.output + again.stderr
    assert json_out(again)["done"] == sum(cut.values())
    assert ledger.run(run.id).state == "done"
    print(f"deadline left {cut['pending']} of {sum(cut.values())} items pending")
