"""Cold blobs read from a mirror's storage (``cold_blobs = "stored"``), with real registries.

An upstream ``docker-registry`` behind a counting front (its own process, as between
hosts), a distribution 2.8 mirror proxying the front, and an image whose two large layers
are over ``STORED_MIN``: the front's counters say what each blob cost the parent link.
Read from the relay, a cold blob crosses it exactly twice (the mirror's background store
and the relayed copy); read from storage, once and what the mirror relayed of the dropped
copy. The mirror then serves every blob with its parent stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, web
from artifacts_support import digest_of, dumps
from click.testing import CliRunner
from test_warm import LoopbackServer

from warmer.cli.main import cli
from warmer.config import ConfigError, load
from warmer.oci.manifest import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from warmer.oci.registry import RegistryClient, served_from_storage
from warmer.oci.trigger import UnfitHeader, request_bytes
from warmer.sandbox.front import FrontControl
from warmer.sandbox.procs import Proc, free_port, spawn, wait_ready
from warmer.store.ledger import Ledger
from warmer.warm import coldread
from warmer.warm.coldread import FIRST_WAIT, StoreSpeed, next_ask
from warmer.warm.topology import DROP_TAIL, STORED_MIN, MirrorNode, stored_from

RegistryFactory = Callable[..., Proc]
ROOT = Path(__file__).resolve().parents[1]
BIG = [STORED_MIN + (3 << 20), STORED_MIN + (1 << 20)]  # the two large layers' sizes


# --- pure parts -----------------------------------------------------------------------------


def test_first_ask_waits_for_the_predicted_store_then_backs_off() -> None:
    guess = StoreSpeed(bytes_per_s=25e6, lag=0.25)
    # Paced: the guessed lag after the pacer's prediction; never sooner than FIRST_WAIT.
    assert next_ask(10.0, 10.0, 50_000_000, 0, guess, predicted=12.5) == 12.75
    assert next_ask(10.0, 10.0, 50_000_000, 0, guess, predicted=9.0) == 10.0 + FIRST_WAIT
    # Not paced: after the guessed speed would have carried it (50 MB at 25 MB/s).
    assert next_ask(10.0, 10.0, 50_000_000, 0, guess, predicted=None) == 12.25
    # Later asks: at least doubling, and at least half the time spent so far.
    assert next_ask(11.0, 10.0, 1, 1, guess, None) == pytest.approx(11.0 + 0.5)
    assert next_ask(10.2, 10.0, 1, 3, guess, None) == pytest.approx(10.2 + FIRST_WAIT * 8)
    waits = [next_ask(0.0, 0.0, 1, k, guess, None) for k in range(1, coldread.ASKS)]
    assert waits == sorted(waits) and sum(waits) > 10  # a slow store gets seconds


def test_an_ask_answered_from_the_relay_dates_the_store_it_waits_for() -> None:
    """The first ask at 10.5 s got a relayed answer at 10.6 s: the store (triggered at
    10.0 s) was under way by then, and a relayed copy of this mirror was once read at
    100 MB/s, so 20 MB are stored by 10.8 s. The next ask goes then, not after half the
    1 s spent so far; never later than the backoff, never before FIRST_WAIT from now."""
    guess = StoreSpeed(bytes_per_s=25e6, lag=0.25)
    assert next_ask(11.0, 10.0, 20_000_000, 1, guess, None, relayed_at=10.6) == 11.5
    guess.relayed(50_000_000, 0.5)  # 100 MB/s
    assert guess.seen == 100e6
    assert next_ask(10.62, 10.0, 20_000_000, 1, guess, None, 10.6) == pytest.approx(10.85)
    assert next_ask(11.0, 10.0, 20_000_000, 1, guess, None, 10.6) == 11.0 + FIRST_WAIT
    big = 500_000_000  # 5 s at 100 MB/s: the backoff comes first
    assert next_ask(11.0, 10.0, big, 1, guess, None, 10.6) == pytest.approx(11.5)
    assert next_ask(11.0, 10.0, 20_000_000, 1, guess, None, None) == pytest.approx(11.5)


def test_the_store_speed_guess_follows_what_the_asks_found() -> None:
    speed = StoreSpeed(bytes_per_s=20e6, lag=0.5)
    speed.found(first=True)
    assert speed.bytes_per_s == 25e6 and speed.lag == 0.4
    speed.found(first=False)
    assert speed.bytes_per_s == 12.5e6 and speed.lag == 0.8
    for _ in range(40):
        speed.found(first=False)
    assert speed.bytes_per_s == coldread.MIN_SPEED and speed.lag == coldread.LAG[1]
    assert not speed.keeps_nothing()
    speed.lost = coldread.LOST_LIMIT
    assert speed.keeps_nothing()
    speed.kept = 1  # it kept one: a lost blob is bad luck, not the mirror's way
    assert not speed.keeps_nothing()
    # A relayed read of at least OBSERVE_MIN bytes is a floor for the guess.
    speed.relayed(4 << 20, 0.05)
    assert speed.bytes_per_s == (4 << 20) / 0.05
    speed.relayed(4 << 20, 1.0)  # a slower one does not lower it
    assert speed.bytes_per_s == (4 << 20) / 0.05
    speed.relayed(100_000, 0.0001)  # a short read times a round trip, not the link
    assert speed.bytes_per_s == (4 << 20) / 0.05


def test_parent_cost_of_a_stored_read() -> None:
    node = MirrorNode("m", None, "", "repository", 2, None, stored_from=STORED_MIN)
    assert node.parent_cost(STORED_MIN - 1) == 2 * (STORED_MIN - 1)  # relayed
    assert node.parent_cost(STORED_MIN) == STORED_MIN + DROP_TAIL
    assert node.parent_cost(10 * STORED_MIN) == 10 * STORED_MIN + DROP_TAIL
    assert stored_from("stored", 2) == STORED_MIN
    assert stored_from("relay", 2) is None
    assert stored_from("stored", 1) is None  # a mirror fetching once: nothing to save


def test_cold_blobs_config(tmp_path: Path) -> None:
    def config(mirror: str) -> Path:
        path = tmp_path / "c.toml"
        path.write_text(
            '[upstreams.hub]\nurl = "http://127.0.0.1:1"\n'
            f'[mirrors.m]\nurl = "http://127.0.0.1:2"\nparent = "hub"\n{mirror}\n'
            '[regions.r]\nmirrors = ["m"]\n'
        )
        return path

    assert load(config("")).mirrors["m"].cold_blobs == "stored"
    assert load(config('kind = "other"')).mirrors["m"].cold_blobs == "relay"
    assert load(config('cold_blobs = "relay"')).mirrors["m"].cold_blobs == "relay"
    with pytest.raises(ConfigError, match="cold_blobs = 'stored' needs kind = 'distribution'"):
        load(config('kind = "other"\ncold_blobs = "stored"'))


def test_a_triggered_request_refuses_a_header_value_that_would_split_it() -> None:
    url = httpx.URL("http://127.0.0.1:5000/v2/lib/x/blobs/sha256:" + "a" * 64)
    sent = request_bytes(url, {"Authorization": "Bearer abc"})
    assert sent.startswith(b"GET /v2/lib/x/blobs/sha256:") and sent.endswith(b"\r\n\r\n")
    assert b"Host: 127.0.0.1:5000\r\n" in sent and b"Connection: close\r\n" in sent
    with pytest.raises(UnfitHeader) as err:
        request_bytes(url, {"Authorization": "Bearer abc\r\nX-Evil: 1"})
    assert "abc" not in str(err.value)  # the message names the header, never its value


# --- with real registries -------------------------------------------------------------------


@dataclass
class Link:
    up: Proc
    front: Proc
    control: FrontControl
    layers: dict[str, int]  # digest -> size
    image: str


async def push_big_image(url: str, repository: str) -> dict[str, int]:
    """An image with two layers over STORED_MIN and a small one; its blobs by digest."""
    layers = [os.urandom(size) for size in BIG] + [os.urandom(3000)]
    config = dumps({"architecture": "amd64", "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]}})  # fmt: skip
    async with RegistryClient(url) as client:
        for blob in [*layers, config]:
            await client.push_blob(repository, blob)
        manifest = dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(x), "size": len(x)}
                       for x in layers],
        })  # fmt: skip
        await client.put_manifest(repository, "1.0", manifest, OCI_MANIFEST)
    return {digest_of(x): len(x) for x in [*layers, config]}


@pytest.fixture
def link(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Link]:
    up = registry_factory("cold-up")
    layers = asyncio.run(push_big_image(up.url, "library/big"))
    port = free_port()
    argv = [sys.executable, "-m", "warmer.sandbox.front", "--listen", str(port)]
    argv += ["--upstream", up.url, "--bandwidth", "100MB/s", "--latency-ms", "2"]
    argv += ["--ratelimit", "-1", "--auth", "none"]
    front = spawn("cold-front", argv, tmp_path / "front.log", env={"PYTHONPATH": str(ROOT)})
    front.url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(front.url, front)
        yield Link(up, front, FrontControl(front.url), layers, "library/big:1.0")
    finally:
        front.stop()


def write_config(
    tmp_path: Path, link: Link, mirror_url: str, cold_blobs: str, cap: str | None = None
) -> Path:
    path = tmp_path / "warmer.toml"
    path.write_text(f"""
