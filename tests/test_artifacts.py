"""Signatures, SBOMs and referrers warmed with their images, on real registries.

Each test starts its own upstream (a writable ``docker-registry``), a central mirror
proxying it and regional mirrors proxying central; it pushes small images to the upstream
and signs them in cosign's classic format (``sha256-<hex>.sig``), or attaches an SBOM as an
OCI 1.1 referrer listed in the fallback tag (distribution 2.8 has no referrers API). After
``warmer run``, the upstream and central are *stopped*, and the regional mirror is read the
way a cosign client reads it: manifest by tag, then the signature by its tag, the payload
blob, and the signature verified with the public key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from artifacts_support import (
    Chain,
    Pushed,
    RegistryFactory,
    cosign_verify,
    referrers,
    start_chain,
)
from artifacts_support import digest_of as _digest
from artifacts_support import dumps as _dumps
from artifacts_support import get as _get
from artifacts_support import push_image as _push_image

from warmer.config import ArtifactsConfig, VerifyConfig
from warmer.oci.cosign import (
    SIGNATURE_ANNOTATION,
    SignatureError,
    Signer,
    artifact_tag,
    check_signature,
    fallback_tag,
    load_public_key,
)
from warmer.oci.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from warmer.oci.registry import RegistryClient
from warmer.sandbox.catalogue import build
from warmer.sandbox.procs import free_port
from warmer.sandbox.seed import (
    push_referrer,
    push_signature,
    run_sync,
    sandbox_signer,
    seed,
    sign_catalogue,
)
from warmer.warm.artifacts import Artifact, ArtifactPolicy, per_image, plan_blobs, summary
from warmer.warm.discover import Discovery
from warmer.warm.plan import Blob, Budget, MirrorNode, WantedImage, plan

SPDX = "application/spdx+json"


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from start_chain(registry_factory, tmp_path)


# --- 1. signatures follow their images; without artifact warming they do not ------------


@pytest.mark.timeout(240)
def test_signatures_are_read_from_the_region_with_upstream_and_central_down(chain: Chain) -> None:
    signer = Signer.generate()
    chain.artifacts = {"eu": [], "us": ['kinds = ["none"]']}  # eu: the default, signatures

    async def setup(client: RegistryClient) -> list[Pushed]:
        multi = await _push_image(client, "team/app", "v1", ["amd64", "arm64"])
        single = await _push_image(client, "team/tool", "2.0", ["amd64"])
        for image in (multi, single):
            ref = f"docker.io/{image.repository}"
            await push_signature(client, image.repository, image.digest, ref, [signer])
        # The selected platform manifest is signed too (cosign sign --recursive).
        amd64 = multi.platforms["linux/amd64"]
        await push_signature(client, "team/app", amd64, "docker.io/team/app", [signer])
        return [multi, single]

    images = chain.push(setup)
    chain.warmer("run", "--region", "eu", "team/app:v1", "team/tool:2.0")
    chain.warmer("run", "--region", "us", "team/app:v1", "team/tool:2.0")
    items = chain.ledger().items(chain.ledger().recent_runs(2)[1].id or 0)
    sig_items = [i for i in items if i.reference.endswith(".sig")]
    # Two signed image digests plus the amd64 manifest, each by tag through both tiers.
    assert len({i.digest for i in sig_items}) == 3
    assert {i.mirror for i in sig_items} == {"central", "eu"}
    chain.stop_upstream_and_central()

    pem = signer.public_pem()
    for image in images:
        got = cosign_verify(chain.regional["eu"].url, image.repository, image.tag, pem)
        assert got == image.digest
    # The platform manifest's own signature is there too.
    with httpx.Client() as http:
        amd64 = images[0].platforms["linux/amd64"]
        url = f"{chain.regional['eu'].url}/v2/team/app/manifests/{artifact_tag(amd64)}"
        assert _get(http, url).status_code == 200
    # Without artifact warming, the image is there but its signature is not.
    for image in images:
        with httpx.Client() as http:
            url = f"{chain.regional['us'].url}/v2/{image.repository}/manifests/{image.tag}"
            assert _get(http, url).status_code == 200
        with pytest.raises(SignatureError, match="no signature"):
            cosign_verify(chain.regional["us"].url, image.repository, image.tag, pem)


# --- 2. a referrer (SBOM) through the fallback tag, and the SBOM's own signature ----------


@pytest.mark.timeout(240)
def test_an_sbom_referrer_is_found_at_the_region_with_the_upstream_down(chain: Chain) -> None:
    signer = Signer.generate()
    chain.artifacts = {"eu": ['kinds = ["signatures", "sbom"]']}
    sbom = _dumps({"spdxVersion": "SPDX-2.3", "name": "team/app", "packages": []})

    async def setup(client: RegistryClient) -> tuple[Pushed, Descriptor]:
        image = await _push_image(client, "team/app", "v1", ["amd64"])
        subject = Descriptor(image.media_type, image.digest, image.size)
        ref = await push_referrer(client, "team/app", subject, SPDX, sbom)
        # A referrer's referrer: the SBOM signed in cosign's format (depth 2).
        await push_signature(client, "team/app", ref.digest, "docker.io/team/app", [signer])
        # Another artifact type the region does not warm.
        await push_referrer(client, "team/app", subject, "application/x-other", b"other")
        return image, ref

    image, ref = chain.push(setup)
    chain.warmer("run", "--region", "eu", "team/app:v1")
    chain.stop_upstream_and_central()

    url = chain.regional["eu"].url
    listed = referrers(url, "team/app", image.digest)
    spdx = [d for d in listed if d.get("artifactType") == SPDX]
    assert [d["digest"] for d in spdx] == [ref.digest]
    with httpx.Client() as http:
        manifest = _get(http, f"{url}/v2/team/app/manifests/{ref.digest}")
        assert manifest.status_code == 200
        assert manifest.json()["subject"]["digest"] == image.digest
        layer = manifest.json()["layers"][0]["digest"]
        assert http.get(f"{url}/v2/team/app/blobs/{layer}", timeout=20).content == sbom
        sig = _get(http, f"{url}/v2/team/app/manifests/{artifact_tag(ref.digest)}")
        assert sig.status_code == 200
        other = [d for d in listed if d.get("artifactType") == "application/x-other"]
        assert _get(http, f"{url}/v2/team/app/manifests/{other[0]['digest']}").status_code != 200
    payload_layer = sig.json()["layers"][0]
    with httpx.Client() as http:
        payload = http.get(f"{url}/v2/team/app/blobs/{payload_layer['digest']}").content
    check_signature(payload, payload_layer["annotations"][SIGNATURE_ANNOTATION],
                    [load_public_key(signer.public_pem())], ref.digest, "team/app")  # fmt: skip


# --- 3. a verifying policy: another key's signature is not warmed -------------------------


@pytest.mark.timeout(240)
def test_verifying_policy_leaves_out_what_another_key_signed(chain: Chain) -> None:
    trusted, other = Signer.generate(), Signer.generate("ed25519")
    key = chain.tmp / "trusted.pub"
    key.write_bytes(trusted.public_pem())
    chain.artifacts = {"eu": [f'verify = {{ keys = ["{key}"] }}']}

    async def setup(client: RegistryClient) -> list[Pushed]:
        good = await _push_image(client, "team/good", "v1", ["amd64"])
        bad = await _push_image(client, "team/bad", "v1", ["amd64"])
        unsigned = await _push_image(client, "team/unsigned", "v1", ["amd64"])
        await push_signature(client, "team/good", good.digest, "docker.io/team/good", [trusted])
        await push_signature(client, "team/bad", bad.digest, "docker.io/team/bad", [other])
        return [good, bad, unsigned]

    good, _, _ = chain.push(setup)
    result = chain.warmer(
        "run", "--region", "eu", "team/good:v1", "team/bad:v1", "team/unsigned:v1", code=1
    )
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "team/bad:v1: signature does not verify" in said
    assert "team/unsigned:v1: signature does not verify: unsigned" in said
    ledger = chain.ledger()
    run = ledger.recent_runs(1)[0]
    skipped = {s["image"]: s["reason"] for s in json.loads(run.skipped)}
    assert "does not verify with any configured key" in skipped["docker.io/team/bad:v1"]
    planned = {i.upstream_repository for i in ledger.items(run.id or 0)}
    assert planned == {"team/good"}
    assert ledger.incidents() == []  # never warmed before: not an incident

    # The good image's tag re-signed by the other key: refused, and an incident (it verified).
    chain.push(lambda c: push_signature(c, "team/good", good.digest, "docker.io/team/good",
                                        [other]))  # fmt: skip
    result = chain.warmer("run", "--region", "eu", "team/good:v1", code=1)
    assert "team/good:v1: signature does not verify" in " ".join(result.output.split())
    (incident,) = ledger.incidents()
    assert incident.kind == "signature" and incident.digest == good.digest
    chain.stop_upstream_and_central()
    # What was warmed before stays, verifiable with the trusted key (the old signature).
    pem = trusted.public_pem()
    assert cosign_verify(chain.regional["eu"].url, "team/good", "v1", pem) == good.digest
    with pytest.raises(AssertionError):
        cosign_verify(chain.regional["eu"].url, "team/bad", "v1", pem)


# --- 4. the sandbox's signing helpers, under a verifying policy ---------------------------


@pytest.mark.timeout(240)
def test_sandbox_signed_catalogue_warms_under_its_key(chain: Chain) -> None:
    catalogue = build(7, 0.01).only("someorg/app", "someorg/worker")
    run_sync(seed(chain.up.url, catalogue, fresh=True))
    signer = sandbox_signer(chain.tmp / "box")
    assert sandbox_signer(chain.tmp / "box").public_pem() == signer.public_pem()  # kept
    assert run_sync(sign_catalogue(chain.up.url, catalogue, signer)) == 2  # v1.0, v1.1
    chain.artifacts = {"eu": [f'verify = {{ keys = ["{chain.tmp / "box" / "cosign.pub"}"] }}']}
    chain.warmer("run", "--region", "eu", "someorg/app:v1.1", "someorg/worker:v2", code=1)
    run = chain.ledger().recent_runs(1)[0]
    skipped = {s["image"]: s["reason"] for s in json.loads(run.skipped)}
    assert list(skipped) == ["docker.io/someorg/worker:v2"]  # not in SIGNED: unsigned
    assert "unsigned" in skipped["docker.io/someorg/worker:v2"]
    pem = signer.public_pem()
    digest = catalogue.tag("someorg/app", "v1.1").digest
    assert cosign_verify(chain.regional["eu"].url, "someorg/app", "v1.1", pem) == digest


# --- 5. the pure parts: policy, plan entries, per-image shares ------------------------------


def test_policy_from_config_and_artifact_types(tmp_path: Path) -> None:
    key = tmp_path / "k.pub"
    key.write_bytes(Signer.generate("ed25519").public_pem())
    default = ArtifactPolicy.from_config(ArtifactsConfig())
    assert default.kinds == {"signatures"} and default.depth == 2 and not default.verifying
    every = ArtifactPolicy.from_config(ArtifactsConfig(kinds=["all"], types=["a/b"]))
    assert every.tag_kinds() == ["signatures", "attestations", "sbom"]
    assert every.kind_of_type("application/vnd.dev.sigstore.bundle.v0.3+json") == "signatures"
    assert every.kind_of_type("application/vnd.in-toto+json") == "attestations"
    assert every.kind_of_type(SPDX) == "sbom" and every.kind_of_type("a/b") == "other"
    assert default.kind_of_type(SPDX) is None
    none = ArtifactPolicy.from_config(ArtifactsConfig(kinds=["none"]))
    assert not none.active
    # A verifying policy implies signatures, even with kinds = ["none"].
    strict = ArtifactPolicy.from_config(
        ArtifactsConfig(kinds=["none"], verify=VerifyConfig(keys=[str(key)]))
    )
    assert strict.verifying and strict.kinds == {"signatures"} and strict.active


def test_artifacts_are_planned_by_tag_and_counted_per_image() -> None:
    sig = Artifact("sha256:" + "1" * 64, "signatures", "sha256:" + "2" * 64, 500,
                   OCI_MANIFEST, artifact_tag("sha256:" + "1" * 64),
                   (Blob("sha256:" + "3" * 64, 250, "blob"),))  # fmt: skip
    entries = plan_blobs([sig, sig])
    assert [(e.kind, e.reference, e.artifact) for e in entries] == [
        ("manifest", artifact_tag("sha256:" + "1" * 64), True), ("blob", "", True),
    ]  # fmt: skip
    assert summary([sig]) == {"count": 1, "bytes": 750}
    want = WantedImage(
        image="docker.io/team/app:v1", upstream="hub", repository="team/app", tag="v1",
        digest="sha256:" + "1" * 64, score=1.0,
        manifests=(Blob("sha256:" + "1" * 64, 400, "manifest"),),
        blobs=(Blob("sha256:" + "4" * 64, 10_000, "blob"),), artifacts=entries,
    )  # fmt: skip
    nodes = [MirrorNode("central", None, "", "repository", 2, None),
             MirrorNode("eu", "central", "", "repository", 2, None)]  # fmt: skip
    planned = plan([want], nodes, ["eu"], [], Budget(None, None), datetime.now(UTC))
    by_tag = [i for i in planned.items if i.reference == artifact_tag("sha256:" + "1" * 64)]
    assert {i.mirror for i in by_tag} == {"central", "eu"}
    assert per_image(planned) == {"docker.io/team/app:v1": {"count": 1, "bytes": 750, "items": 4}}
    # Artifacts count against the budget like everything else: room for the image alone
    # (its bytes twice over two links, fetched twice each) is not room for its signature.
    alone = 2 * 2 * (400 + 10_000)
    tight = plan([want], nodes, ["eu"], [], Budget(alone, None), datetime.now(UTC))
    assert tight.items == () and "over budget" in tight.skipped[0].reason


# --- 6. a registry with the referrers API (none here has it: a fake on a loopback socket) --


def test_referrers_api_with_paging_is_used_where_a_registry_answers_it() -> None:
    subject = "sha256:" + "5" * 64

    def artifact(artifact_type: str, body: bytes) -> bytes:
        return _dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": _digest(b"{}"), "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": _digest(body), "size": len(body)}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
        })  # fmt: skip

    bundle = "application/vnd.dev.sigstore.bundle.v0.3+json"
    stored = {_digest(m): m for m in (artifact(SPDX, b"sbom"), artifact(bundle, b"sig"),
                                      artifact("application/x-other", b"x"))}  # fmt: skip
    entries = [{"mediaType": OCI_MANIFEST, "digest": d, "size": len(m),
                "artifactType": json.loads(m)["artifactType"]} for d, m in stored.items()]  # fmt: skip
    asked: list[str] = []

    async def referrers(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        if request.match_info["digest"] != subject:
            return web.json_response({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        page = int(request.query.get("page", "1"))
        headers = {"Link": f'<{request.path}?page=2>; rel="next"'} if page == 1 else {}
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": entries[:1] if page == 1 else entries[1:]}  # fmt: skip
        return web.json_response(body, headers=headers, content_type=OCI_INDEX)

    async def manifest(request: web.Request) -> web.Response:
        asked.append(f"{request.method} {request.path}")
        body = stored.get(request.match_info["ref"])
        if body is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        headers = {"Docker-Content-Digest": _digest(body)}
        return web.Response(body=body, headers=headers, content_type=OCI_MANIFEST)

    async def go() -> list[Artifact]:
        app = web.Application()

        async def ping(_: web.Request) -> web.Response:
            return web.json_response({})

        app.router.add_get("/v2/", ping)
        app.router.add_get("/v2/team/app/referrers/{digest}", referrers)
        app.router.add_route("*", "/v2/team/app/manifests/{ref}", manifest)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with RegistryClient(f"http://127.0.0.1:{port}", retries=0) as client:
                policy = ArtifactPolicy.from_config(ArtifactsConfig(kinds=["signatures", "sbom"]))
                finder = Discovery(client, policy, probe=client)
                found = await finder.find("team/app", [subject])
                assert finder.referrers_api is True
                return found
        finally:
            await runner.cleanup()

    found = asyncio.run(go())
    assert sorted((a.kind, a.tag) for a in found) == [("sbom", None), ("signatures", None)]
    assert all(a.subject == subject for a in found)
    assert f"/v2/team/app/referrers/{subject}?page=2" in asked  # the second page was read
    assert not any(a.endswith("/" + fallback_tag(subject)) for a in asked)  # no fallback tag
    assert f"HEAD /v2/team/app/manifests/{artifact_tag(subject)}" in asked  # the cosign tag
    # The SBOM's own referrers were asked for (depth 2); the other type's manifest never.
    sbom = next(a for a in found if a.kind == "sbom")
    assert f"/v2/team/app/referrers/{sbom.digest}" in asked
    other = next(d for d, m in stored.items() if b"x-other" in m)
    assert f"GET /v2/team/app/manifests/{other}" not in asked
