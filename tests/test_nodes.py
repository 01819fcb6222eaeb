"""CI-node pre-pull against a real Docker-API engine (podman's service on a unix socket)
whose docker.io pulls go through a pull-through mirror of a seeded upstream."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import pytest
from click.testing import CliRunner, Result
from conftest import PodmanEngine, PodmanFactory

from warmer import nodes
from warmer.cli.main import cli
from warmer.oci.reference import parse
from warmer.oci.registry import RegistryClient
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import run_sync

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Built:
    digest: str
    media_type: str
    body: bytes
    blobs: list[bytes]


def tiny_image(text: str, arch: str = "amd64", docker_format: bool = False) -> Built:
    """A real (gzip tar) one-file image, so an engine can unpack it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha(raw.getvalue())]},
        }
    ).encode()
    media = DOCKER_MANIFEST if docker_format else OCI_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json"
                if docker_format
                else "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    if docker_format
                    else "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return Built(_sha(manifest), media, manifest, [layer, config])


async def push(url: str, repository: str, tag: str, *images: Built, index: bool = False) -> str:
    async with RegistryClient(url) as client:
        for image in images:
            for blob in image.blobs:
                await client.push_blob(repository, blob)
            await client.put_manifest(repository, image.digest, image.body, image.media_type)
        if not index:
            return await client.put_manifest(repository, tag, images[0].body, images[0].media_type)
        entries = [
            {
                "mediaType": i.media_type,
                "digest": i.digest,
                "size": len(i.body),
                "platform": {"os": "linux", "architecture": arch},
            }
            for i, arch in zip(images, ["amd64", "arm64"], strict=False)
        ]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        return await client.put_manifest(repository, tag, body.encode(), OCI_INDEX)


@dataclass
class Setup:
    upstream: Proc
    mirror: Proc
    engine: PodmanEngine
    digests: dict[str, str]


@pytest.fixture(scope="module")
def setup(registry_factory: Callable[..., Proc], podman_factory: PodmanFactory) -> Setup:
    upstream = registry_factory("nodes-upstream")
    digests = {
        "hello:1.0": run_sync(
            push(upstream.url, "library/hello", "1.0", tiny_image("one\n", docker_format=True))
        ),
        "multi:1": run_sync(
            push(
                upstream.url,
                "library/multi",
                "1",
                tiny_image("amd64\n"),
                tiny_image("arm64\n", "arm64"),
                index=True,
            )
        ),
    }
    mirror = registry_factory("nodes-mirror", parent_url=upstream.url)
    engine = podman_factory(mirror.url.removeprefix("http://"))
    return Setup(upstream, mirror, engine, digests)


def warmer(*args: str) -> Result:
    return CliRunner(env={"WARMER_CONFIG": ""}).invoke(cli, list(args))


def _lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


def repo_digests(engine: PodmanEngine, name: str) -> list[str]:
    client = docker.DockerClient(base_url=engine.url, timeout=30)
    try:
        return [str(d) for d in client.images.get(name).attrs.get("RepoDigests") or []]
    finally:
        client.close()


def test_prepull_pulls_through_the_mirror_then_reports_present(setup: Setup) -> None:
    bogus = "unix:///nonexistent/docker.sock"
    args = ["nodes", "prepull", "--node", setup.engine.url, "--node", bogus]
    result = warmer(*args, "--image", "hello:1.0", "--image", "multi:1", "--json")
    assert result.exit_code == 1  # the bogus node failed; the real one did its work
    real, dead = _lines(result)
    assert real["node"] == setup.engine.url and dead["node"] == bogus
    assert real["pulled"] == ["docker.io/library/hello:1.0", "docker.io/library/multi:1"]
    assert real["failed"] == [] and real["error"] is None
    assert dead["error"] and dead["pulled"] == []
    assert f"docker.io/library/hello@{setup.digests['hello:1.0']}" in repo_digests(
        setup.engine, "docker.io/library/hello:1.0"
    )
    assert f"docker.io/library/multi@{setup.digests['multi:1']}" in repo_digests(
        setup.engine, "docker.io/library/multi:1"
    )

    # the engine fetched the layer from the mirror (its access log names podman's client)
    layer = _sha(tiny_image("one\n", docker_format=True).blobs[0])
    fetched = f'"GET /v2/library/hello/blobs/{layer} HTTP/1.1" 200'
    log_lines = setup.mirror.log.read_text().splitlines()
    assert any(fetched in line and "containers/" in line for line in log_lines)

    again = warmer(
        "nodes",
        "prepull",
        "--node",
        setup.engine.url,
        "--image",
        "hello:1.0",
        "--image",
        "multi:1",
        "--json",
    )
    assert again.exit_code == 0, again.output
    (report,) = _lines(again)
    assert report["pulled"] == []
    assert report["present"] == ["docker.io/library/hello:1.0", "docker.io/library/multi:1"]


def test_moved_tag_is_pulled_again_and_failures_are_per_image(setup: Setup) -> None:
    new = run_sync(push(setup.upstream.url, "library/hello", "moved", tiny_image("two\n")))
    first = nodes.prepull([setup.engine.url], [parse("hello:moved")])[0]
    assert first.pulled == ["docker.io/library/hello:moved"]
    newer = run_sync(push(setup.upstream.url, "library/hello", "moved", tiny_image("three\n")))
    assert newer != new
    (report,) = nodes.prepull(
        [setup.engine.url], [parse("hello:moved"), parse("nosuch/image:1"), parse("multi:1")]
    )
    assert report.pulled == ["docker.io/library/hello:moved"]
    assert report.present == ["docker.io/library/multi:1"]
    assert [f.image for f in report.failed] == ["docker.io/nosuch/image:1"]
    assert f"docker.io/library/hello@{newer}" in repo_digests(
        setup.engine, "docker.io/library/hello:moved"
    )


def test_prepull_by_digest_and_status(setup: Setup) -> None:
    by_digest = f"hello@{setup.digests['hello:1.0']}"
    (report,) = nodes.prepull([setup.engine.url], [parse(by_digest)])
    assert report.error is None and not report.failed
    result = warmer(
        "nodes", "status", "--node", setup.engine.url,
        "--image", "hello:1.0", "--image", "library/absent:1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (status,) = _lines(result)
    held = {i["image"]: i for i in status["images"]}
    assert held["docker.io/library/hello:1.0"]["present"] is True
    assert (
        f"docker.io/library/hello@{setup.digests['hello:1.0']}"
        in held["docker.io/library/hello:1.0"]["repo_digests"]
    )
    assert held["docker.io/library/absent:1"]["present"] is False
    text = warmer("nodes", "status", "--node", setup.engine.url, "--image", "hello:1.0")
    assert "holds 1 of 1" in text.output
