"""``warmer refresh`` against real registries: a tag moved upstream, a tier with a metadata
cache that serves it stale (and its invalidation hook), TTL renewal and expiry.

Each test gets its own upstream registry (so moving a tag touches no other test), a counting
front in front of it, and fresh ``docker-registry`` mirrors proxying the front. The front
(and the stale-serving front) run in an event loop on a thread of their own, so the code
under test can run its own loops (``asyncio.run``, the CLI) as it does in production.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner, Result
from sqlmodel import select

from warmer.cli.main import cli
from warmer.config import load
from warmer.oci.registry import RegistryClient
from warmer.sandbox.catalogue import Catalogue, Tag, build
from warmer.sandbox.front import FrontControl, FrontServer, start_front
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import move_tag, seed
from warmer.store.ledger import Holding, Ledger, as_utc
from warmer.upkeep.refresh import refresh
from warmer.warm.resolve import wants_from_args
from warmer.warm.run import execute, prepare, start_run

RegistryFactory = Callable[..., Proc]
T = TypeVar("T")
SEED, SCALE = 20240601, 0.01
REPOS = ("library/redis", "library/alpine")


class LoopThread:
    """An asyncio loop on a daemon thread: servers live here, tests stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- a mirror with a metadata cache: serves tag -> digest from memory for `ttl` seconds -------


@dataclass
class StaleFront:
    """An aiohttp proxy in front of a distribution mirror that caches tag answers.

    A manifest request by tag answered within ``ttl`` seconds of the first one is served as
    the cached digest (fetched by digest from the mirror behind), like Nexus' "maximum
    component age" or Artifactory's "metadata retrieval cache period". ``POST /_purge``
    (``?repository=R&tag=T``) forgets one tag, as an admin API would.
    """

    backend: str
    ttl: float = 3600.0
    tags: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    purges: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None
    session: aiohttp.ClientSession | None = None

    async def start(self) -> StaleFront:
        app = web.Application()
        app.router.add_post("/_purge", self._purge)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _purge(self, request: web.Request) -> web.Response:
        key = (request.query.get("repository", ""), request.query.get("tag", ""))
        self.purges.append(key)
        self.tags.pop(key, None)
        return web.json_response({"purged": list(key)})

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        path = request.path
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept",)}
        repo, _, ref = path.removeprefix("/v2/").rpartition("/manifests/")
        cached = None
        if "/manifests/" in path and ref and not ref.startswith("sha256:"):
            hit = self.tags.get((repo, ref))
            if hit is not None and time.monotonic() - hit[1] < self.ttl:
                cached = hit[0]
                path = f"/v2/{repo}/manifests/{cached}"
        async with self.session.request(
            request.method, self.backend + path, headers=headers, allow_redirects=False
        ) as upstream:
            body = await upstream.read()
            if "/manifests/" in request.path and cached is None and upstream.status == 200:
                digest = upstream.headers.get("Docker-Content-Digest")
                if digest and not ref.startswith("sha256:"):
                    self.tags[(repo, ref)] = (digest, time.monotonic())
            keep = ("content-type", "docker-content-digest", "location", "content-length")
            out = {k: v for k, v in upstream.headers.items() if k.lower() in keep}
            if request.method == "HEAD":
                return web.Response(status=upstream.status, headers=out)
            out.pop("Content-Length", None)
            return web.Response(status=upstream.status, body=body, headers=out)


# --- a per-test chain ---------------------------------------------------------------------------


