"""cosign's signature format and the verifier, against signatures the real cosign made.

The vectors in ``tests/data/cosign`` (their URLs in ``vectors.json``) were produced by the
cosign binary; the verifier must pass them and reject a wrong key, a wrong digest, a wrong
identity and a tampered payload. The signer used by the tests and the sandbox must make
payloads byte for byte like cosign's, and signatures the same verifier accepts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from warmer.oci.cosign import (
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING,
    SignatureError,
    Signer,
    artifact_tag,
    check_signature,
    fallback_tag,
    load_public_key,
    load_public_keys,
    parse_payload,
    signature_image,
    signature_layers,
    simple_signing_payload,
)

DATA = Path(__file__).parent / "data" / "cosign"
VECTORS: dict[str, Any] = json.loads((DATA / "vectors.json").read_text())
PREFIX = b"\x00sigstore-json\n"  # containers/image's on-disk form of a sigstore signature


def _read(name: str) -> tuple[bytes, str]:
    """(payload bytes, base64 signature) of a stored cosign signature."""
    raw = (DATA / name).read_bytes()
    assert raw.startswith(PREFIX)
    data = json.loads(raw[len(PREFIX) :])
    return base64.b64decode(data["payload"]), data["annotations"][SIGNATURE_ANNOTATION]


def _key(name: str) -> Any:
    return load_public_key((DATA / name).read_bytes(), name)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["signature"])
def test_real_cosign_signatures_verify(vector: dict[str, Any]) -> None:
    assert VECTORS["files"][vector["signature"]].startswith("https://github.com/")
    payload, sig = _read(vector["signature"])
    manifest = (DATA / vector["manifest"]).read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == vector["digest"]
    got = check_signature(
        payload,
        sig,
        [_key(vector["key"])],
        vector["digest"],
        vector["repository"],
        registries={vector["registry"]},
    )
    assert got.digest == vector["digest"]
    assert got.docker_reference == f"{vector['registry']}/{vector['repository']}"
    # Among several keys, one verifying is enough.
    keys = load_public_keys([DATA / "cosign.pub", DATA / "cosign2.pub"])
    check_signature(payload, sig, keys, vector["digest"], vector["repository"])


def test_our_payload_is_byte_for_byte_cosigns() -> None:
    vector = VECTORS["vectors"][0]
    payload, _ = _read(vector["signature"])
    ours = simple_signing_payload(f"{vector['registry']}/{vector['repository']}", vector["digest"])
    assert ours == payload


def test_wrong_key_is_rejected() -> None:
    vector = VECTORS["vectors"][0]
    payload, sig = _read(vector["signature"])
    with pytest.raises(SignatureError, match="does not verify"):
        check_signature(payload, sig, [_key("cosign2.pub")], vector["digest"], vector["repository"])
    unknown = VECTORS["unknown_key"]
    payload, sig = _read(unknown["signature"])
    keys = [_key(k) for k in unknown["keys"]]
    with pytest.raises(SignatureError, match="does not verify"):
        check_signature(payload, sig, keys, vector["digest"], vector["repository"])


def test_wrong_digest_is_rejected() -> None:
    vector = VECTORS["vectors"][0]
    payload, sig = _read(vector["signature"])
    other = VECTORS["vectors"][2]["digest"]
    with pytest.raises(SignatureError, match="payload signs"):
        check_signature(payload, sig, [_key("cosign.pub")], other, vector["repository"])


def test_wrong_identity_is_rejected() -> None:
    vector = VECTORS["vectors"][0]
    payload, sig = _read(vector["signature"])
    key = [_key("cosign.pub")]
    with pytest.raises(SignatureError, match="payload names"):
        check_signature(payload, sig, key, vector["digest"], "library/python")
    with pytest.raises(SignatureError, match="payload names"):
        check_signature(
            payload, sig, key, vector["digest"], vector["repository"], registries={"docker.io"}
        )


def test_tampered_payload_is_rejected() -> None:
    vector = VECTORS["vectors"][0]
    payload, sig = _read(vector["signature"])
    # The same facts re-serialised (a space added) or one digit changed: neither verifies.
    for tampered in (
        payload.replace(b'"optional":null', b'"optional": null'),
        payload.replace(vector["digest"][-4:].encode(), b"0000"),
    ):
        assert tampered != payload
        with pytest.raises(SignatureError, match="does not verify"):
            check_signature(
                tampered, sig, [_key("cosign.pub")], vector["digest"], vector["repository"]
            )
    with pytest.raises(SignatureError, match="base64"):
        check_signature(payload, "%%%", [_key("cosign.pub")], vector["digest"], "x")


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_signer_round_trip(algorithm: str) -> None:
    signer = Signer.generate(algorithm)
    again = Signer.from_pem(signer.private_pem())
    digest = "sha256:" + "ab" * 32
    payload = simple_signing_payload("docker.io/library/python", digest)
    image = signature_image([(payload, again.sign(payload))])
    manifest = json.loads(image.manifest)
    assert image.digest == "sha256:" + hashlib.sha256(image.manifest).hexdigest()
    assert manifest["layers"][0]["mediaType"] == SIMPLESIGNING
    assert image.blobs[1] == payload
    (layer,) = signature_layers(manifest)
    assert layer.digest == "sha256:" + hashlib.sha256(payload).hexdigest()
    key = load_public_key(signer.public_pem())
    fields = check_signature(payload, layer.signature, [key], digest, "library/python")
    assert fields == parse_payload(payload)
    assert (
        check_signature(
            payload, layer.signature, [key], digest, "library/python", registries={"docker.io"}
        ).type
        == "cosign container image signature"
    )
    other = load_public_key(Signer.generate(algorithm).public_pem())
    with pytest.raises(SignatureError, match="does not verify"):
        check_signature(payload, layer.signature, [other], digest, "library/python")


def test_tags() -> None:
    digest = "sha256:" + "0f" * 32
    assert fallback_tag(digest) == "sha256-" + "0f" * 32
    assert artifact_tag(digest) == "sha256-" + "0f" * 32 + ".sig"
    assert artifact_tag(digest, "attestations").endswith(".att")
    assert artifact_tag(digest, "sbom").endswith(".sbom")
    with pytest.raises(SignatureError):
        fallback_tag("sha256:nothex")


def test_unusable_keys_and_payloads_are_one_clear_error(tmp_path: Path) -> None:
    rsa_pem = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="not supported"):
        load_public_key(rsa_pem, "rsa.pub")
    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="P-256"):
        load_public_key(p384)
    with pytest.raises(SignatureError, match="not a PEM"):
        load_public_key(b"hello")
    with pytest.raises(SignatureError, match="cannot read"):
        load_public_keys([tmp_path / "missing.pub"])
    for body in (b"[]", b"{}", b"not json", b'{"critical":{"identity":{},"image":{},"type":1}}'):
        with pytest.raises(SignatureError):
            parse_payload(body)
    # A layer without the annotation, or of another type, is no signature.
    assert (
        signature_layers(
            {"layers": [{"mediaType": SIMPLESIGNING, "size": 2, "digest": "sha256:" + "a" * 64}]}
        )
        == []
    )
    assert signature_layers({"layers": "x"}) == []
