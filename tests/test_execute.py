"""Executor edge cases against real registries: dependencies, deadlines, 429s, Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from aiohttp import ClientSession, web
from test_warm import LoopbackServer, RegistryFactory, Topo, topo  # noqa: F401 (topo is a fixture)

from warmer.config import Config, load
from warmer.store.ledger import Ledger, RunItem, utcnow
from warmer.warm import run as warm
from warmer.warm.execute import Executor
from warmer.warm.resolve import mirror_client, wants_from_args


def start(t: Topo, region: str, images: list[str]) -> tuple[Config, Ledger, int]:
    """Plan and record a run (nothing fetched but manifests through the top tier)."""
    cfg, ledger = load(t.config_path), t.ledger()
    wants = wants_from_args(images)
    prepared = asyncio.run(warm.prepare(cfg, ledger, region, wants, now=utcnow()))
    assert prepared.plan.items and not prepared.unresolved
    return cfg, ledger, warm.start_run(ledger, prepared, utcnow(), None)


def run_state(ledger: Ledger, run_id: int) -> str:
    run = ledger.run(run_id)
    assert run is not None, f"run {run_id} is not in the ledger"
    return run.state


def test_failed_parent_skips_child(topo: Topo) -> None:  # noqa: F811
    cfg, ledger, run_id = start(topo, "eu", ["redis:7.4"])
    layer = topo.box.catalogue.tag("library/redis", "7.4").image().layers[0]
    topo.front.add_fault("status", f"/blobs/{layer.digest}", count=100, status=404)
    stats = asyncio.run(warm.execute(cfg, ledger, run_id, deadline=None, settle=0))
    items = ledger.items(run_id)
    parent = next(i for i in items if i.mirror == "central" and i.digest == layer.digest)
    child = next(i for i in items if i.mirror == "eu" and i.digest == layer.digest)
    assert parent.state == "failed" and "not found" in parent.reason
    assert child.state == "skipped" and f"parent item {parent.seq}" in child.reason
    assert stats.failed == 1 and stats.skipped == 1 and stats.done == len(items) - 2
    assert run_state(ledger, run_id) == "failed"


def test_parent_pending_at_deadline_keeps_child_pending(topo: Topo) -> None:  # noqa: F811
    cfg, ledger, run_id = start(topo, "eu", ["alpine:3.20"])
    past = utcnow() - timedelta(seconds=1)
    stats = asyncio.run(warm.execute(cfg, ledger, run_id, deadline=past, settle=0))
    items = ledger.items(run_id)
    assert stats.pending == len(items) and stats.deadline_hit
    assert all(i.state == "pending" and i.attempts == 0 for i in items)
    assert {i.reason for i in items if i.mirror == "central"} == {"window ended before it started"}
    assert all(i.reason.startswith("waits for item") for i in items if i.mirror == "eu")
    assert run_state(ledger, run_id) == "aborted"
    assert ledger.unfinished_run("eu") is not None
    # Resumed without a deadline, everything completes.
    stats = asyncio.run(warm.execute(cfg, ledger, run_id, deadline=None, settle=0))
    assert stats.done == len(items) and run_state(ledger, run_id) == "done"


def test_429_through_mirror_is_failed_with_clear_reason(
    topo: Topo,  # noqa: F811
    registry_factory: RegistryFactory,
) -> None:
    _, ledger, run_id = start(topo, "eu", ["nginx:1.27"])
    # The central mirror lost its cache, and the upstream's limit is spent meanwhile.
    cold = registry_factory("central-cold", parent_url=topo.box.front_url)
    try:
        topo.mirrors["central"]["url"] = cold.url
        topo.write()
        cfg = load(topo.config_path)
        topo.front.configure(ratelimit_limit=0, ratelimit_reset=True)
        reserve = warm.rate_reserve(cfg, "eu", wants_from_args(["nginx:1.27"])[0])
        assert reserve is not None

        async def go() -> None:
            try:
                await warm.execute(cfg, ledger, run_id, deadline=None, reserve=reserve, settle=0)
            finally:
                assert reserve.client is not None
                await reserve.client.aclose()

        asyncio.run(go())
    finally:
        cold.stop()
    assert topo.front.stats()["throttled"] > 0
    items = ledger.items(run_id)
    top = next(i for i in items if i.mirror == "central" and i.kind == "manifest")
    # distribution 2.8 answers HTTP 500 for its upstream's 429; the reason says what it was.
    assert top.state == "failed" and "upstream rate limit spent" in top.reason
    assert "HTTP 500" in top.reason
    assert run_state(ledger, run_id) == "failed"


class Recorder(LoopbackServer):
    """A loopback pass-through to ``target`` that records, server side, when each request
    arrived, and when its answer left with which status and Retry-After."""

    @dataclass
    class Entry:
        arrived: float  # time.monotonic() in this process, as each request came in
        answered: float
        method: str
        path: str
        status: int
        retry_after: str | None

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.entries: list[Recorder.Entry] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        skip = {"host", "content-length", "transfer-encoding", "connection"}
        hdrs = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        body = await request.read()
        async with (
            ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, self.target + request.path_qs, headers=hdrs,
                data=body or None, allow_redirects=False,
            ) as up,
        ):  # fmt: skip
            data = await up.read()
            out = web.Response(status=up.status, body=data if request.method != "HEAD" else None)
            for k, v in up.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    out.headers[k] = v
            if request.method == "HEAD" and "Content-Length" in up.headers:
                out.headers["Content-Length"] = up.headers["Content-Length"]
        entry = Recorder.Entry(
            arrived, time.monotonic(), request.method, request.path, up.status,
            up.headers.get("Retry-After"),
        )  # fmt: skip
        self.entries.append(entry)
        return out


RETRY_AFTER_TOLERANCE = 0.05  # seconds: clock reads and loopback, not a performance bound


def test_retry_after_is_honoured(topo: Topo) -> None:  # noqa: F811
    # The front itself as the mirror: its 429 (with Retry-After) reaches the client as is,
    # through a pass-through that records on the server side when each request came.
    with Recorder(topo.box.front_url) as recorder:
        topo.mirrors = {"hub": {"url": recorder.url, "parent": "dockerhub"}}
        topo.regions = {"hq": ["hub"]}
        topo.write()
        cfg, ledger, run_id = start(topo, "hq", ["alpine:3.19"])
        recorder.entries.clear()
        topo.front.configure(ratelimit_limit=1, ratelimit_window=1, ratelimit_reset=True)
        stats = asyncio.run(warm.execute(cfg, ledger, run_id, deadline=None, settle=0))
    assert topo.front.stats()["throttled"] >= 1
    items = ledger.items(run_id)
    assert stats.done == len(items) and stats.failed == 0
    assert max(i.attempts for i in items if i.kind == "manifest") >= 2
    # Every 429 was followed, on the same path, by a request no earlier than its Retry-After.
    log = recorder.entries
    throttled = [(n, e) for n, e in enumerate(log) if e.status == 429]
    assert throttled
    for n, e in throttled:
        assert e.retry_after is not None and "/manifests/" in e.path
        wait = float(e.retry_after)
        assert wait >= 1
        later = [x for x in log[n + 1 :] if x.path == e.path and x.method == e.method]
        assert later, f"{e.method} {e.path} was never asked again after its 429"
        gap = later[0].arrived - e.answered
        assert gap >= wait - RETRY_AFTER_TOLERANCE, (
            f"{e.path}: asked again {gap:.3f}s after a 429 with Retry-After {wait:.0f}"
        )
    assert log[-1].status != 429


def test_a_failing_feed_leaves_nothing_running_and_the_run_resumable(topo: Topo) -> None:  # noqa: F811
    cfg, ledger, run_id = start(topo, "eu", ["redis:7.4"])

    async def feed() -> AsyncIterator[list[RunItem]]:
        await asyncio.sleep(0.05)  # the first items are under way
        raise RuntimeError("resolution broke")
        yield []  # an async generator

    with pytest.raises(RuntimeError, match="resolution broke"):
        asyncio.run(warm.execute(cfg, ledger, run_id, deadline=None, settle=0, more=feed()))
    items = ledger.items(run_id)
    assert {i.state for i in items} <= {"pending", "done"}
    assert ledger.unfinished_run("eu") is not None
    stats = asyncio.run(warm.execute(cfg, ledger, run_id, deadline=None, settle=0))
    assert stats.done == len(items) and run_state(ledger, run_id) == "done"


def test_a_blob_is_busy_for_its_transfer_not_for_the_wait_before_it(topo: Topo) -> None:  # noqa: F811
    """Distribution starts a cold blob's store together with our relay, once its parent
    has answered: the time before that answer (here 0.4 s per request at the upstream
    front: central's round trips to it) delays the store as much as our read, so it must
    not keep the digest busy after the read. Counted from the request, central's blobs
    stayed busy for STORE_LAG x that wait (at least 0.2 s each, with ``settle`` 0)."""
    topo.front.configure(latency_ms=400)
    cfg, ledger, run_id = start(topo, "eu", ["alpine:3.20"])
    started: dict[str, float] = {}
    done: dict[str, float] = {}

    def progress(what: str, item: RunItem, n: int) -> None:
        if item.kind == "blob" and item.mirror == "central" and what in ("start", "done"):
            (started if what == "start" else done)[item.digest] = time.monotonic()

    ex = Executor(
        cfg, ledger, run_id, settle=0, on_progress=progress,
        client_factory=lambda m, url: mirror_client(cfg, m, url),
    )  # fmt: skip
    stats = asyncio.run(ex.run())
    assert stats.failed == 0 and done and done.keys() == started.keys()
    (lane,) = [lane for lane in ex._lanes.values() if lane.mirror == "central"]
    for digest, end in done.items():
        assert end - started[digest] > 0.4  # the set-up: every read waited for its answer
        # What is left is the transfer since the answer (a small blob: milliseconds).
        assert lane.busy_until[digest] - end < 0.1, digest