@dataclass
class Chain:
    """upstream registry -> counting front -> central -> eu (+ optional extra mirrors)."""

    tmp: Path
    loops: LoopThread
    upstream: Proc
    front_server: FrontServer
    catalogue: Catalogue
    factory: RegistryFactory
    mirrors: dict[str, dict[str, Any]] = field(default_factory=dict)
    regions: dict[str, list[str]] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    extra_toml: str = ""
    generation: int = 0

    @property
    def front(self) -> FrontControl:
        return FrontControl(self.front_server.url)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.tmp / 'warmer.db'}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "warmer.toml"

    def ledger(self) -> Ledger:
        return Ledger(self.db_url)

    def mirror(self, name: str, parent: str, parent_url: str, **options: Any) -> Proc:
        proc = self.factory(name, parent_url=parent_url)
        self.procs.append(proc)
        self.mirrors[name] = {"url": proc.url, "parent": parent, **options}
        return proc

    def write(self) -> Path:
        lines = [
            "[database]", f'url = "{self.db_url}"',
            "[upstreams.dockerhub]", f'url = "{self.front_server.url}"',
            'aliases = ["docker.io"]', "ratelimit_reserve = 0",
            "[run]", 'deadline_grace = "5s"', "retries = 1", 'timeout = "20s"',
        ]  # fmt: skip
        for name, m in self.mirrors.items():
            lines += [f"[mirrors.{name}]", f'url = "{m["url"]}"', f'parent = "{m["parent"]}"']
            if "ttl" in m:
                lines.append(f'ttl = "{m["ttl"]}"')
            if "expiry" in m:
                lines.append(f'expiry = "{m["expiry"]}"')
            if "kind" in m:
                lines.append(f'kind = "{m["kind"]}"')
            if "bandwidth" in m:
                lines.append(f'link = {{ bandwidth = "{m["bandwidth"]}" }}')
            if "invalidate" in m:
                lines.append(f"invalidate = {m['invalidate']}")
        for region, mirrors in self.regions.items():
            lines += [f"[regions.{region}]", "mirrors = " + json.dumps(mirrors)]
        self.config_path.write_text("\n".join(lines) + "\n" + self.extra_toml)
        return self.config_path

    def config(self) -> Any:
        return load(self.write())

    def warm(self, region: str, *images: str) -> int:
        """A warm run through the warm engine; returns the run id."""
        cfg, ledger = self.config(), self.ledger()

        async def go() -> int:
            now = datetime.now(UTC)
            prepared = await prepare(cfg, ledger, region, wants_from_args(images), now=now)
            assert not prepared.unresolved, prepared.unresolved
            run_id = start_run(ledger, prepared, now, None)
            stats = await execute(cfg, ledger, run_id, deadline=None)
            assert stats.failed == 0 and stats.incidents == 0, stats
            return run_id

        return asyncio.run(go())

    def move(self, repository: str, tag: str) -> Tag:
        self.generation += 1
        return self.loops.run(
            move_tag(self.upstream.url, self.catalogue, repository, tag, self.generation)
        )

    def refresh(self, now: datetime, region: str | None = None, warm_moved: bool = True) -> Any:
        return asyncio.run(
            refresh(self.config(), self.ledger(), region=region, now=now, warm_moved=warm_moved)
        )

    def warmer(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.write()), *args])

    def head(self, url: str, repository: str, tag: str) -> str:
        async def go() -> str:
            async with RegistryClient(url, retries=0) as c:
                return (await c.head_manifest(repository, tag)).digest

        return asyncio.run(go())


def make_chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    """The body of the ``chain`` fixture (other test modules wrap it in their own)."""
    loops = LoopThread()
    upstream = registry_factory("up")
    catalogue = build(SEED, SCALE).only(*REPOS)
    loops.run(seed(upstream.url, catalogue, fresh=True))
    front = loops.run(start_front(upstream.url))
    c = Chain(tmp_path, loops, upstream, front, catalogue, registry_factory)
    try:
        central = c.mirror("central", "dockerhub", front.url)
        c.mirror("eu", "central", central.url)
        c.regions = {"eu": ["eu"]}
        c.write()
        yield c
    finally:
        for proc in reversed(c.procs):
            proc.stop()
        loops.run(front.close())
        loops.stop()
        upstream.stop()


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from make_chain(registry_factory, tmp_path)


def manifest_gets(stats: dict[str, Any]) -> int:
    return int(stats["requests"].get("manifest", {}).get("GET", 0))


# --- 1. a tag moved upstream ----------------------------------------------------------------


