"""Artifacts kept fresh and checked on real registries: ``warmer refresh`` notices a new
signature and a re-signed tag on an image whose digest did not change, and warms them
through the tiers (a re-signed tag is a drift; under a verifying policy, a signature that
no longer verifies is an incident); ``warmer verify`` re-reads artifact holdings and checks
each artifact tag at the tier it was warmed through.

The chain is an upstream, a central mirror and two regional mirrors (``docker-registry``
processes, see tests/artifacts_support.py); signatures are cosign's classic format, read
back from the regional mirror the way a cosign client reads them, with the upstream and
central stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from artifacts_support import (
    Chain,
    Pushed,
    RegistryFactory,
    cosign_verify,
    get,
    push_image,
    start_chain,
)

from warmer.oci.cosign import SIMPLESIGNING, SignatureError, Signer, artifact_tag
from warmer.oci.registry import RegistryClient
from warmer.sandbox.seed import push_signature


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from start_chain(registry_factory, tmp_path)


def _json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _sign(chain: Chain, digest: str, signer: Signer) -> str:
    """Sign ``digest`` of team/app at the upstream; the signature manifest's digest."""
    return chain.push(  # type: ignore[no-any-return]
        lambda c: push_signature(c, "team/app", digest, "docker.io/team/app", [signer])
    )


def _blob_file(proc_log: Path, digest: str) -> Path:
    """Where a distribution registry keeps a blob (its content-addressed store)."""
    hexpart = digest.split(":", 1)[1]
    store = proc_log.parent / "data/docker/registry/v2/blobs/sha256"
    return store / hexpart[:2] / hexpart / "data"


@pytest.mark.timeout(300)
def test_refresh_warms_a_new_signature_and_records_a_resigned_tag(chain: Chain) -> None:
    first, second = Signer.generate(), Signer.generate("ed25519")
    key = chain.tmp / "first.pub"
    key.write_bytes(first.public_pem())
    chain.artifacts = {"eu": [], "us": [f'verify = {{ keys = ["{key}"] }}']}
    app: Pushed = chain.push(lambda c: push_image(c, "team/app", "v1", ["amd64", "arm64"]))
    amd64 = app.platforms["linux/amd64"]
    chain.warmer("run", "--region", "eu", "team/app:v1")  # unsigned: nothing attached yet

    quiet = _json(chain.warmer("refresh", "--region", "eu", "--json").output)
    assert quiet["artifact_heads"] > 0 and quiet["artifacts_new"] == 0
    assert quiet["warmed_items"] == 0

    # Signed upstream (index and platform manifest) on an unchanged digest: refresh warms it.
    first_sig = _sign(chain, app.digest, first)
    _sign(chain, amd64, first)
    out = _json(chain.warmer("refresh", "--region", "eu", "--json").output)
    assert out["moved"] == 0 and out["artifacts_new"] == 2 and out["warmed_items"] > 0
    (tag,) = out["tags"]
    reasons = sorted(a["reason"] for a in tag["artifacts"])
    assert reasons == sorted(f"new signature {artifact_tag(d)}" for d in (app.digest, amd64))
    again = _json(chain.warmer("refresh", "--region", "eu", "--json").output)
    assert again["artifacts_new"] == again["artifacts_resigned"] == again["warmed_items"] == 0

    chain.warmer("run", "--region", "us", "team/app:v1")  # verifies with the first key

    # Re-signed by another key: a drift on the .sig tag; eu warms it; us (verifying with
    # the first key) refuses it, and since it verified before, that is an incident.
    second_sig = _sign(chain, app.digest, second)
    result = chain.warmer("refresh", "--json", code=1)
    out = _json(result.stdout)
    assert out["artifacts_resigned"] == 1
    assert any("signature does not verify" in e for e in out["errors"])
    ledger = chain.ledger()
    (drift,) = [d for d in ledger.drifts(image="docker.io/team/app") if d.tag.endswith(".sig")]
    assert drift.tag == artifact_tag(app.digest)
    assert (drift.old_digest, drift.new_digest) == (first_sig, second_sig)
    (incident,) = ledger.incidents()
    assert incident.kind == "signature" and incident.digest == app.digest

    chain.stop_upstream_and_central()
    eu, us = chain.regional["eu"].url, chain.regional["us"].url
    assert cosign_verify(eu, "team/app", "v1", second.public_pem()) == app.digest
    with pytest.raises(SignatureError, match="does not verify"):
        cosign_verify(eu, "team/app", "v1", first.public_pem())
    with httpx.Client() as http:  # the platform manifest's signature came with the first
        assert get(http, f"{eu}/v2/team/app/manifests/{artifact_tag(amd64)}").status_code == 200
    # us kept what verified when it was warmed.
    assert cosign_verify(us, "team/app", "v1", first.public_pem()) == app.digest


