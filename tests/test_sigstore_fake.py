"""The fake Sigstore's bundles against sigstore-python's real verifier, offline.

Each bundle must pass ``Verifier.verify_dsse`` with a trusted root file written by the same
``FakeSigstore``, and every part the verifier relies on (CA, CT log, Rekor log, identity,
issuer, DSSE signature, inclusion promise) must make it fail when it is wrong.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sigstore.errors import CertValidationError, VerificationError
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier, policy
from sigstore_fake import DSSE_PAYLOAD_TYPE, FakeSigstore, digest_hex, statement_of, tamper

DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = "registry.example/team/app"
IDENTITY = "ci@example.com"
ISSUER = "https://issuer.example"


@pytest.fixture(scope="module")
def fake() -> FakeSigstore:
    return FakeSigstore()


@pytest.fixture
def verifier(fake: FakeSigstore, tmp_path: Path) -> Verifier:
    path = fake.write_trusted_root(tmp_path / "trusted_root.json")
    return Verifier(trusted_root=TrustedRoot.from_file(str(path)))


def _verify(
    verifier: Verifier, bundle: bytes, identity: str = IDENTITY, issuer: str = ISSUER
) -> tuple[str, bytes]:
    return verifier.verify_dsse(
        Bundle.from_json(bundle), policy.Identity(identity=identity, issuer=issuer)
    )


def _subject_digests(payload: bytes) -> list[str]:
    return [s["digest"]["sha256"] for s in json.loads(payload)["subject"]]


def test_bundle_verifies_and_names_the_digest(fake: FakeSigstore, verifier: Verifier) -> None:
    payload_type, payload = _verify(verifier, fake.sign_image(DIGEST, IMAGE))
    assert payload_type == DSSE_PAYLOAD_TYPE
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": IMAGE, "digest": {"sha256": digest_hex(DIGEST)}}]
    assert statement["predicateType"] == "https://sigstore.dev/cosign/sign/v1"


def test_bundle_shape_is_cosign_like(fake: FakeSigstore) -> None:
    doc = json.loads(fake.sign_image(DIGEST, IMAGE))
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    (entry,) = doc["verificationMaterial"]["tlogEntries"]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert entry["inclusionPromise"]["signedEntryTimestamp"]
    assert entry["inclusionProof"]["hashes"], "filler entries make the proof non-trivial"
    assert entry["inclusionProof"]["checkpoint"]["envelope"].startswith("rekor.fake.example\n")


def test_many_bundles_from_a_growing_log_verify(fake: FakeSigstore, verifier: Verifier) -> None:
    digests = [f"sha256:{i:064x}" for i in range(1, 6)]
    bundles = [fake.sign_image(d, f"{IMAGE}-{i}") for i, d in enumerate(digests)]
    sizes = {
        json.loads(b)["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["treeSize"]
        for b in bundles
    }
    assert len(sizes) == len(bundles)
    for digest, bundle in zip(digests, bundles, strict=True):
        assert _subject_digests(_verify(verifier, bundle)[1]) == [digest_hex(digest)]


def test_custom_identity_issuer_predicate_and_past_signing_time(
    fake: FakeSigstore, verifier: Verifier
) -> None:
    bundle = fake.sign_image(
        digest_hex(DIGEST),
        IMAGE,
        identity="release@corp.example",
        issuer="https://token.actions.githubusercontent.com",
        predicate_type="https://slsa.dev/provenance/v1",
        when=datetime(2021, 6, 1, 12, 0, 30, 123456, tzinfo=UTC),
    )
    _, payload = _verify(
        verifier, bundle, "release@corp.example", "https://token.actions.githubusercontent.com"
    )
    assert json.loads(payload)["predicateType"] == "https://slsa.dev/provenance/v1"
    assert json.loads(bundle)["verificationMaterial"]["tlogEntries"][0]["integratedTime"] == str(
        int(datetime(2021, 6, 1, 12, 0, 31, tzinfo=UTC).timestamp())
    )


def test_wrong_identity_is_rejected(fake: FakeSigstore, verifier: Verifier) -> None:
    bundle = fake.sign_image(DIGEST, IMAGE, identity="someone@example.com")
    with pytest.raises(VerificationError, match=re.escape(f"SANs do not match {IDENTITY}")):
        _verify(verifier, bundle)


def test_wrong_issuer_is_rejected(fake: FakeSigstore, verifier: Verifier) -> None:
    bundle = fake.sign_image(DIGEST, IMAGE, issuer="https://evil.example")
    with pytest.raises(VerificationError, match="OIDCIssuer does not match"):
        _verify(verifier, bundle)


def test_bundle_from_another_instance_is_untrusted(verifier: Verifier) -> None:
    bundle = FakeSigstore().sign_image(DIGEST, IMAGE)
    with pytest.raises(CertValidationError, match="failed to build timestamp certificate chain"):
        _verify(verifier, bundle)


@pytest.mark.parametrize(
    ("part", "error"),
    [
        ("certificateAuthorities", "certificate chain"),
        ("ctlogs", "failed to verify SCT"),
        ("tlogs", "invalid log entry: checkpoint: invalid signature"),
    ],
)
def test_each_trusted_root_part_is_checked(
    fake: FakeSigstore, tmp_path: Path, part: str, error: str
) -> None:
    """A root with one part (CA, CT log or Rekor log) from another instance rejects the bundle."""
    root = fake.trusted_root()
    root[part] = FakeSigstore().trusted_root()[part]
    path = tmp_path / "mixed_root.json"
    path.write_text(json.dumps(root))
    verifier = Verifier(trusted_root=TrustedRoot.from_file(str(path)))
    with pytest.raises(VerificationError, match=error):
        _verify(verifier, fake.sign_image(DIGEST, IMAGE))


def test_tampered_payload_is_rejected(fake: FakeSigstore, verifier: Verifier) -> None:
    bundle = fake.sign_image(DIGEST, IMAGE)
    forged = tamper(bundle, "sha256:" + "f" * 64)
    assert statement_of(forged)["subject"][0]["digest"]["sha256"] == "f" * 64
    with pytest.raises(VerificationError, match="DSSE: invalid signature"):
        _verify(verifier, forged)
    default_forged = tamper(bundle)
    assert (
        statement_of(default_forged)["subject"][0]["digest"]
        != statement_of(bundle)["subject"][0]["digest"]
    )
    with pytest.raises(VerificationError, match="DSSE: invalid signature"):
        _verify(verifier, default_forged)


def test_moved_integrated_time_breaks_the_inclusion_promise(
    fake: FakeSigstore, verifier: Verifier
) -> None:
    doc = json.loads(fake.sign_image(DIGEST, IMAGE))
    entry = doc["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 60)
    with pytest.raises(VerificationError, match="SET: invalid inclusion promise"):
        _verify(verifier, json.dumps(doc).encode())


def test_malformed_digest_is_refused(fake: FakeSigstore) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        fake.sign_image("sha256:abc", IMAGE)
