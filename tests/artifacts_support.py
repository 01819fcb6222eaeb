"""Shared helpers of the artifact tests (tests/test_artifacts.py, test_artifacts_upkeep.py,
test_bundle.py): small images pushed to a real registry, an upstream -> central -> regional
chain of real ``docker-registry`` processes with its config, and a cosign client's view of
a registry (the signature read by tag and verified with the public key), so every test
checks signatures the way a cosign client finds them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from warmer.cli.main import cli
from warmer.oci.cosign import (
    SIGNATURE_ANNOTATION,
    SignatureError,
    artifact_tag,
    check_signature,
    fallback_tag,
    load_public_key,
)
from warmer.oci.manifest import MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from warmer.oci.registry import RegistryClient
from warmer.sandbox.procs import Proc
from warmer.store.ledger import Ledger

RegistryFactory = Callable[..., Proc]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Pushed:
    repository: str
    tag: str
    digest: str  # what the tag names (an index, or a single manifest)
    media_type: str
    size: int
    platforms: dict[str, str] = field(default_factory=dict)  # platform -> manifest digest


async def push_image(
    client: RegistryClient, repository: str, tag: str, arches: list[str]
) -> Pushed:
    """A small image (one random layer per platform); an index when several arches."""
    children: dict[str, tuple[bytes, str]] = {}
    for arch in arches:
        layer = os.urandom(3000)
        config = dumps({"architecture": arch, "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}})  # fmt: skip
        await client.push_blob(repository, layer)
        await client.push_blob(repository, config)
        manifest = dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
        })  # fmt: skip
        children[arch] = (manifest, digest_of(manifest))
    if len(arches) == 1:
        body, digest = children[arches[0]]
        await client.put_manifest(repository, tag, body, OCI_MANIFEST)
        return Pushed(
            repository, tag, digest, OCI_MANIFEST, len(body), {"linux/" + arches[0]: digest}
        )
    for body, digest in children.values():
        await client.put_manifest(repository, digest, body, OCI_MANIFEST)
    index = dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b),
             "platform": {"os": "linux", "architecture": arch}}
            for arch, (b, d) in children.items()
        ],
    })  # fmt: skip
    await client.put_manifest(repository, tag, index, OCI_INDEX)
    platforms = {"linux/" + arch: d for arch, (_, d) in children.items()}
    return Pushed(repository, tag, digest_of(index), OCI_INDEX, len(index), platforms)


@dataclass
class Chain:
    """upstream -> central -> one regional mirror per region, a config and a ledger."""

    tmp: Path
    up: Proc
    central: Proc
    regional: dict[str, Proc]
    artifacts: dict[str, list[str]]  # region -> TOML lines of its [artifacts] table

    def write(self) -> Path:
        lines = [
            "[database]", f'url = "sqlite:///{self.tmp / "warmer.db"}"',
            "[upstreams.hub]", f'url = "{self.up.url}"', 'aliases = ["docker.io"]',
            "[run]", "retries = 1", 'timeout = "20s"',
            "[mirrors.central]", f'url = "{self.central.url}"', 'parent = "hub"',
        ]  # fmt: skip
        for region, proc in self.regional.items():
            lines += [f"[mirrors.{region}]", f'url = "{proc.url}"', 'parent = "central"']
        for region in self.regional:
            lines += [f"[regions.{region}]", f'mirrors = ["{region}"]']
            if self.artifacts.get(region):
                lines += [f"[regions.{region}.artifacts]", *self.artifacts[region]]
        path = self.tmp / "warmer.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def warmer(self, *args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(self.write()), *args])
        assert result.exit_code == code, result.output + (result.stderr or "")
        return result

    def push(self, work: Callable[[RegistryClient], Any]) -> Any:
        async def go() -> Any:
            async with RegistryClient(self.up.url) as client:
                return await work(client)

        return asyncio.run(go())

    def stop_upstream_and_central(self) -> None:
        self.central.stop()
        self.up.stop()
        assert not self.central.alive() and not self.up.alive()

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.tmp / 'warmer.db'}")


def start_chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    """The body of a ``chain`` fixture: upstream, central, regional ``eu`` and ``us``."""
    up = registry_factory("up")
    central = registry_factory("central", parent_url=up.url)
    eu = registry_factory("eu", parent_url=central.url)
    us = registry_factory("us", parent_url=central.url)
    c = Chain(tmp_path, up, central, {"eu": eu, "us": us}, {})
    try:
        yield c
    finally:
        for proc in (us, eu, central, up):
            proc.stop()


# --- a client's view: what cosign reads from a registry ------------------------------------


def get(http: httpx.Client, url: str, accept: str = "") -> httpx.Response:
    headers = {"Accept": accept or MANIFEST_ACCEPT}
    return http.get(url, headers=headers, timeout=20)


def cosign_verify(
    url: str, image: str, tag: str, public_pem: bytes, identity: str | None = None
) -> str:
    """What ``cosign verify --key`` reads, from ``url`` alone: the digest the tag names,
    the ``.sig`` manifest by tag, each payload blob; raises unless one signature verifies
    for that digest and repository (``identity``: the repository the signature names, when
    ``image`` is a copy under another name). Returns the digest."""
    with httpx.Client() as http:
        top = get(http, f"{url}/v2/{image}/manifests/{tag}")
        assert top.status_code == 200, top.text
        digest = digest_of(top.content)
        sig = get(http, f"{url}/v2/{image}/manifests/{artifact_tag(digest)}")
        if sig.status_code != 200:
            raise SignatureError(f"no signature at {url}: HTTP {sig.status_code}")
        key = load_public_key(public_pem)
        for layer in sig.json()["layers"]:
            blob = http.get(f"{url}/v2/{image}/blobs/{layer['digest']}", timeout=20)
            assert blob.status_code == 200 and digest_of(blob.content) == layer["digest"]
            check_signature(
                blob.content, layer["annotations"][SIGNATURE_ANNOTATION], [key], digest, identity or image,
                registries={"docker.io"},
            )  # fmt: skip
        return digest


def referrers(url: str, image: str, digest: str) -> list[dict[str, Any]]:
    """The referrers of ``digest`` as an OCI 1.1 client finds them: the API, else (404) the
    fallback tag's index."""
    with httpx.Client() as http:
        api = get(http, f"{url}/v2/{image}/referrers/{digest}", OCI_INDEX)
        if api.status_code == 200:
            return list(api.json()["manifests"])
        assert api.status_code == 404  # distribution 2.8: no referrers API
        index = get(http, f"{url}/v2/{image}/manifests/{fallback_tag(digest)}")
        if index.status_code != 200:
            raise LookupError(f"no referrers index at {url}: HTTP {index.status_code}")
        return list(index.json()["manifests"])