@pytest.mark.timeout(300)
def test_verify_rereads_artifacts_and_checks_their_tags(chain: Chain) -> None:
    signer, other = Signer.generate(), Signer.generate()
    app: Pushed = chain.push(lambda c: push_image(c, "team/app", "v1", ["amd64"]))
    _sign(chain, app.digest, signer)
    chain.warmer("run", "--region", "eu", "team/app:v1")

    clean = _json(chain.warmer("verify", "--region", "eu", "--sample", "1", "--json").output)
    assert clean["ok"] and clean["artifact_tags"] == 2  # the .sig tag at central and at eu

    # The payload blob rots on eu's disk: re-read and hashed, it is an incident.
    async def payload_digest(client: RegistryClient) -> str:
        sig = await client.get_manifest("team/app", artifact_tag(app.digest))
        return next(layer.digest for layer in sig.layers if layer.media_type == SIMPLESIGNING)

    payload = chain.push(payload_digest)
    path = _blob_file(chain.regional["eu"].log, payload)
    path.write_bytes(path.read_bytes().replace(b"team/app", b"team/bad"))
    rotten = _json(chain.warmer("verify", "--region", "eu", "--sample", "1", "--json",
                                code=1).stdout)  # fmt: skip
    mismatches = [i for i in rotten["incidents"] if i["kind"] == "digest-mismatch"]
    assert [(i["mirror"], i["digest"]) for i in mismatches] == [("eu", payload)]

    # Re-signed upstream: the tiers now answer the tag with the new signature: stale.
    new_sig = _sign(chain, app.digest, other)
    # (Stale is refresh's business, not a failure: the rotten blob was recorded already.)
    resigned = _json(chain.warmer("verify", "--region", "eu", "--sample", "1", "--json").output)
    stale = [f for f in resigned["stale"] if artifact_tag(app.digest) in f["detail"]]
    assert {f["mirror"] for f in stale} == {"central", "eu"}
    assert all(f["digest"] == new_sig and "re-signed" in f["detail"] for f in stale)


@pytest.mark.timeout(300)
def test_plan_run_and_status_show_artifacts_per_image(chain: Chain) -> None:
    signer = Signer.generate()
    app: Pushed = chain.push(lambda c: push_image(c, "team/app", "v1", ["amd64"]))
    chain.push(lambda c: push_image(c, "team/tool", "2.0", ["amd64"]))
    sig = _sign(chain, app.digest, signer)
    images = ("team/app:v1", "team/tool:2.0")

    plan = _json(chain.warmer("plan", "--region", "eu", *images, "--json").output)
    shares = plan["artifacts_per_image"]
    assert list(shares) == ["docker.io/team/app:v1"]  # the tool is unsigned
    # One signature manifest, its config and payload blobs, through central and eu.
    assert shares["docker.io/team/app:v1"]["count"] == 1
    assert shares["docker.io/team/app:v1"]["items"] == 6
    signed = [i for i in plan["items"] if i["artifact"]]
    assert {i["digest"] for i in signed if i["kind"] == "manifest"} == {sig}
    assert shares["docker.io/team/app:v1"]["bytes"] == sum(
        i["size"] for i in signed if i["mirror"] == "eu"
    )
    table = chain.warmer("plan", "--region", "eu", *images).output
    assert "artifacts" in table and "1 (" in table

    run = _json(chain.warmer("run", "--region", "eu", *images, "--json").output)
    assert run["artifacts"]["items"] == run["artifacts"]["done"] == 6
    assert run["artifacts"]["top_tier_manifest_requests"] == 1
    assert run["artifacts"]["bytes"] == 2 * shares["docker.io/team/app:v1"]["bytes"]

    status = _json(chain.warmer("status", "--json").output)
    assert status["artifact_manifests"] == {"central": 1, "eu": 1}
    assert "eu: 1 artifact manifest(s)" in chain.warmer("status").output
