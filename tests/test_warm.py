"""The warm engine end to end against the sandbox's real registries.

Each test gets fresh mirrors (real ``docker-registry`` processes) proxying the session
sandbox's Docker-Hub-like front, a fresh SQLite ledger and a config pointing at them, so the
front's counters tell exactly what a run cost the upstream link.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from aiohttp import ClientSession, web
from click.testing import CliRunner, Result

from warmer.cli.main import cli
from warmer.config import load
from warmer.oci.reference import parse
from warmer.oci.registry import RegistryClient
from warmer.sandbox.front import FrontControl
from warmer.sandbox.procs import Proc, free_port
from warmer.sandbox.topology import Sandbox
from warmer.store.ledger import Ledger, as_utc, utcnow
from warmer.warm.resolve import wants_from_args
from warmer.warm.run import FIRST_BATCH, Prepared, warm

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
            'ratelimit_poll = "{}"'.format(self.run.get("ratelimit_poll", "30s")),
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


def stored_at(url: str, repository: str, digest: str) -> bool | None:
    async def ask() -> bool | None:
        async with RegistryClient(url) as client:
            return await client.blob_stored(repository, digest)

    return asyncio.run(ask())


def json_out(result: Result) -> Any:
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_mirror_minimum(topo: Topo, items: list[Any]) -> None:
    """Each (repository, blob) crossed the WAN exactly fetch_multiplicity (2) times: no
    duplicate caused by the warmer (two requests at once, a second tier asking early), and
    one manifest GET per manifest."""
    stats = topo.front.stats()
    pairs = central_blobs(items)
    repos_of: Counter[str] = Counter(d for _, d in pairs)
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

    assert_mirror_minimum(topo, items)

    # Each mirror answers every blob the ledger calls warm from its own storage (python and
    # node share their Debian layers: each repository kept its copy, none was lost to the
    # mirror's in-flight race), and asking does not reach the WAN.
    before = topo.front.stats()["total_requests"]
    blobs = [(topo.urls[i.mirror], i.repository, i.digest) for i in items if i.kind == "blob"]
    assert all(stored_at(*b) for b in blobs)
    assert topo.front.stats()["total_requests"] == before
    assert summary["restored"] == 0

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


def test_a_run_starts_on_its_first_images_while_the_rest_resolve(topo: Topo) -> None:
    refs = [f"{t.repository}:{t.tag}" for t in topo.box.catalogue.tags][: FIRST_BATCH + 12]
    topo.front.configure(latency_ms=40)  # resolving the rest takes round trips meanwhile
    parts: list[tuple[datetime, Prepared]] = []

    def on_run(_rid: int, part: Prepared | None) -> None:
        assert part is not None  # a new run, not a resumed one
        parts.append((utcnow(), part))

    outcome = asyncio.run(
        warm(
            load(topo.config_path),
            topo.ledger(),
            "both",
            wants_from_args(refs),
            now=utcnow(),
            on_run=on_run,
        )
    )
    ((run_id, stats),) = outcome.runs
    ledger = topo.ledger()
    items = items_of(ledger, run_id)
    assert stats.failed == 0 and Counter(i.state for i in items) == {"done": len(items)}
    # Two parts of one plan: the first images resolved, then the rest, added to the run.
    assert len(parts) == 2
    first, rest = parts[0][1].plan, parts[1][1].plan
    assert len(first.images) == FIRST_BATCH
    wanted = {str(parse(r)) for r in refs}
    assert not outcome.passes[0].unresolved and not outcome.passes[0].plan.skipped, outcome.passes
    assert set(first.images) | set(rest.images) == wanted == set(outcome.passes[0].plan.images)
    run = ledger.run(run_id)
    assert run is not None and set(json.loads(run.images)) == wanted
    # The run was fetching before the rest was planned.
    started = min(at for i in items if (at := as_utc(i.started_at)) is not None)
    assert started < parts[1][0]
    # Parts share base layers and mirrors: still each object asked for once per cache.
    assert_mirror_minimum(topo, items)
    again = topo.warmer("plan", "--region", "both", *refs, "--json")
    assert json_out(again)["items"] == []


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


def _states(db: Path, kind: str | None = None) -> Counter[str]:
    where = "WHERE kind = ?" if kind else ""
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            query = f"SELECT state, count(*) FROM run_item {where} GROUP BY state"
            return Counter(dict(conn.execute(query, (kind,) if kind else ())))
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
            if _states(db, "blob")["done"] >= 8:  # (manifests go first; wait for blobs)
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
    resumed = ledger.run(run.id)
    assert resumed is not None and resumed.state == "done"
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
    starts = [at for i in items_of(ledger, run.id) if (at := as_utc(i.started_at)) is not None]
    # No item started after the deadline (one that started may be cut and left pending).
    assert all(at <= datetime.fromisoformat(deadline) for at in starts)

    topo.front.configure(bandwidth=None)
    # A resumed run keeps its plan: there is no new one to show.
    dry = topo.warmer("run", "--region", "eu", "--resume", "--dry-run")
    assert dry.exit_code == 2 and "--resume" in dry.stderr
    again = topo.warmer("run", "--region", "eu", "--resume", "--json")
    assert again.exit_code == 0, again.output + again.stderr
    assert json_out(again)["done"] == sum(cut.values())
    finished = ledger.run(run.id)
    assert finished is not None and finished.state == "done"
    nothing = topo.warmer("run", "--region", "eu", "--resume")
    assert nothing.exit_code == 2 and "no unfinished run for region 'eu'" in nothing.stderr
    print(f"deadline left {cut['pending']} of {sum(cut.values())} items pending")


# --- 5. the rate-limit reserve ---------------------------------------------------------------


def test_reserve_holds_back_and_logs_once(topo: Topo) -> None:
    topo.reserve = 10
    topo.write()
    # 4 manifest GETs left above the reserve; each of these images needs 2 (index + amd64).
    topo.front.configure(ratelimit_limit=14, ratelimit_reset=True)
    deadline = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    images = ["python:3.12", "node:20", "redis:7.4"]
    result = topo.warmer("run", "--region", "eu", *images, "--deadline", deadline, "--json")
    assert result.exit_code == 0, result.output + result.stderr  # held back is not failed
    stats = topo.front.stats()
    assert stats["throttled"] == 0
    assert 0 < stats["manifest_gets_counted"] <= 14 - 10, result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if "upstream rate limit" in ln]
    assert len(lines) == 1, result.stderr
    assert "keeping 10 for CI" in lines[0]
    run = last_run(topo.ledger())
    held_back = json.loads(run.skipped)
    assert len(held_back) == 1 and "rate-limit reserve" in held_back[0]["reason"]
    assert run.state == "done" and len(json.loads(run.images)) == 2, (
        result.stdout,
        result.stderr,
        run.summary,
    )
    plan = topo.warmer("plan", "--region", "eu", held_back[0]["image"], "--json")
    assert plan.exit_code == 0  # planning never waits: it says why
    assert "rate-limit reserve" in json_out(plan)["skipped"][0]["reason"]
    # `warmer run --dry-run` plans the same way, and records nothing.
    dry = topo.warmer("run", "--region", "eu", held_back[0]["image"], "--dry-run", "--json")
    assert dry.exit_code == 0 and json_out(dry) == json_out(plan)
    assert last_run(topo.ledger()).id == run.id


def test_held_back_images_are_warmed_in_a_later_pass_when_the_limit_resets(topo: Topo) -> None:
    topo.reserve = 10
    topo.run["ratelimit_poll"] = "1s"
    topo.write()
    # 4 GETs above the reserve in a 4-second sliding window: two images now, the third
    # once the first GETs have left the window.
    topo.front.configure(ratelimit_limit=14, ratelimit_window=4, ratelimit_reset=True)
    deadline = (datetime.now(UTC) + timedelta(seconds=40)).isoformat()
    images = ["python:3.12", "node:20", "redis:7.4"]
    result = topo.warmer("run", "--region", "eu", *images, "--deadline", deadline, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summaries = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(summaries) == 2, summaries  # one run per pass
    ledger = topo.ledger()
    runs = ledger.recent_runs(2)
    warmed = sorted(img for r in runs for img in json.loads(r.images))
    assert warmed == sorted(f"docker.io/library/{i}" for i in images)
    assert all(r.state == "done" for r in runs)
    lines = [ln for ln in result.stderr.splitlines() if "upstream rate limit" in ln]
    assert len(lines) == 1, result.stderr
    assert topo.front.stats()["throttled"] == 0  # the limit itself was never hit


def test_a_held_back_image_waits_until_its_whole_resolution_fits(topo: Topo) -> None:
    """Resolving an image spends its top manifest and one per platform at once. Counted
    requests leaving the window one by one must not end the wait at the first free one: the
    next pass would hold the image back again and stop as stalled, the image never warmed."""
    topo.reserve = 10
    topo.run["ratelimit_poll"] = "1s"
    topo.write()
    # 3 counted requests in a 6 s window of 13: 10 left (the reserve). They leave 3 s, 5 s
    # and 6 s from now: one request fits above the reserve after 3 s, two after 5 s.
    topo.front.configure(
        ratelimit_limit=13, ratelimit_window=6, ratelimit_reset=True, ratelimit_seed=[3, 1, 0]
    )
    deadline = (datetime.now(UTC) + timedelta(seconds=40)).isoformat()
    result = topo.warmer("run", "--region", "eu", "python:3.12", "--deadline", deadline, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    runs = topo.ledger().recent_runs(2)
    warmed = [img for r in runs for img in json.loads(r.images)]
    assert warmed == ["docker.io/library/python:3.12"], (result.stdout, result.stderr)
    assert topo.front.stats()["throttled"] == 0


# --- 6. a corrupted blob is an incident, never warm ------------------------------------------


def test_corrupted_blob_is_an_incident(topo: Topo) -> None:
    layer = topo.box.catalogue.tag("library/redis", "7.4").image().layers[-1]
    # Both of the mirror's GETs (the one streamed to us and its background store).
    topo.front.add_fault("corrupt", layer.digest, count=2)
    result = topo.warmer("run", "--region", "eu", "redis:7.4")
    assert result.exit_code == 1, result.output + result.stderr
    assert "1 incident" in result.stderr and "Traceback" not in result.stderr
    ledger = topo.ledger()
    incidents = ledger.incidents()
    assert [(i.mirror, i.digest, i.kind) for i in incidents] == [
        ("central", layer.digest, "digest-mismatch")
    ]
    warm = {h.digest for h in ledger.holdings(["central", "eu"], datetime.now(UTC))}
    assert layer.digest not in warm and warm  # the rest of the image is warm
    items = [i for i in items_of(ledger, last_run(ledger).id) if i.digest == layer.digest]
    assert {(i.mirror, i.state) for i in items} == {("central", "failed"), ("eu", "skipped")}
    # What distribution 2.8 kept: it verifies the digest when it stores a proxied blob, so
    # the corrupt copy was streamed to us but not cached; asked again it fetches anew.
    front_gets = topo.front.stats()["blobs"][layer.digest]["GET"]
    again = httpx.get(f"{topo.urls['central']}/v2/library/redis/blobs/{layer.digest}")
    assert again.status_code == 200
    assert "sha256:" + hashlib.sha256(again.content).hexdigest() == layer.digest
    assert topo.front.stats()["blobs"][layer.digest]["GET"] == front_gets + 2
    status = topo.warmer("status")
    assert "incident" in status.stdout and layer.digest in status.stdout.replace("\n", "")
    # Not warm, so the next plan asks for it again.
    plan = json_out(topo.warmer("plan", "--region", "eu", "redis:7.4", "--json"))
    assert layer.digest in {i["digest"] for i in plan["items"]}


# --- 7. a Harbor-style path-prefix mirror ----------------------------------------------------


class LoopbackServer:
    """An aiohttp server on a free 127.0.0.1 port in its own thread and event loop, for
    the duration of a ``with`` block; subclasses answer every request in ``_handle``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None and self._loop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class PrefixFront(LoopbackServer):
    """A loopback rewrite in front of a plain registry: /v2/hub-proxy/<repo>/... -> /v2/<repo>/...

    (Harbor's proxy projects and Artifactory remotes name upstream repositories under a
    prefix; a real second distribution instance behind this rewrite behaves the same way.)
    """

    def __init__(self, target: str, prefix: str) -> None:
        super().__init__()
        self.target, self.prefix = target, prefix
        self.paths: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        path = request.path_qs
        head = f"/v2/{self.prefix}/"
        if path.startswith(head):
            path = "/v2/" + path[len(head) :]
        hdrs = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "range")}
        async with (
            ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.target + path, headers=hdrs, allow_redirects=False
            ) as up,
        ):
            body = await up.read()
            out = web.Response(status=up.status, body=body if request.method != "HEAD" else None)
            for k, v in up.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    out.headers[k] = v
            if request.method == "HEAD" and "Content-Length" in up.headers:
                out.headers["Content-Length"] = up.headers["Content-Length"]
            return out


