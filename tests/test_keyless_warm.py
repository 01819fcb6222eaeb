"""Keyless signatures on real registries: a verifying policy with signer identities.

Images in the upstream (a writable ``docker-registry``) carry sigstore bundles as OCI 1.1
referrers, listed in the fallback tag (distribution 2.8 has no referrers API), made by a
private sigstore (tests/sigstore_fake.py: a CA, a CT log and a Rekor log whose keys are in
the trusted root file the policy names). Under the policy only the image signed by the
allowed identity is warmed; after the run, with the upstream and central stopped, the
regional mirror serves the image and its bundle the way a sigstore client finds them, and
the bundle verifies there with sigstore-python. Without artifact warming it does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from artifacts_support import Chain, Pushed, RegistryFactory, digest_of, referrers, start_chain
from artifacts_support import get as _get
from artifacts_support import push_image as _push_image
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier, policy
from sigstore_fake import FakeSigstore
from test_bundle import _json, warmer_noconfig

from warmer.oci.cosign import fallback_tag
from warmer.oci.manifest import OCI_INDEX, Descriptor
from warmer.oci.registry import RegistryClient
from warmer.sandbox.seed import push_referrer, run_sync

BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
CI = ("https://github.com/team/app/.github/workflows/release.yml@refs/heads/main",
      "https://token.actions.githubusercontent.com")  # fmt: skip
STRANGER = ("someone@example.com", "https://accounts.example.com")


@pytest.fixture
def chain(registry_factory: RegistryFactory, tmp_path: Path) -> Iterator[Chain]:
    yield from start_chain(registry_factory, tmp_path)


def _client_reads_bundle(url: str, repository: str, tag: str) -> tuple[str, bytes]:
    """What a sigstore client does at ``url``: the image's digest by tag, its referrers
    (the fallback tag here), the bundle manifest by digest and its layer."""
    with httpx.Client() as http:
        top = _get(http, f"{url}/v2/{repository}/manifests/{tag}")
        assert top.status_code == 200
        digest = digest_of(top.content)
        listed = [d for d in referrers(url, repository, digest) if d.get("artifactType") == BUNDLE]
        assert listed, f"no bundle referrer of {repository}@{digest} at {url}"
        manifest = _get(http, f"{url}/v2/{repository}/manifests/{listed[0]['digest']}").json()
        assert manifest["subject"]["digest"] == digest
        layer = manifest["layers"][0]["digest"]
        blob = http.get(f"{url}/v2/{repository}/blobs/{layer}", timeout=20)
        assert blob.status_code == 200
        return digest, blob.content


async def _attach(
    client: RegistryClient,
    image: Pushed,
    sigstore: FakeSigstore,
    who: tuple[str, str],
    replace: bool,
) -> None:
    """Sign ``image`` keylessly as ``who`` and list the bundle in its fallback tag (alone
    there when ``replace``: the earlier bundles are no longer referrers)."""
    body = sigstore.sign_image(image.digest, f"docker.io/{image.repository}", *who)
    subject = Descriptor(image.media_type, image.digest, image.size)
    ref = await push_referrer(client, image.repository, subject, BUNDLE, body)
    if replace:
        tag = fallback_tag(image.digest)
        index = dict((await client.get_manifest(image.repository, tag)).data)
        index["manifests"] = [d for d in index["manifests"] if d["digest"] == ref.digest]
        data = json.dumps(index, separators=(",", ":")).encode()
        await client.put_manifest(image.repository, tag, data, OCI_INDEX)


@pytest.mark.timeout(240)
def test_only_what_the_allowed_identity_signed_is_warmed_and_verifies_offline(
    chain: Chain,
) -> None:
    ours, theirs = FakeSigstore(), FakeSigstore()
    root = ours.write_trusted_root(chain.tmp / "trusted_root.json")
    verify = (
        f'verify = {{ identities = [{{ identity = "{CI[0]}", issuer = "{CI[1]}" }}], '
        f'trusted_root = "{root}" }}'
    )
    chain.artifacts = {"eu": [verify], "us": ['kinds = ["none"]']}

    async def setup(client: RegistryClient) -> dict[str, Pushed]:
        images: dict[str, Pushed] = {}
        signers = {
            "good": (ours, CI),  # the allowed identity, our root
            "stranger": (ours, STRANGER),  # our root, another identity
            "forged": (theirs, CI),  # the allowed identity's name, an untrusted root
            "unsigned": None,
        }
        for name, signer in signers.items():
            images[name] = await _push_image(client, f"team/{name}", "v1", ["amd64"])
            if signer is not None:
                await _attach(client, images[name], *signer, replace=False)
        return images

    images = chain.push(setup)
    refs = [f"team/{name}:v1" for name in images]
    result = chain.warmer("run", "--region", "eu", *refs, code=1)
    said = " ".join(result.output.split())
    assert "team/stranger:v1: signature does not verify" in said
    run = chain.ledger().recent_runs(1)[0]
    skipped = {s["image"]: s["reason"] for s in json.loads(run.skipped)}
    assert set(skipped) == {f"docker.io/team/{n}:v1" for n in ("stranger", "forged", "unsigned")}
    assert "OIDCIssuer does not match" in skipped["docker.io/team/stranger:v1"]
    assert "bundle does not verify" in skipped["docker.io/team/forged:v1"]
    assert "unsigned: no sigstore bundle found" in skipped["docker.io/team/unsigned:v1"]
    planned = {i.upstream_repository for i in chain.ledger().items(run.id or 0)}
    assert planned == {"team/good"}
    chain.warmer("run", "--region", "us", "team/good:v1")  # the image alone, no artifacts
    # An image signed later by the allowed identity is admitted on the next run.
    chain.push(lambda c: _attach(c, images["unsigned"], ours, CI, replace=False))
    chain.warmer("run", "--region", "eu", "team/unsigned:v1")
    assert chain.ledger().incidents() == []

    # The good image's bundle replaced by one another identity signed: refresh sees the
    # fallback tag move (re-signed), the warm refuses it, and since it verified when it
    # was warmed, that is a signature incident; the region keeps the bundle that verified.
    good = images["good"]
    chain.push(lambda c: _attach(c, good, ours, STRANGER, replace=True))
    result = chain.warmer("refresh", "--region", "eu", "--json", code=1)
    out = json.loads(result.stdout)
    assert out["artifacts_resigned"] == 1
    assert any("OIDCIssuer does not match" in e for e in out["errors"])
    (incident,) = chain.ledger().incidents()
    assert incident.kind == "signature" and incident.digest == good.digest

    chain.stop_upstream_and_central()
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root)))
    digest, body = _client_reads_bundle(chain.regional["eu"].url, "team/good", "v1")
    assert digest == images["good"].digest
    kind, payload = verifier.verify_dsse(
        Bundle.from_json(body), policy.Identity(identity=CI[0], issuer=CI[1])
    )
    assert kind == "application/vnd.in-toto+json"
    assert json.loads(payload)["subject"][0]["digest"]["sha256"] == digest.split(":", 1)[1]
    # Without artifact warming the region serves the image but no bundle.
    with pytest.raises(LookupError, match="no referrers index"):
        _client_reads_bundle(chain.regional["us"].url, "team/good", "v1")
    # What was left out is not at the region at all.
    with httpx.Client() as http:
        url = f"{chain.regional['eu'].url}/v2/team/stranger/manifests/v1"
        assert _get(http, url).status_code != 200


def test_an_air_gap_bundle_carries_keyless_bundles_that_verify_offline(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    """Exported with its sigstore bundle, the source stopped, imported into a plain
    registry: a client finds the bundle there and it verifies against the trusted root."""
    source, target = registry_factory("keyless-src"), registry_factory("keyless-airgap")
    ours = FakeSigstore()
    root = ours.write_trusted_root(tmp_path / "trusted_root.json")

    async def setup() -> Pushed:
        async with RegistryClient(source.url) as client:
            app = await _push_image(client, "team/app", "v1", ["amd64"])
            await _attach(client, app, ours, CI, replace=False)
            return app

    app = run_sync(setup())
    dest = tmp_path / "bundle"
    out = _json(warmer_noconfig("export", "team/app:v1", "--from", source.url,
                                "--to", str(dest), "--json"))  # fmt: skip
    assert out["artifacts"] == 2  # the bundle referrer and its fallback index
    source.stop()
    result = _json(warmer_noconfig("import", str(dest), "--to", target.url, "--json"))
    assert result["artifacts_pushed"] == 2
    digest, body = _client_reads_bundle(target.url, "team/app", "v1")
    assert digest == app.digest
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root)))
    kind, _ = verifier.verify_dsse(
        Bundle.from_json(body), policy.Identity(identity=CI[0], issuer=CI[1])
    )
    assert kind == "application/vnd.in-toto+json"