[database]
url = "sqlite:///{tmp_path / "warmer.db"}"
[upstreams.hub]
url = "{link.front.url}"
aliases = ["docker.io"]
ratelimit_reserve = 0
[run]
retries = 1
[mirrors.central]
url = "{mirror_url}"
parent = "hub"
cold_blobs = "{cold_blobs}"
[mirrors.central.link]
concurrency = 4
{f'bandwidth = "{cap}"' if cap else ""}
[regions.r]
mirrors = ["central"]
""")
    return path


def warm(config: Path, image: str) -> tuple[dict[str, Any], str]:
    result = CliRunner().invoke(
        cli, ["--config", str(config), "run", "--region", "r", "--json", image]
    )
    assert result.exit_code == 0, result.output + (result.stderr or "")
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary, result.stderr


def run_items(tmp_path: Path) -> list[Any]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'warmer.db'}")
    run_id = ledger.recent_runs(1)[0].id
    assert run_id is not None
    return ledger.items(run_id)


def served_from_mirror(url: str, repository: str, digests: dict[str, int]) -> dict[str, bool]:
    """Each blob read whole from the mirror and hashed: whether it came from its storage."""
    out = {}
    with httpx.Client(timeout=30) as http:
        for digest in digests:
            resp = http.get(f"{url}/v2/{repository}/blobs/{digest}")
            assert resp.status_code == 200, digest
            assert digest_of(resp.content) == digest
            out[digest] = served_from_storage(resp.headers)
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("mode", "cap"), [("stored", None), ("stored", "8MB/s"), ("relay", None)])
def test_a_stored_read_has_the_parent_carry_a_large_blob_once(
    mode: str, cap: str | None, link: Link, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # Paced (a cap): the asks follow the pacer's prediction of the store's end, and the
    # waits hold no slot; unpaced: the lane's guess, the slot held throughout.
    mirror = registry_factory(f"cold-{mode}", parent_url=link.front.url)
    config = write_config(tmp_path, link, mirror.url, mode, cap)
    link.control.reset()
    summary, _ = warm(config, link.image)
    assert summary["failed"] == 0 and summary["done"] >= 5
    stored = summary["stored_reads"]
    if mode == "stored":  # the two large layers, neither read from the relay
        assert stored["read"] == 2 and stored["fallbacks"] == 0 and stored["asks"] >= 2
    else:
        assert stored == {"read": 0, "asks": 0, "fallbacks": 0}
    stats = link.control.stats()
    for digest, size in link.layers.items():
        served = stats["blobs"][digest]["bytes_served"]
        if mode == "relay" or size < STORED_MIN:
            assert served == 2 * size, (digest, size, served)  # the store and our read
        else:
            # Once, and what the mirror relayed of the dropped copy before it noticed.
            assert size <= served <= size + DROP_TAIL, (digest, size, served)
            assert served < 2 * size
    items = run_items(tmp_path)
    assert {i.state for i in items} == {"done"}
    # The mirror holds what the ledger says, and serves it with its parent gone.
    link.front.stop()
    held = served_from_mirror(mirror.url, "library/big", link.layers)
    assert all(held.values()), held


class HidesStorage(LoopbackServer):
    """A front before a real mirror that strips the headers by which distribution's answers
    from storage are told apart (a mirror whose answers give no such sign, configured as
    ``kind = "distribution"``): every answer looks relayed. A fault no real distribution
    mirror produces, so it is a loopback server."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.blob_gets = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "/blobs/" in request.path:
            self.blob_gets += 1
        accept = {"Accept": request.headers.get("Accept", "*/*")}
        async with (
            ClientSession() as http,
            http.request(
                request.method, self.target + request.path_qs, headers=accept,
                allow_redirects=False,
            ) as resp,
        ):  # fmt: skip
            headers = {
                k: v for k, v in resp.headers.items()
                if k.lower() not in ("accept-ranges", "cache-control", "content-length",
                                     "transfer-encoding", "connection", "last-modified")
            }  # fmt: skip
            out = web.StreamResponse(status=resp.status, headers=headers)
            await out.prepare(request)
            async for chunk in resp.content.iter_chunked(1 << 16):
                await out.write(chunk)
            await out.write_eof()
            return out


@pytest.mark.timeout(180)
def test_a_mirror_that_never_looks_stored_gets_its_relays_read(
    link: Link,
    registry_factory: RegistryFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(coldread, "ASKS", 3)  # fewer asks before the relay is read: a short test
    mirror = registry_factory("cold-hidden", parent_url=link.front.url)
    with HidesStorage(mirror.url) as hiding:
        config = write_config(tmp_path, link, hiding.url, "stored")
        summary, log = warm(config, link.image)
    assert summary["failed"] == 0
    assert summary["stored_reads"] == {"read": 0, "asks": 6, "fallbacks": 2}
    items = run_items(tmp_path)
    assert {i.state for i in items} == {"done"}  # read and verified from the relay
    assert log.count("after 3 asks: reading the relayed copy") == 2, log
    assert log.count("does not seem to store a blob whose relayed copy was dropped") == 1
    # Per large blob: the trigger, 3 asks and the read; the small ones: one read each.
    assert hiding.blob_gets == 2 * 5 + (len(link.layers) - 2)
    got = served_from_mirror(mirror.url, "library/big", link.layers)
    assert all(got.values())  # the real mirror had stored them all along