def test_path_prefix_mirror(topo: Topo, registry_factory: RegistryFactory) -> None:
    harbor = registry_factory("harbor", parent_url=topo.box.front_url)
    try:
        with PrefixFront(harbor.url, "hub-proxy") as rewrite:
            topo.mirrors["harbor"] = {
                "url": rewrite.url, "parent": "dockerhub", "naming": "prefix",
                "path_prefix": "hub-proxy",
            }  # fmt: skip
            topo.regions["hq"] = ["harbor"]
            topo.write()
            result = topo.warmer("run", "--region", "hq", "python:3.12", "--json")
            assert result.exit_code == 0, result.output + result.stderr
            items = items_of(topo.ledger(), last_run(topo.ledger()).id)
            assert items and {i.repository for i in items} == {"hub-proxy/library/python"}
            content = [p for p in rewrite.paths if "/manifests/" in p or "/blobs/" in p]
            assert content and all(p.startswith("/v2/hub-proxy/library/python/") for p in content)
            # The instance behind the rewrite fetched every blob (twice, as distribution does).
            stats = topo.front.stats()
            for b in (i for i in items if i.kind == "blob"):
                assert stats["blobs"][b.digest]["GET"] == 2
            again = json_out(topo.warmer("plan", "--region", "hq", "python:3.12", "--json"))
            assert again["items"] == [] and again["skipped"][0]["reason"] == "already warm"
    finally:
        harbor.stop()