def test_refresh_unchanged_spends_nothing_then_warms_a_moved_tag(chain: Chain) -> None:
    chain.warm("eu", "redis:7.4")
    ledger = chain.ledger()
    old = chain.catalogue.tag("library/redis", "7.4").digest
    now = datetime.now(UTC)

    chain.front.reset()
    quiet = chain.refresh(now)
    stats = chain.front.stats()
    assert quiet.checked == 1 and quiet.moved == 0 and quiet.drift_events == 0
    assert quiet.warmed_items == 0 and quiet.upstream_counted_requests == 0
    assert manifest_gets(stats) == 0 and stats["manifest_gets_counted"] == 0
    assert stats["requests"]["manifest"]["HEAD"] >= 1  # HEAD only

    new = chain.move("library/redis", "7.4")
    assert new.digest != old
    chain.front.reset()
    later = now + timedelta(hours=1)
    report = chain.refresh(later)
    stats = chain.front.stats()
    assert report.ok, report.errors
    assert report.moved == 1 and report.drift_events == 1 and report.stale_tiers == 0
    # Manifests needed for the moved tag: its index and the linux/amd64 manifest.
    needed = 1 + 1
    assert manifest_gets(stats) == needed == stats["manifest_gets_counted"]
    assert report.upstream_counted_requests == needed
    assert report.warmed_items > 0
    assert chain.head(chain.mirrors["eu"]["url"], "library/redis", "7.4") == new.digest

    drift = ledger.drifts()
    assert len(drift) == 1
    d = drift[0]
    assert (d.tag, d.old_digest, d.new_digest) == ("7.4", old, new.digest)
    assert as_utc(d.detected_at) == later and as_utc(d.moved_after) == now
    # The old top manifest is superseded at both tiers, the new one warm.
    for mirror in ("central", "eu"):
        assert {h.state for h in ledger.holding_rows(mirror, "library/redis", old)} == {
            "superseded"
        }
        assert {h.state for h in ledger.holding_rows(mirror, "library/redis", new.digest)} == {
            "warm"
        }
    assert all(
        r.superseded_at is not None
        for r in ledger.resolutions("docker.io/library/redis", "7.4")
        if r.digest == old
    )

    shown = chain.warmer("drift", "--since", "7d", "--json")
    assert shown.exit_code == 0, shown.output + shown.stderr
    events = json.loads(shown.stdout)["events"]
    assert [(e["tag"], e["old"], e["new"]) for e in events] == [("7.4", old, new.digest)]
    text = chain.warmer("drift")
    assert "redis:7.4" in text.stdout and new.digest[:19] in text.stdout


def test_check_only_refresh_records_drift_and_leaves_the_warm_for_a_window(chain: Chain) -> None:
    chain.warm("eu", "redis:7.4")
    now = datetime.now(UTC)
    new = chain.move("library/redis", "7.4")
    chain.front.reset()
    report = chain.refresh(now, warm_moved=False)
    assert report.moved == 1 and report.drift_events == 1 and report.deferred == 1
    assert report.runs == [] and report.warmed_items == 0
    # No blob moved. The one counted GET is the central tier answering the refresh's HEAD
    # by tag: a distribution proxy fetches the new top manifest to answer it (needed by the
    # next warm anyway).
    stats = chain.front.stats()
    assert manifest_gets(stats) <= 1 and not stats.get("blobs")
    # The next warm (in a window) plans the new digest.
    plan = chain.warmer("plan", "--region", "eu", "redis:7.4", "--json")
    assert plan.exit_code == 0, plan.output
    items = json.loads(plan.stdout.strip().splitlines()[-1])["items"]
    assert new.digest in {i["digest"] for i in items}


# --- 2. a tier with a metadata cache ----------------------------------------------------------


