"""The Docker-Hub-like front, in-process, against a real docker-registry upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import RegistryFactory

from warmer.sandbox.front import FrontServer, start_front
from warmer.sandbox.frontstate import FrontConfig, Stats, classify, peak_windows, window_rates
from warmer.sandbox.procs import Proc

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Pushed:
    repo: str
    blob: bytes
    blob_digest: str
    manifest: bytes
    manifest_digest: str


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(base: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    r = httpx.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    loc = httpx.URL(base).join(r.headers["Location"])
    r = httpx.put(loc.copy_merge_params({"digest": digest}), content=data)
    assert r.status_code == 201, r.text
    return digest


@pytest.fixture(scope="module")
def pushed(plain_registry: Proc) -> Pushed:
    """One image (a 300 kB layer) in the upstream, pushed over plain HTTP."""
    repo = "fronttest/app"
    blob = random.Random(7).randbytes(300_000)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(blob)]}}).encode()  # fmt: skip
    blob_digest = _push_blob(plain_registry.url, repo, blob)
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(blob),
             "digest": blob_digest}  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": _push_blob(plain_registry.url, repo, config)},
        "layers": [layer],
    }).encode()  # fmt: skip
    r = httpx.put(f"{plain_registry.url}/v2/{repo}/manifests/v1", content=manifest,
                  headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert r.status_code == 201, r.text
    return Pushed(repo, blob, blob_digest, manifest, _digest(manifest))


@pytest.fixture
async def front(plain_registry: Proc) -> AsyncIterator[FrontServer]:
    server = await start_front(plain_registry.url, config=FrontConfig())
    yield server
    await server.close()


@pytest.fixture
async def client(front: FrontServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=front.url, timeout=10, headers={"Accept": OCI_MANIFEST}
    ) as c:
        yield c


def test_classify() -> None:
    assert classify("/v2/library/python/manifests/3.12") == ("manifest", "library/python", "3.12")
    assert classify("/v2/a/b/c/blobs/sha256:ab") == ("blob", "a/b/c", "sha256:ab")
    assert classify("/v2/a/blobs/uploads/") == ("other", "a", None)
    assert classify("/v2/a/blobs/uploads/123-uuid") == ("other", "a", None)
    assert classify("/v2/a/tags/list") == ("other", "a", None)
    assert classify("/v2/") == ("other", None, None)


def test_window_rates() -> None:
    series = [100] * 10 + [0] * 10 + [300] * 10  # bytes per 100 ms
    rates = window_rates(series)
    assert rates["peak"] == 3000.0
    assert rates["mean"] == pytest.approx((1000 + 3000) / 3.0)
    assert window_rates([]) == {"peak": 0.0, "mean": 0.0}


async def test_counts_requests_and_bytes(client: httpx.AsyncClient, pushed: Pushed) -> None:
    accept = {"Accept": OCI_MANIFEST}
    r = await client.get(f"/v2/{pushed.repo}/manifests/v1", headers=accept)
    assert r.status_code == 200 and r.content == pushed.manifest
    assert r.headers["Docker-Content-Digest"] == pushed.manifest_digest
    assert (await client.head(f"/v2/{pushed.repo}/manifests/v1", headers=accept)).status_code == 200
    r = await client.get(f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}")
    assert r.content == pushed.blob
    h = await client.head(f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}")
    assert h.headers["Content-Length"] == str(len(pushed.blob)) and h.content == b""

    stats = (await client.get("/_front/stats")).json()
    assert stats["requests"]["manifest"] == {"GET": 1, "HEAD": 1}
    assert stats["requests"]["blob"] == {"GET": 1, "HEAD": 1}
    assert stats["bytes_served"] == len(pushed.manifest) + len(pushed.blob)
    assert sum(stats["series"]["bytes"]) == stats["bytes_served"]
    repo = stats["repositories"][pushed.repo]
    assert repo["bytes_served"] == stats["bytes_served"]
    assert stats["blobs"][pushed.blob_digest] == {
        "GET": 1,
        "HEAD": 1,
        "bytes_served": len(pushed.blob),
    }
    assert stats["manifest_gets_counted"] == 1
    assert stats["status"] == {"200": 4}

    await client.post("/_front/stats/reset")
    stats = (await client.get("/_front/stats")).json()
    assert stats["total_requests"] == 0 and stats["bytes_served"] == 0


async def test_push_through_front_rewrites_location(
    client: httpx.AsyncClient, front: FrontServer
) -> None:
    data = b"pushed through the front"
    digest = _digest(data)
    r = await client.post("/v2/fronttest/push/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    assert not location.startswith("http") or location.startswith(front.url)
    url = httpx.URL(front.url).join(location).copy_merge_params({"digest": digest})
    r = await client.put(url, content=data)
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/fronttest/push/blobs/{digest}")).content == data


async def test_rate_limit_counts_gets_not_heads(client: httpx.AsyncClient, pushed: Pushed) -> None:
    r = await client.post("/_front/config", json={"ratelimit_limit": 2, "ratelimit_window": 60})
    assert r.json()["ratelimit_limit"] == 2
    url = f"/v2/{pushed.repo}/manifests/v1"
    head = await client.head(url)
    assert head.headers["ratelimit-limit"] == "2;w=60"
    assert head.headers["ratelimit-remaining"] == "2;w=60"
    assert head.headers["docker-ratelimit-source"] == "127.0.0.1"
    assert (await client.get(url)).headers["ratelimit-remaining"] == "1;w=60"
    assert (await client.get(url)).headers["ratelimit-remaining"] == "0;w=60"
    limited = await client.get(url)
    assert limited.status_code == 429
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert (await client.head(url)).status_code == 200  # HEAD is never counted nor refused
    blob = await client.get(f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}")
    assert blob.status_code == 200  # only manifests are limited
    stats = (await client.get("/_front/stats")).json()
    assert stats["throttled"] == 1 and stats["manifest_gets_counted"] == 2
    await client.post("/_front/config", json={"ratelimit_reset": True})
    assert (await client.get(url)).status_code == 200
    # Seeded requests count like real ones until they leave the window.
    seeded = {"ratelimit_reset": True, "ratelimit_window": 60, "ratelimit_seed": [30, 1]}
    await client.post("/_front/config", json=seeded)
    assert (await client.head(url)).headers["ratelimit-remaining"] == "0;w=60"
    await client.post("/_front/config", json={"ratelimit_window": 10})  # 30 s ago: out
    assert (await client.head(url)).headers["ratelimit-remaining"] == "1;w=10"


async def test_bad_control_input_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/_front/config", json={"latency": 5})
    assert r.status_code == 400 and "latency" in r.text
    r = await client.post("/_front/faults", json={"kind": "explode"})
    assert r.status_code == 400 and "kind" in r.text
    r = await client.post("/_front/config", content=b"{nope")
    assert r.status_code == 400
    r = await client.post("/_front/config", json={"ratelimit_seed": [1, -2]})
    assert r.status_code == 400 and "ratelimit_seed" in r.text


async def test_fault_status_then_clears(client: httpx.AsyncClient, pushed: Pushed) -> None:
    faults = await client.post("/_front/faults", json={"kind": "status", "status": 503, "match": pushed.blob_digest, "count": 2})  # fmt: skip
    assert faults.json()[0]["count"] == 2
    url = f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}"
    assert (await client.get(url)).status_code == 503
    assert (await client.head(url)).status_code == 503
    assert (await client.get(url)).status_code == 200  # count spent
    await client.post(
        "/_front/faults", json={"kind": "status", "status": 500, "match": "/manifests/"}
    )
    await client.delete("/_front/faults")
    assert (await client.get("/_front/faults")).json() == []
    assert (await client.get(f"/v2/{pushed.repo}/manifests/v1")).status_code == 200
    assert (await client.get("/_front/stats")).json()["faults_applied"] == {"status": 2}


async def test_fault_corrupt_flips_a_byte(client: httpx.AsyncClient, pushed: Pushed) -> None:
    await client.post("/_front/faults", json={"kind": "corrupt", "match": pushed.blob_digest})
    body = (await client.get(f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}")).content
    assert len(body) == len(pushed.blob) and body != pushed.blob
    assert sum(a != b for a, b in zip(body, pushed.blob, strict=True)) == 1
    body = (await client.get(f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}")).content
    assert body == pushed.blob


async def test_fault_reset_mid_blob(client: httpx.AsyncClient, pushed: Pushed) -> None:
    await client.post("/_front/faults", json={"kind": "reset", "match": pushed.blob_digest, "after_bytes": 100_000})  # fmt: skip
    url = f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}"
    received = 0
    with pytest.raises(httpx.TransportError):
        async with client.stream("GET", url) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                received += len(chunk)
    assert received <= 100_000
    assert (await client.get(url)).content == pushed.blob


async def test_fault_slow_and_latency(client: httpx.AsyncClient, pushed: Pushed) -> None:
    await client.post("/_front/faults", json={"kind": "slow", "match": "/manifests/", "delay": 1})
    with pytest.raises(httpx.ReadTimeout):
        await client.get(f"/v2/{pushed.repo}/manifests/v1", timeout=0.2)
    await client.post("/_front/config", json={"latency_ms": 300})
    t = time.monotonic()
    assert (await client.head(f"/v2/{pushed.repo}/manifests/v1")).status_code == 200
    assert time.monotonic() - t >= 0.3  # a lower bound: the added latency was applied


async def test_bandwidth_cap_spreads_bytes(client: httpx.AsyncClient, pushed: Pushed) -> None:
    r = await client.post("/_front/config", json={"bandwidth": "1MB/s"})
    assert r.json()["bandwidth"] == 1_000_000
    await client.post("/_front/stats/reset")
    url = f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}"
    t = time.monotonic()
    bodies = [(await client.get(url)).content for _ in range(2)]
    elapsed = time.monotonic() - t
    assert bodies == [pushed.blob, pushed.blob]
    # 600 kB at 1 MB/s with a 50 ms burst: at least 0.55 s, whatever the machine.
    assert elapsed >= 0.5
    series = (await client.get("/_front/stats")).json()["series"]["bytes"]
    assert sum(series) == 2 * len(pushed.blob)
    assert max(series) <= 1_000_000 * 0.1 + 50_000 + 16_384  # per-100ms ceiling from the cap


async def test_every_accept_header_reaches_upstream(
    client: httpx.AsyncClient, pushed: Pushed
) -> None:
    # distribution sends one Accept header per media type; a front that keeps only the last
    # one makes OCI manifests look missing.
    headers = [("Accept", OCI_MANIFEST), ("Accept", "application/vnd.docker.distribution.manifest.v2+json")]  # fmt: skip
    r = await client.get(f"/v2/{pushed.repo}/manifests/v1", headers=headers)
    assert r.status_code == 200 and r.content == pushed.manifest


async def test_token_auth_like_docker_hub(client: httpx.AsyncClient, pushed: Pushed) -> None:
    await client.post("/_front/config", json={"auth": "token"})
    ping = await client.get("/v2/")
    assert ping.status_code == 401
    realm = f"{str(client.base_url).rstrip('/')}/token"
    assert ping.headers["WWW-Authenticate"].startswith(f'Bearer realm="{realm}"')
    url = f"/v2/{pushed.repo}/manifests/v1"
    refused = await client.get(url)
    assert refused.status_code == 401
    assert f'scope="repository:{pushed.repo}:pull"' in refused.headers["WWW-Authenticate"]
    body = (await client.get("/token", params={"scope": f"repository:{pushed.repo}:pull"})).json()
    assert body["expires_in"] == 300 and body["token"] == body["access_token"]
    auth = {"Authorization": f"Bearer {body['token']}"}
    ok = await client.get(url, headers=auth)
    assert ok.status_code == 200 and ok.content == pushed.manifest
    assert (await client.get("/v2/", headers=auth)).status_code == 200
    other = (await client.get("/token", params={"scope": "repository:other/repo:pull"})).json()
    assert (
        await client.get(url, headers={"Authorization": f"Bearer {other['token']}"})
    ).status_code == 401
    assert (await client.get(url, headers={"Authorization": "Bearer forged"})).status_code == 401
    stats = (await client.get("/_front/stats")).json()
    assert stats["requests"]["token"]["GET"] == 2
    bad = await client.post("/_front/config", json={"auth": "basic"})
    assert bad.status_code == 400 and "auth" in bad.text


async def test_distribution_proxy_pings_a_parent_that_sends_no_challenge(
    front: FrontServer, registry_factory: RegistryFactory, pushed: Pushed
) -> None:
    """Why the sandbox front speaks Docker Hub's token flow: a distribution 2.8 proxy whose
    parent answers ``/v2/`` without a challenge pings it again before every proxied request
    (under one lock, so a slow link serialises them); a Bearer challenge is kept."""

    async def pings_for(auth: str, name: str) -> tuple[int, int]:
        front.state.config.auth = auth
        # In a thread: the proxy pings the front (served by this loop) while it starts.
        proxy = await asyncio.to_thread(registry_factory, name, parent_url=front.url)
        front.state.stats = Stats()
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as c:
            for path in (f"manifests/{pushed.manifest_digest}", f"blobs/{pushed.blob_digest}"):
                r = await c.get(f"/v2/{pushed.repo}/{path}", headers={"Accept": OCI_MANIFEST})
                assert r.status_code == 200
        requests = front.state.stats.to_json()["requests"]
        return requests.get("other", {}).get("GET", 0), requests.get("token", {}).get("GET", 0)

    pings, tokens = await pings_for("none", "pings-anonymous")
    assert pings >= 2 and tokens == 0
    pings, tokens = await pings_for("token", "pings-token")
    assert pings <= 1 and tokens >= 1


def test_peak_windows_are_exact_over_chunk_records() -> None:
    chunks = [(0.0, 100), (0.5, 100), (0.99, 100), (1.0, 50), (3.0, 200), (7.9, 10)]
    w = peak_windows(chunks, (1.0, 5.0))
    # [0, 1) holds the first three; [0.5, 1.5) holds 100 + 100 + 50.
    assert w["peak"] == {"1": 300, "5": 550}
    assert (w["bytes"], w["first"], w["last"]) == (560, 0.0, 7.9)
    assert peak_windows([], (1.0,))["peak"] == {"1": 0}


async def test_windows_and_pings_are_recorded(client: httpx.AsyncClient, pushed: Pushed) -> None:
    await client.post("/_front/stats/reset")
    assert (await client.get("/v2/")).status_code == 200
    url = f"/v2/{pushed.repo}/blobs/{pushed.blob_digest}"
    assert (await client.get(url)).content == pushed.blob
    stats = (await client.get("/_front/stats")).json()
    assert stats["pings"] == 1
    windows = (await client.get("/_front/windows", params={"raw": "1"})).json()
    assert windows["bytes"] == stats["bytes_served"] >= len(pushed.blob)
    assert sum(n for _, n in windows["chunks"]) == windows["bytes"]
    assert windows["peak"]["10"] == windows["bytes"]  # all of it within 10 s
