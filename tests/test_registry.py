"""The registry client against real registries (docker-registry on 127.0.0.1), and against a
small aiohttp server on a real loopback socket for faults a real registry cannot produce."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from warmer.oci.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Platform,
    sha256_digest,
)
from warmer.oci.ratelimit import RateLimit, parse_ratelimit
from warmer.oci.registry import (
    DigestMismatch,
    NoMatchingPlatform,
    NotFound,
    RateLimited,
    RegistryClient,
    TransientError,
    Unreachable,
    UnsupportedManifest,
)
from warmer.sandbox.procs import Proc, free_port

Serve = Callable[[web.Application], Awaitable[str]]


def blob(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def push_image(
    c: RegistryClient,
    repo: str,
    layers: list[bytes],
    *,
    arch: str = "amd64",
    variant: str | None = None,
    tag: str | None = None,
    docker: bool = False,
) -> tuple[str, int]:
    """Push config, layers and a manifest; returns (digest, size) of the manifest."""
    platform = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    cfg = await c.push_blob(repo, json.dumps({**platform, "rootfs": {"type": "layers"}}).encode())
    pushed = [await c.push_blob(repo, data) for data in layers]
    mt, ct, lt = (
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        if docker
        else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    )
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": ct, "digest": cfg.digest, "size": cfg.size},
            "layers": [{"mediaType": lt, "digest": d.digest, "size": d.size} for d in pushed],
        }
    ).encode()
    digest = await c.put_manifest(repo, tag or sha256_digest(body), body, mt)
    return digest, len(body)


async def push_index(
    c: RegistryClient,
    repo: str,
    tag: str,
    entries: list[tuple[str, int, Platform]],
    docker: bool = False,
) -> tuple[str, bytes]:
    mt = DOCKER_LIST if docker else OCI_INDEX
    child = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifests: list[dict[str, Any]] = []
    for digest, size, p in entries:
        plat = {"os": p.os, "architecture": p.architecture}
        if p.variant:
            plat["variant"] = p.variant
        manifests.append({"mediaType": child, "digest": digest, "size": size, "platform": plat})
    body = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}).encode()
    return await c.put_manifest(repo, tag, body, mt), body


@pytest.fixture
async def client(plain_registry: Proc) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(plain_registry.url, backoff=0.01, retries=2) as c:
        yield c


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp apps on 127.0.0.1 (real sockets); returns their base URLs."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


# --- pure: rate-limit headers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {
                "RateLimit-Limit": "100;w=21600",
                "RateLimit-Remaining": "76;w=21600",
                "Docker-RateLimit-Source": "203.0.113.7",
            },
            RateLimit(100, 21600, 76, 21600, "203.0.113.7"),
        ),
        (
            {"ratelimit-limit": "200", "ratelimit-remaining": "0"},
            RateLimit(200, None, 0, None, None),
        ),
        ({"ratelimit-remaining": "5;w=60"}, RateLimit(None, None, 5, 60, None)),
        ({"ratelimit-limit": "100;w=21600, 100;w=21600"}, RateLimit(100, 21600, None, None, None)),
        ({"ratelimit-limit": "garbage"}, None),
        ({"content-type": "text/plain"}, None),
    ],
)
def test_parse_ratelimit(headers: dict[str, str], expected: RateLimit | None) -> None:
    assert parse_ratelimit(headers) == expected


# --- real registry -------------------------------------------------------------------------


async def test_push_monolithic_and_chunked_then_fetch_verified(client: RegistryClient) -> None:
    mono = blob("mono", 40_000)
    chunked = blob("chunked", 100_003)
    d1 = await client.push_blob("t/push", mono)
    d2 = await client.push_blob("t/push", chunked, chunk_size=16_384)
    assert await client.blob_size("t/push", d1.digest) == 40_000
    assert await client.blob_size("t/push", d2.digest) == 100_003
    assert await client.blob_size("t/push", sha256_digest(b"never pushed")) is None

    got = bytearray()
    seen: list[int] = []

    async def on_bytes(n: int) -> None:
        seen.append(n)

    n = await client.fetch_blob(
        "t/push", d2.digest, sink=got.extend, on_bytes=on_bytes, chunk_size=10_000
    )
    assert n == 100_003 and bytes(got) == chunked
    assert sum(seen) == 100_003 and len(seen) >= 10
    # Pushing the same bytes again is a no-op that returns the same descriptor.
    assert (await client.push_blob("t/push", mono)).digest == d1.digest


async def test_mount_across_repositories(client: RegistryClient) -> None:
    data = blob("mount", 5_000)
    d = await client.push_blob("t/mount-src", data)
    assert await client.blob_size("t/mount-dst", d.digest) is None
    assert await client.mount_blob("t/mount-dst", d.digest, "t/mount-src") is True
    assert await client.blob_size("t/mount-dst", d.digest) == 5_000
    # A digest the source does not hold is not mounted (the upload session is cancelled).
    assert await client.mount_blob("t/mount-dst", sha256_digest(b"nope"), "t/mount-src") is False


async def test_single_manifest_by_tag_and_digest(client: RegistryClient) -> None:
    digest, size = await push_image(client, "t/single", [blob("s1", 3000)], tag="v1")
    head = await client.head_manifest("t/single", "v1")
    assert (head.digest, head.size, head.media_type) == (digest, size, OCI_MANIFEST)
    assert (await client.head_manifest("t/single", digest)).digest == digest
    by_tag = await client.get_manifest("t/single", "v1")
    by_digest = await client.get_manifest("t/single", digest)
    assert by_tag.digest == by_digest.digest == digest == sha256_digest(by_tag.body)
    assert not by_tag.is_index and len(by_tag.layers) == 1 and by_tag.config is not None
    tree = await client.resolve("t/single", "v1", [])
    assert tree.index is None and len(tree.images) == 1
    assert tree.total_size() == size + sum(d.size for d in tree.blobs())
    assert await client.list_tags("t/single") == ["v1"]
    with pytest.raises(NotFound, match="t/single:v2"):
        await client.get_manifest("t/single", "v2")
    with pytest.raises(NotFound):
        await client.head_manifest("t/single", "v2")


async def test_list_tags_paginates(client: RegistryClient) -> None:
    digest, _ = await push_image(client, "t/tags", [blob("tg", 100)])
    body = (await client.get_manifest("t/tags", digest)).body
    names = [f"v{i:02d}" for i in range(7)]
    for name in names:
        await client.put_manifest("t/tags", name, body, OCI_MANIFEST)
    assert sorted(await client.list_tags("t/tags", page_size=3)) == names


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
async def test_index_resolves_to_selected_platforms(client: RegistryClient, docker: bool) -> None:
    repo = f"t/multi-{'docker' if docker else 'oci'}"
    base = blob("shared-base", 20_000)  # shared by every platform: counted once
    plats = [Platform.parse(p) for p in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")]
    entries = []
    for p in plats:
        d, s = await push_image(
            client,
            repo,
            [base, blob(str(p), 1000)],
            arch=p.architecture,
            variant=p.variant,
            docker=docker,
        )
        entries.append((d, s, p))
    index_digest, index_body = await push_index(client, repo, "latest", entries, docker)

    tree = await client.resolve(repo, "latest", [])  # default linux/amd64
    assert tree.digest == index_digest and tree.index is not None
    assert tree.media_type == (DOCKER_LIST if docker else OCI_INDEX)
    assert [m.digest for _, m in tree.images] == [entries[0][0]]

    tree = await client.resolve(repo, "latest", [Platform.parse("linux/arm64"), plats[0]])
    assert [m.digest for _, m in tree.images] == [entries[1][0], entries[0][0]]
    assert tree.manifest_digests() == [
        (index_digest, len(index_body)),
        (entries[1][0], entries[1][1]),
        (entries[0][0], entries[0][1]),
    ]
    digests = [d.digest for d in tree.blobs()]
    assert len(digests) == len(set(digests)) == 5  # 2 configs + shared base + 2 own layers
    assert tree.total_size() == sum(s for _, s in tree.manifest_digests()) + sum(
        d.size for d in tree.blobs()
    )

    with pytest.raises(NoMatchingPlatform, match=r"linux/s390x.*linux/amd64"):
        await client.resolve(repo, "latest", [Platform.parse("linux/s390x")])


async def test_proxy_registry_serves_pulled_content(
    client: RegistryClient, plain_registry: Proc, registry_factory: Any
) -> None:
    layer = blob("proxied", 30_000)
    digest, _ = await push_image(client, "t/proxied", [layer], tag="1.0")
    mirror = registry_factory("m", parent_url=plain_registry.url)
    async with RegistryClient(mirror.url, backoff=0.01) as m:
        tree = await m.resolve("t/proxied", "1.0", [])
        assert tree.digest == digest
        got = bytearray()
        layer_desc = tree.images[0][1].layers[0]
        assert await m.fetch_blob("t/proxied", layer_desc.digest, sink=got.extend) == 30_000
        assert bytes(got) == layer


async def test_unreachable_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with RegistryClient(url, retries=1, backoff=0.01) as c:
        with pytest.raises(Unreachable, match=r"cannot reach http://127\.0\.0\.1:\d+/v2/"):
            await c.ping()


# --- faults from a loopback aiohttp server ---------------------------------------------------


async def test_corrupt_blob_is_a_digest_mismatch_not_retried(serve: Serve) -> None:
    data = blob("good", 4000)
    digest = sha256_digest(data)
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(body=data[:-1] + b"X")

    app = web.Application()
    app.router.add_get("/v2/t/bad/blobs/{digest}", handler)
    async with RegistryClient(await serve(app), backoff=0.01) as c:
        with pytest.raises(DigestMismatch) as err:
            await c.fetch_blob("t/bad", digest)
    assert err.value.expected == digest and err.value.actual == sha256_digest(data[:-1] + b"X")
    assert len(calls) == 1


async def test_5xx_is_retried_then_succeeds_or_gives_up(serve: Serve) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) <= 2:
            return web.Response(status=503, text="busy")
        return web.Response(body=body, content_type=OCI_INDEX)

    app = web.Application()
    app.router.add_get("/v2/t/flaky/manifests/{ref}", handler)
    url = await serve(app)
    async with RegistryClient(url, backoff=0.01, retries=4) as c:
        m = await c.get_manifest("t/flaky", "latest")
    assert m.is_index and m.digest == sha256_digest(body) and len(calls) == 3
    calls.clear()
    async with RegistryClient(url, backoff=0.01, retries=1) as c:
        with pytest.raises(TransientError, match=r"HTTP 503 after 2 attempts"):
            await c.get_manifest("t/flaky", "latest")
    assert len(calls) == 2


async def test_429_surfaces_retry_after_and_ratelimit(serve: Serve) -> None:
    calls: list[int] = []
    limits = {"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "0;w=21600"}

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response(
            {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
            status=429,
            headers={"Retry-After": "30", **limits},
        )

    app = web.Application()
    app.router.add_get("/v2/t/limited/manifests/{ref}", handler)
    async with RegistryClient(await serve(app), backoff=0.01) as c:
        with pytest.raises(RateLimited, match="TOOMANYREQUESTS") as err:
            await c.get_manifest("t/limited", "latest")
        assert c.last_ratelimit == RateLimit(100, 21600, 0, 21600, None)
    assert err.value.retry_after == 30.0 and len(calls) == 1


async def test_manifest_checks_and_schema1_refused(serve: Serve) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    schema1 = json.dumps({"schemaVersion": 1, "name": "t/x", "tag": "old"}).encode()

    async def handler(request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if ref == "old":
            return web.Response(body=schema1, headers={"Content-Type": DOCKER_SCHEMA1_SIGNED})
        if ref == "oldplain":
            return web.Response(body=schema1, content_type="application/json")
        headers = {"Docker-Content-Digest": sha256_digest(b"other"), "Content-Type": OCI_INDEX}
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v2/t/x/manifests/{ref}", handler)
    async with RegistryClient(await serve(app), backoff=0.01) as c:
        with pytest.raises(UnsupportedManifest, match="schema 1"):
            await c.get_manifest("t/x", "old")
        with pytest.raises(UnsupportedManifest, match="schema 1"):
            await c.get_manifest("t/x", "oldplain")
        with pytest.raises(DigestMismatch):
            await c.get_manifest("t/x", "lying")
        with pytest.raises(DigestMismatch):
            await c.get_manifest("t/x", sha256_digest(b"asked for something else"))


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "no-range"])
async def test_reset_mid_blob_resumes_without_duplicates(serve: Serve, honour_range: bool) -> None:
    data = blob("reset", 200_000)
    digest = sha256_digest(data)
    ranges: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            resp = web.StreamResponse()
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[:70_000])
            assert request.transport is not None
            request.transport.close()  # a reset mid-blob
            return resp
        rng = request.headers.get("Range")
        if honour_range and rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=data[start:],
                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
            )
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/v2/t/reset/blobs/{digest}", handler)
    got = bytearray()
    async with RegistryClient(await serve(app), backoff=0.01) as c:
        assert await c.fetch_blob("t/reset", digest, sink=got.extend, chunk_size=8192) == len(data)
    assert bytes(got) == data
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")


async def test_redirect_to_other_host_drops_authorization(serve: Serve) -> None:
    from warmer.oci.auth import Credentials

    data = blob("redirected", 9000)
    digest = sha256_digest(data)
    storage_auth: list[str | None] = []
    registry_auth: list[str | None] = []

    async def storage(request: web.Request) -> web.Response:
        storage_auth.append(request.headers.get("Authorization"))
        return web.Response(body=data)

    storage_url = await serve(_app("/blobstore/{name}", storage))

    async def registry(request: web.Request) -> web.Response:
        registry_auth.append(request.headers.get("Authorization"))
        if "Authorization" not in request.headers:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="t"'})
        raise web.HTTPTemporaryRedirect(f"{storage_url}/blobstore/x?X-Amz-Signature=s3cr3t")

    creds = Credentials.basic("bob", "hunter2-secret")
    async with RegistryClient(
        await serve(_app("/v2/t/r/blobs/{d}", registry)), credentials=creds, backoff=0.01
    ) as c:
        assert await c.fetch_blob("t/r", digest) == len(data)
    assert registry_auth[0] is None and (registry_auth[-1] or "").startswith("Basic ")
    assert storage_auth == [None]


def _app(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.Application:
    app = web.Application()
    app.router.add_get(path, handler)
    return app


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # no host credentials


def test_inspect_cli_text_and_json(plain_registry: Proc, cli_env: None) -> None:
    import asyncio

    from click.testing import CliRunner

    from warmer.cli.inspect import inspect_command

    async def seed() -> tuple[str, list[tuple[str, int, Platform]], int]:
        async with RegistryClient(plain_registry.url) as c:
            entries = []
            for p in (Platform.parse("linux/amd64"), Platform.parse("linux/arm64/v8")):
                dg, s = await push_image(
                    c,
                    "t/cli",
                    [blob("cli-base", 3000), blob(f"cli-{p}", 2048)],
                    arch=p.architecture,
                    variant=p.variant,
                )
                entries.append((dg, s, p))
            digest, _ = await push_index(c, "t/cli", "1.0", entries)
            tree = await c.resolve("t/cli", "1.0", [e[2] for e in entries])
            return digest, entries, tree.total_size()

    digest, entries, total = asyncio.run(seed())
    host = plain_registry.url.removeprefix("http://")
    runner = CliRunner()
    out = runner.invoke(
        inspect_command,
        [f"{host}/t/cli:1.0", "--via", plain_registry.url, "--platform", "linux/arm64"],
    )
    assert out.exit_code == 0, out.output
    assert digest in out.output and entries[1][0] in out.output and entries[0][0] not in out.output
    assert "linux/amd64, linux/arm64/v8" in out.output and "layer" in out.output
    assert sha256_digest(blob("cli-base", 3000)) in out.output

    out = runner.invoke(
        inspect_command,
        [
            f"{host}/t/cli:1.0",
            "--via",
            plain_registry.url,
            "--json",
            "--platform",
            "linux/amd64",
            "--platform",
            "linux/arm64/v8",
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["digest"] == digest and data["total_size"] == total
    assert [i["digest"] for i in data["images"]] == [e[0] for e in entries]
    assert data["images"][0]["layers"][1]["size"] == 2048 and data["ratelimit"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["UPPER/Case:tag:bad"], 2, "invalid reference"),
        (["ubuntu", "--platform", "linux"], 2, "--platform"),
        (["ubuntu", "--via", "ftp://x"], 2, "--via"),
        (["ubuntu", "--via", "http://127.0.0.1:{port}", "--retries", "0"], 1, "cannot reach"),
    ],
)
def test_inspect_cli_errors_are_one_line(
    args: list[str], code: int, message: str, cli_env: None
) -> None:
    from click.testing import CliRunner

    from warmer.cli.inspect import inspect_command

    args = [a.replace("{port}", str(free_port())) for a in args]
    out = CliRunner().invoke(inspect_command, args)
    assert out.exit_code == code, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.output


# --- property-based: headers from a registry never raise anything unexpected --------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from warmer.oci.auth import check_challenge, parse_www_authenticate  # noqa: E402
from warmer.oci.transport import MAX_RETRY_AFTER, _retry_after  # noqa: E402
from warmer.oci.validate import InvalidValue  # noqa: E402

_HEADER_TEXT = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[0-9]{1,30}(;w=[0-9]{1,30})?(,.*)?", fullmatch=True),
    st.from_regex(r'(Bearer|Basic) realm="[^"]{0,40}"(,[a-z]{1,8}="[^"]{0,40}")*', fullmatch=True),
)


@settings(max_examples=400, deadline=None)
@given(_HEADER_TEXT, _HEADER_TEXT, _HEADER_TEXT)
def test_ratelimit_headers_never_raise(limit: str, remaining: str, source: str) -> None:
    got = parse_ratelimit(
        {
            "ratelimit-limit": limit,
            "ratelimit-remaining": remaining,
            "docker-ratelimit-source": source,
        }
    )
    if got is not None:
        text = str(got)
        assert text.isprintable() and len(text) < 200


@settings(max_examples=400, deadline=None)
@given(_HEADER_TEXT)
def test_retry_after_is_none_or_bounded(value: str) -> None:
    got = _retry_after(value)
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER


@settings(max_examples=400, deadline=None)
@given(_HEADER_TEXT, st.booleans())
def test_challenges_parse_and_check_without_surprises(value: str, https: bool) -> None:
    for challenge in parse_www_authenticate(value):
        try:
            check_challenge(challenge, https=https)
        except InvalidValue as exc:
            assert "\n" not in str(exc)
            continue
        if challenge.scheme == "bearer" and challenge.realm is not None:
            assert challenge.realm.startswith(("http://", "https://", "HTTP://", "HTTPS://"))
            assert challenge.realm.isprintable() and " " not in challenge.realm


def test_challenge_checks() -> None:
    (ok,) = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull"'
    )
    assert check_challenge(ok, https=True) is ok
    for header, https in [
        ('Bearer realm="http://auth.example/token"', True),  # credentials in the clear
        ('Bearer realm="file:///etc/passwd"', False),
        ('Bearer realm="https://a/t",service="a\\x07b"', False),
        ('Bearer realm="https://a/t",scope="' + "s" * 2000 + '"', False),
    ]:
        (challenge,) = parse_www_authenticate(header.replace("\\x07", "\x07"))
        with pytest.raises(InvalidValue):
            check_challenge(challenge, https=https)