def test_stale_metadata_cache_detected_reported_and_invalidated(chain: Chain) -> None:
    central = chain.mirrors["central"]["url"]
    stale = chain.loops.run(StaleFront(central).start())
    try:
        # "cache" is what CI pulls from: a metadata-caching front over the central mirror.
        chain.mirrors["cache"] = {"url": stale.url, "parent": "dockerhub"}
        del chain.mirrors["eu"]
        chain.regions = {"r": ["cache"]}
        chain.warm("r", "alpine:3.20")
        old = chain.catalogue.tag("library/alpine", "3.20").digest
        new = chain.move("library/alpine", "3.20")
        assert chain.head(stale.url, "library/alpine", "3.20") == old  # serving it stale

        t0 = datetime.now(UTC)
        first = chain.refresh(t0)
        assert first.moved == 1 and first.stale_tiers == 1 and first.drift_events == 1
        tag = next(t for t in first.tags if t.tag == "3.20")
        assert [(s["mirror"], s["served"], s["fresh_after"]) for s in tag.stale] == [
            ("cache", old, False)
        ]
        # No hook: still stale; the new digest was warmed by digest through the tier anyway.
        assert chain.head(stale.url, "library/alpine", "3.20") == old
        assert first.warmed_items > 0

        chain.mirrors["cache"]["invalidate"] = (
            f'{{ url = "{stale.url}/_purge?repository={{repository}}&tag={{tag}}" }}'
        )
        t1 = t0 + timedelta(minutes=10)
        second = chain.refresh(t1)
        assert second.moved == 0 and second.stale_tiers == 1
        tag = next(t for t in second.tags if t.tag == "3.20")
        (entry,) = tag.stale
        # Stale since the upstream was first seen with the new digest (the first refresh).
        assert entry["since"] == t0.isoformat() and entry["seconds"] == 600.0
        assert entry["invalidated"] is True and entry["fresh_after"] is True
        assert stale.purges == [("library/alpine", "3.20")]
        assert chain.head(stale.url, "library/alpine", "3.20") == new.digest
        drift = chain.ledger().drifts()
        assert [(d.old_digest, d.new_digest) for d in drift] == [(old, new.digest)] * 2
        stored = json.loads(drift[0].stale_tiers)
        assert stored[0]["mirror"] == "cache" and stored[0]["fresh_after"] is True

        third = chain.refresh(t1 + timedelta(minutes=1))
        assert third.stale_tiers == 0 and third.drift_events == 0
    finally:
        chain.loops.run(stale.close())


# --- 3. TTL: renewal before expiry, expired rows never count ---------------------------------


def test_last_access_mirror_is_renewed_before_expiry(chain: Chain) -> None:
    for m in chain.mirrors.values():
        m["ttl"] = "2h"
        m["expiry"] = "last-access"
    chain.extra_toml = '[refresh]\nrenew_before = "1h"\n'
    chain.warm("eu", "redis:7.4")
    ledger = chain.ledger()
    digest = chain.catalogue.tag("library/redis", "7.4").digest
    warmed = datetime.now(UTC)

    chain.front.reset()
    early = chain.refresh(warmed + timedelta(minutes=30))
    assert early.warmed_items == 0 and early.renewed == 0 and early.runs == []

    soon = chain.refresh(warmed + timedelta(minutes=90))  # expires within the 1h margin
    assert soon.renewed == 1 and soon.runs and soon.runs[0]["items"] > 0
    assert soon.warmed_items == soon.runs[0]["items"]
    (row,) = ledger.holding_rows("eu", "library/redis", digest)
    expires = as_utc(row.expires_at)
    assert expires is not None
    assert expires > warmed + timedelta(hours=2)  # renewed
    # The mirrors still held it: renewing cost the upstream no counted request.
    assert manifest_gets(chain.front.stats()) == 0

    expired_at = warmed + timedelta(hours=5)
    assert ledger.holdings(["eu"], expired_at) == []  # expired rows never count
    late = chain.refresh(expired_at)
    assert late.renewed == 1 and late.runs[0]["items"] == soon.runs[0]["items"]