# --- 9. bad input and unreachable mirrors ----------------------------------------------------


def test_unknown_region_is_one_line_exit_2(topo: Topo) -> None:
    result = topo.warmer("run", "--region", "mars", "python:3.12")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown region 'mars'" in result.stderr and "eu" in result.stderr
    bad = topo.warmer("run", "--region", "eu", "python:::")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


def test_unreachable_mirror_fails_items_without_leaking(topo: Topo) -> None:
    secret = "s3cr3t-Pa55word-never-printed"
    os.environ["WARMER_TEST_SECRET"] = secret
    try:
        topo.mirrors["eu"]["url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens
        topo.mirrors["eu"]["credentials"] = (
            '{ username = "ci", password_env = "WARMER_TEST_SECRET" }'
        )
        topo.write()
        result = CliRunner().invoke(
            cli, ["--config", str(topo.config_path), "-vv", "run", "--region", "eu", "node:20"]
        )
    finally:
        del os.environ["WARMER_TEST_SECRET"]
    assert result.exit_code == 1, result.output + result.stderr
    assert "Traceback" not in result.stderr and secret not in result.output + result.stderr
    ledger = topo.ledger()
    items = items_of(ledger, last_run(ledger).id)
    failed = [i for i in items if i.state == "failed"]
    assert failed and {i.mirror for i in failed} == {"eu"}
    assert all("cannot reach" in i.reason for i in failed)
    assert {i.state for i in items if i.mirror == "central"} == {"done"}
    assert secret not in (topo.tmp / "warmer.db").read_bytes().decode(errors="replace")
    assert "failed" in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error:")


# --- the mirror's in-flight race, which the executor's busy time and confirmation avoid -----


@contextmanager
def store_in_flight(
    topo: Topo, mirror: str, repository: str, digest: str, delay: float
) -> Iterator[None]:
    """A client GETs ``repository@digest`` through ``mirror`` meanwhile; both of the mirror's
    GETs for it (the one relayed to the client, the background one that stores it) wait
    ``delay`` seconds at the front, so its store is in flight at least that long."""
    topo.front.add_fault("slow", f"{repository}/blobs/{digest}", count=2, method="GET", delay=delay)
    url = f"{mirror}/v2/{repository}/blobs/{digest}"
    client = threading.Thread(target=lambda: httpx.get(url, timeout=30))
    client.start()
    try:
        yield
    finally:
        client.join()


def eventually_stored(url: str, repository: str, digest: str) -> bool:
    for _ in range(50):  # bounded: a background store ends a moment after its relay
        if stored_at(url, repository, digest):
            return True
        time.sleep(0.1)
    return False


def test_distribution_loses_a_copy_asked_for_while_it_stores_the_same_digest(
    topo: Topo,
) -> None:
    """Measured distribution 2.8 behaviour behind ``Executor``'s busy time and its final
    confirmation: while a proxy stores a cold blob for one repository (in the background,
    keyed by digest alone), the same digest asked for under another repository is relayed
    from the parent but never stored for it; asked again once nothing is in flight, it is."""
    cat = topo.box.catalogue
    python = cat.tag("library/python", "3.12").image().layers[0]
    node = cat.tag("library/node", "22").image().layers[0]
    assert python.digest == node.digest  # the same Debian base layer
    digest, central = python.digest, topo.urls["central"]
    with store_in_flight(topo, central, "library/python", digest, 1.5):
        time.sleep(0.5)
        assert stored_at(central, "library/node", digest) is False  # relayed, not kept
    assert eventually_stored(central, "library/python", digest)
    assert stored_at(central, "library/node", digest) is False  # still not kept; this asks
    assert eventually_stored(central, "library/node", digest)
    assert stored_at(central, "library/node", "sha256:" + "0" * 64) is None


def test_a_copy_lost_to_a_concurrent_client_is_confirmed_and_restored(topo: Topo) -> None:
    """A CI client pulling golang (same Debian base layer) holds central's store of that
    digest in flight while the warmer asks for it under python and node: both are relayed
    and not kept; the run's confirmation finds that, asks again once the store is over, and
    ends with every repository's copy in central's storage."""
    cat = topo.box.catalogue
    digest = cat.tag("library/golang", "1.23").image().layers[0].digest
    assert digest == cat.tag("library/python", "3.12").image().layers[0].digest
    assert digest == cat.tag("library/node", "22").image().layers[0].digest
    central = topo.urls["central"]
    with store_in_flight(topo, central, "library/golang", digest, 2.5):
        time.sleep(0.3)
        result = topo.warmer("run", "--region", "eu", "python:3.12", "node:22", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json_out(result)
    assert summary["restored"] >= 1 and summary["failed"] == 0
    assert "had not kept" in result.stderr
    for repository in ("library/python", "library/node"):
        assert stored_at(central, repository, digest) is True
        assert stored_at(topo.urls["eu"], repository, digest) is True
