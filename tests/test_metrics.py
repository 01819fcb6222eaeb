"""The service's metrics: ledger-backed item counts, live byte counters, the HTTP endpoints."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from jobs.metrics import Metrics, MetricsServerError, start_server
from jobs.schedule import Clock
from jobs.tasks import Context, _progress_hook
from warmer.config import Config, DatabaseConfig
from warmer.store.ledger import Ledger, utcnow


def _item(seq: int, mirror: str, tier: int) -> dict[str, object]:
    return {
        "seq": seq, "mirror": mirror, "tier": tier, "repository": "library/python",
        "upstream_repository": "library/python", "kind": "blob",
        "digest": f"sha256:{seq:064d}", "size": 100, "image": "docker.io/library/python:3.12",
        "reference": f"sha256:{seq:064d}",
    }  # fmt: skip


def test_item_states_come_from_the_latest_run_and_bytes_from_progress(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    ledger = Ledger(url)
    metrics = Metrics(url, ["eu", "us"])
    text = metrics.scrape().decode()
    assert 'warmer_run_items{region="eu",state="done"} 0.0' in text
    rid = ledger.create_run(
        region="eu", items=[_item(0, "central", 0), _item(1, "eu", 1), _item(2, "eu", 1)],
        images=[], skipped=[], now=utcnow(), deadline=None, owner="t:1",
    )  # fmt: skip
    items = ledger.items(rid)
    ledger.update_item(items[0].id or 0, state="done")
    ledger.update_item(items[1].id or 0, state="failed")
    cfg = Config(database=DatabaseConfig(url=url))
    hook = _progress_hook(Context(cfg, ledger, Clock.make(utcnow()), ["eu"], metrics))
    hook("bytes", items[0], 60)
    hook("bytes", items[0], 40)
    hook("done", items[0], 100)  # a blob's bytes were counted as they streamed
    text = metrics.scrape().decode()
    assert 'warmer_run_items{region="eu",state="done"} 1.0' in text
    assert 'warmer_run_items{region="eu",state="failed"} 1.0' in text
    assert 'warmer_run_items{region="eu",state="pending"} 1.0' in text
    assert 'warmer_run_items{region="us",state="pending"} 0.0' in text
    assert 'warmer_bytes_warmed_total{mirror="central",tier="0"} 100.0' in text


async def test_metrics_and_healthz_endpoints(tmp_path: Path) -> None:
    metrics = Metrics(f"sqlite:///{tmp_path / 'h.db'}", ["eu"])
    metrics.last_success.labels("warm:eu").set(1234)
    healthy = {"ok": True}

    def health() -> tuple[bool, dict[str, object]]:
        return healthy["ok"], {"replica": "test"}

    runner, port = await start_server(metrics, health, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert 'warmer_job_last_success_timestamp_seconds{job="warm:eu"} 1234.0' in r.text
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.json() == {"ok": True, "replica": "test"}
            healthy["ok"] = False
            assert (await client.get("/healthz")).status_code == 503
    finally:
        await runner.cleanup()


async def test_a_taken_port_or_a_foreign_host_is_a_clear_error(
    tmp_path: Path,
) -> None:
    metrics = Metrics(f"sqlite:///{tmp_path / 'p.db'}", ["eu"])

    def health() -> tuple[bool, dict[str, object]]:
        return True, {}

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsServerError, match="the port is in use") as info:
            await start_server(metrics, health, "127.0.0.1", port)
        assert not info.value.bad_config  # failed work (exit 1), not a config error
    # TEST-NET-1 is no address of this machine: the config names the wrong host (exit 2).
    with pytest.raises(MetricsServerError, match=r"192\.0\.2\.1 is not an address") as info:
        await start_server(metrics, health, "192.0.2.1", 0)
    assert info.value.bad_config
    # Once the other process is gone, the same port serves.
    runner, bound = await start_server(metrics, health, "127.0.0.1", port)
    try:
        assert bound == port
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        await runner.cleanup()