def test_first_fetch_mirror_is_rewarmed_after_expiry_not_before(chain: Chain) -> None:
    """CNCF distribution's proxy: the clock starts at the first fetch from the parent and a
    hit does not move it, so a warm before expiry renews nothing and must not claim to."""
    for m in chain.mirrors.values():
        m["ttl"] = "2h"  # expiry = "first-fetch" is the default
    chain.extra_toml = '[refresh]\nrenew_before = "1h"\n'
    cfg, ledger = chain.config(), chain.ledger()
    prepared = asyncio.run(
        prepare(cfg, ledger, "eu", wants_from_args(["redis:7.4"]), now=datetime.now(UTC))
    )

    def run_plan() -> None:
        run_id = start_run(ledger, prepared, datetime.now(UTC), None)
        stats = asyncio.run(execute(cfg, ledger, run_id, deadline=None))
        assert stats.failed == 0 and stats.done == len(prepared.plan.items)

    run_plan()
    digest = chain.catalogue.tag("library/redis", "7.4").digest
    (row,) = ledger.holding_rows("eu", "library/redis", digest)
    first, expires = as_utc(row.first_fetched_at), as_utc(row.expires_at)
    assert first is not None and expires == first + timedelta(hours=2)

    # The same plan fetched again is all cache hits: the expiry stays.
    run_plan()
    for h in ledger.holdings(["central", "eu"], datetime.now(UTC)):
        assert h.expires_at is not None and h.first_fetched_at is not None
        assert as_utc(h.expires_at) == as_utc(h.first_fetched_at + timedelta(hours=2))
    (again,) = ledger.holding_rows("eu", "library/redis", digest)
    assert as_utc(again.expires_at) == expires and as_utc(again.first_fetched_at) == first
    assert again.warmed_at > row.warmed_at  # touched, not renewed

    soon = chain.refresh(first + timedelta(minutes=90))  # inside the margin: no renewal
    assert soon.renewed == 0 and soon.runs == [] and soon.warmed_items == 0

    # Two hours on (the executor's clock is the real one, so the ledger travels instead):
    # the mirror deleted it at expiry, and the next refresh warms it again from the parent.
    with ledger.session() as s:
        for h in s.exec(select(Holding)).all():
            assert h.first_fetched_at is not None and h.expires_at is not None
            h.first_fetched_at -= timedelta(hours=2)
            h.expires_at -= timedelta(hours=2)
            s.add(h)
        s.commit()
    before = datetime.now(UTC)
    assert ledger.holdings(["eu"], before) == []
    late = chain.refresh(before)
    assert late.renewed == 1 and late.runs and late.runs[0]["items"] > 0
    (after,) = ledger.holding_rows("eu", "library/redis", digest)
    restarted = as_utc(after.first_fetched_at)
    assert restarted is not None and restarted >= before
    assert as_utc(after.expires_at) == restarted + timedelta(hours=2)


def test_refresh_cli_json_and_bad_region(chain: Chain) -> None:
    chain.warm("eu", "redis:7.4")
    result = chain.warmer("refresh", "--region", "eu", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    out = json.loads(result.stdout)
    assert out["checked"] == 1 and out["moved"] == 0 and out["ok"] is True
    bad = chain.warmer("refresh", "--region", "nowhere")
    assert bad.exit_code == 2
    assert "unknown region 'nowhere'" in bad.stderr and "Traceback" not in bad.output


def test_invalidate_command_hook(tmp_path: Path) -> None:
    from warmer.config import InvalidateHook
    from warmer.upkeep.invalidate import run_hook

    out = tmp_path / "purged"
    hook = InvalidateHook(
        command=["sh", "-c", f'echo "$1 $2" > {out}', "sh", "{repository}", "{tag}"]
    )
    result = asyncio.run(
        run_hook(hook, image="docker.io/library/x", repository="library/x", tag="1", digest="d")
    )
    assert result.ok and out.read_text().strip() == "library/x 1"
    failing = InvalidateHook(command=["sh", "-c", "echo nope >&2; exit 3"])
    bad = asyncio.run(run_hook(failing, image="i", repository="r", tag="t", digest="d"))
    assert not bad.ok and "exit 3" in bad.detail and "nope" in bad.detail
    secret = InvalidateHook(
        url="http://127.0.0.1:1/purge", headers_env={"Authorization": "NOPE_UNSET_X"}
    )
    missing = asyncio.run(run_hook(secret, image="i", repository="r", tag="t", digest="d"))
    assert not missing.ok and "NOPE_UNSET_X" in missing.detail


def test_hook_never_leaks_the_header_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warmer.config import InvalidateHook
    from warmer.upkeep.invalidate import run_hook

    monkeypatch.setenv("PURGE_TOKEN_T", "s3cr3t-value")
    seen: list[str] = []

    async def go() -> Any:
        async def handler(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization", ""))
            return web.Response(status=403, text="denied")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        hook = InvalidateHook(
            url=f"http://127.0.0.1:{port}/purge/{{repository}}",
            method="DELETE",
            headers_env={"Authorization": "PURGE_TOKEN_T"},
        )
        try:
            return await run_hook(hook, image="i", repository="library/x", tag="t", digest="d")
        finally:
            await runner.cleanup()

    result = asyncio.run(go())
    assert seen == ["s3cr3t-value"]
    assert not result.ok and "HTTP 403" in result.detail and "s3cr3t" not in result.detail
