"""Air-gap bundles carry signatures, SBOMs and referrers: a real source registry holding
cosign-signed images (and an SBOM as an OCI 1.1 referrer through the fallback tag) is
exported, the source is stopped, the bundle is imported into a separate plain registry,
and every image's signature is read from it the way cosign reads it and verified against
the public key. A tampered signature in a bundle is refused before anything is pushed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from artifacts_support import Pushed, cosign_verify, dumps, get, push_image, referrers
from test_bundle import BOTH, _json, _tags, warmer_noconfig

from warmer.bundle.bundlefile import BUNDLE_FILE, loads
from warmer.bundle.ocilayout import OciLayout, blob_relpath
from warmer.oci.cosign import SIMPLESIGNING, SignatureError, Signer, artifact_tag, fallback_tag
from warmer.oci.manifest import Descriptor
from warmer.oci.registry import RegistryClient
from warmer.sandbox.procs import Proc
from warmer.sandbox.seed import push_referrer, push_signature, run_sync

SPDX = "application/spdx+json"


def test_signed_images_verify_offline_after_export_and_import(
    registry_factory: Callable[..., Proc], tmp_path: Path
) -> None:
    """A source holding cosign-signed images and an SBOM referrer; the bundle (and a delta
    after a re-signing) carries them; imported into a plain registry with the source
    stopped, every image's signature is read the way cosign reads it and verifies."""
    source, target = registry_factory("signed-src"), registry_factory("airgap")
    first, second = Signer.generate(), Signer.generate("ed25519")
    sbom = dumps({"spdxVersion": "SPDX-2.3", "name": "team/tool", "packages": []})

    async def setup(client: RegistryClient) -> tuple[Pushed, Pushed, str]:
        app = await push_image(client, "team/app", "v1", ["amd64", "arm64"])
        tool = await push_image(client, "team/tool", "2.0", ["amd64"])
        for digest in (app.digest, *app.platforms.values()):  # cosign sign --recursive
            await push_signature(client, "team/app", digest, "docker.io/team/app", [first])
        await push_signature(client, "team/tool", tool.digest, "docker.io/team/tool", [first])
        subject = Descriptor(tool.media_type, tool.digest, tool.size)
        ref = await push_referrer(client, "team/tool", subject, SPDX, sbom)
        await push_referrer(client, "team/tool", subject, "application/x-other", b"not carried")
        return app, tool, ref.digest

    async def on_source(work: Callable[[RegistryClient], Any]) -> Any:
        async with RegistryClient(source.url) as client:
            return await work(client)

    app, tool, sbom_digest = run_sync(on_source(setup))
    names = ["team/app:v1", "team/tool:2.0"]
    dest, delta = tmp_path / "signed", tmp_path / "signed-delta"
    out = _json(warmer_noconfig("export", *names, "--from", source.url, "--to", str(dest),
                                *BOTH, "--artifacts", "signatures,sbom", "--json"))  # fmt: skip
    # 3 signatures of team/app, 1 of team/tool, the SBOM and its fallback index.
    assert out["artifacts"] == 6
    bundle = loads((dest / BUNDLE_FILE).read_bytes())
    tagged = {e.ref_name for e in OciLayout(dest).read_index() if e.ref_name}
    assert f"docker.io/team/app:{artifact_tag(app.digest)}" in tagged
    assert f"docker.io/team/tool:{fallback_tag(tool.digest)}" in tagged
    for image in bundle.images:
        for a in image.artifacts:
            assert blob_relpath(a.digest) in bundle.files
            assert all(blob_relpath(b.digest) in bundle.files for b in a.blobs)

    # The tool re-signed by another key: a delta carries the new signature, not the layers.
    run_sync(on_source(lambda c: push_signature(c, "team/tool", tool.digest,
                                                "docker.io/team/tool", [second])))  # fmt: skip
    out = _json(warmer_noconfig("export", *names, "--from", source.url, "--to", str(delta),
                                *BOTH, "--since", str(dest / BUNDLE_FILE), "--json"))  # fmt: skip
    assert out["blobs_omitted"] > 0 and out["artifacts"] == 4  # --artifacts: signatures only
    source.stop()
    assert not source.alive()

    result = _json(warmer_noconfig("import", str(dest), "--to", target.url, "--json"))
    assert result["artifacts_pushed"] == 6
    for name, pushed in (("team/app", app), ("team/tool", tool)):
        got = cosign_verify(target.url, name, pushed.tag, first.public_pem())
        assert got == pushed.digest
    with httpx.Client() as http:  # the platform manifests' own signatures
        for digest in app.platforms.values():
            url = f"{target.url}/v2/team/app/manifests/{artifact_tag(digest)}"
            assert get(http, url).status_code == 200
    listed = referrers(target.url, "team/tool", tool.digest)
    assert [d["digest"] for d in listed] == [sbom_digest]  # the other type left behind
    again = _json(warmer_noconfig("import", str(dest), "--to", target.url, "--json"))
    assert again["artifacts_pushed"] == 0 and again["artifacts_skipped"] == 6

    result = _json(warmer_noconfig("import", str(delta), "--to", target.url, "--json"))
    assert result["artifacts_pushed"] == 1  # the re-signed tag
    assert cosign_verify(target.url, "team/tool", "2.0", second.public_pem()) == tool.digest
    with pytest.raises(SignatureError, match="does not verify"):
        cosign_verify(target.url, "team/tool", "2.0", first.public_pem())
    assert cosign_verify(target.url, "team/app", "v1", first.public_pem()) == app.digest


def test_a_tampered_signature_in_a_bundle_is_refused(
    registry_factory: Callable[..., Proc], tmp_path: Path
) -> None:
    source, target = registry_factory("tamper-src"), registry_factory("tamper-target")
    signer = Signer.generate()

    async def setup() -> Pushed:
        async with RegistryClient(source.url) as client:
            tool = await push_image(client, "team/tool", "2.0", ["amd64"])
            await push_signature(client, "team/tool", tool.digest, "docker.io/team/tool", [signer])
            return tool

    tool = run_sync(setup())
    dest = tmp_path / "bundle"
    _json(warmer_noconfig("export", "team/tool:2.0", "--from", source.url, "--to", str(dest),
                          "--json"))  # fmt: skip
    (image,) = loads((dest / BUNDLE_FILE).read_bytes()).images
    (sig,) = image.artifacts
    assert sig.tag == artifact_tag(tool.digest)
    payload = next(b for b in sig.blobs if b.media_type == SIMPLESIGNING)
    path = dest / blob_relpath(payload.digest)
    path.write_bytes(path.read_bytes().replace(b"team/tool", b"team/evil"))
    result = warmer_noconfig("import", str(dest), "--to", target.url)
    assert result.exit_code == 2, result.output
    assert f"{blob_relpath(payload.digest)}: checksum mismatch" in result.output
    assert run_sync(_tags(target.url, "team/tool")) == []  # nothing pushed

    # --artifacts none: the image alone; a kind that does not exist: a usage error.
    bare = tmp_path / "bare"
    _json(warmer_noconfig("export", "team/tool:2.0", "--from", source.url, "--to", str(bare),
                          "--artifacts", "none", "--json"))  # fmt: skip
    assert loads((bare / BUNDLE_FILE).read_bytes()).images[0].artifacts == []
    result = warmer_noconfig("export", "team/tool:2.0", "--from", source.url, "--to",
                             str(tmp_path / "x"), "--artifacts", "signatures,bogus")  # fmt: skip
    assert result.exit_code == 2 and "--artifacts 'signatures,bogus'" in result.output
