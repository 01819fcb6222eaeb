"""Keyless sigstore bundles: the verifier against a real cosign-made bundle, and the config.

The bundle in ``tests/data/sigstore`` (sources in its SOURCES.md) was made by cosign for an
OCI image and logged in the public Rekor: it must verify offline against its trusted root
(and against the public-good root shipped with sigstore-python), and be rejected for a
wrong identity, a wrong issuer, a wrong digest, a tampered payload and an untrusted root.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sigstore_fake import FakeSigstore

from warmer.config import (
    ArtifactsConfig,
    ConfigError,
    SignerIdentityConfig,
    VerifyConfig,
    parse_config,
)
from warmer.oci.cosign import SignatureError
from warmer.oci.keyless import (
    PUBLIC_GOOD,
    KeylessPolicy,
    SignerIdentity,
    _utf8_string,
    is_bundle_type,
)
from warmer.warm.artifacts import ArtifactPolicy, signature_verdict

DATA = Path(__file__).parent / "data" / "sigstore"
BUNDLE = (DATA / "oci-attestation.sigstore.json").read_bytes()
ROOT = str(DATA / "trusted_root_pgi.json")
DIGEST = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
CODY = SignerIdentity("cody@soyland.com", "https://github.com/login/oauth")


def _with_payload(bundle: bytes, change: dict[str, object]) -> bytes:
    """The bundle with its DSSE statement changed (not re-signed)."""
    data = json.loads(bundle)
    envelope = data["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement.update(change)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(data).encode()


@pytest.mark.parametrize("root", [ROOT, PUBLIC_GOOD])
def test_the_real_cosign_bundle_verifies_offline(root: str) -> None:
    policy = KeylessPolicy.load(root, [SignerIdentity("x@example.com", CODY.issuer), CODY])
    assert policy.check(BUNDLE, DIGEST) == CODY


def test_wrong_identity_and_wrong_issuer_are_rejected() -> None:
    for who in (
        SignerIdentity("someone@soyland.com", CODY.issuer),
        SignerIdentity(CODY.identity, "https://accounts.google.com"),
    ):
        policy = KeylessPolicy.load(ROOT, [who])
        with pytest.raises(SignatureError, match="bundle does not verify: Certificate's"):
            policy.check(BUNDLE, DIGEST)


def test_identity_regexp_must_match_the_whole_subject() -> None:
    for pattern in (r"cody@[a-z]+\.com", r".*@soyland\.com"):
        who = SignerIdentity(pattern, CODY.issuer, regexp=True)
        assert KeylessPolicy.load(ROOT, [who]).check(BUNDLE, DIGEST) == who
    for pattern, issuer in (
        (r"cody@soyland", CODY.issuer),  # a prefix is not a match
        (r"x.*@soyland\.com", CODY.issuer),
        (r".*", "https://accounts.google.com"),  # the issuer stays exact
    ):
        policy = KeylessPolicy.load(ROOT, [SignerIdentity(pattern, issuer, regexp=True)])
        with pytest.raises(SignatureError, match="not match"):
            policy.check(BUNDLE, DIGEST)


def test_other_name_values_are_read_as_der_utf8_strings() -> None:
    assert _utf8_string(b"\x0c\x05alice") == "alice"
    long = "x" * 200
    assert _utf8_string(b"\x0c\x81\xc8" + long.encode()) == long
    assert _utf8_string(b"plain") == "plain"  # not DER: taken as it is


def test_wrong_digest_and_tampered_payload_are_rejected() -> None:
    policy = KeylessPolicy.load(ROOT, [CODY])
    with pytest.raises(SignatureError, match=f"bundle signs {DIGEST}, not sha256:0000"):
        policy.check(BUNDLE, "sha256:" + "0" * 64)
    other = "1" * 64
    forged = _with_payload(BUNDLE, {"subject": [{"name": "x", "digest": {"sha256": other}}]})
    with pytest.raises(SignatureError, match="bundle does not verify"):
        policy.check(forged, "sha256:" + other)
    with pytest.raises(SignatureError, match="not a sigstore bundle"):
        policy.check(b'{"mediaType": "nope"}', DIGEST)


def test_an_untrusted_root_rejects_the_real_bundle(tmp_path: Path) -> None:
    fake = FakeSigstore()
    policy = KeylessPolicy.load(str(fake.write_trusted_root(tmp_path / "root.json")), [CODY])
    with pytest.raises(SignatureError, match="bundle does not verify"):
        policy.check(BUNDLE, DIGEST)


def test_a_private_sigstore_bundle_verifies_only_under_its_root(tmp_path: Path) -> None:
    ours, theirs = FakeSigstore(), FakeSigstore()
    who = SignerIdentity("ci@example.com", "https://issuer.example")
    digest = "sha256:" + "ab" * 32
    root = str(ours.write_trusted_root(tmp_path / "root.json"))
    policy = KeylessPolicy.load(root, [who])
    assert policy.check(ours.sign_image(digest, "team/app", who.identity, who.issuer), digest)
    with pytest.raises(SignatureError, match="bundle does not verify"):
        policy.check(theirs.sign_image(digest, "team/app", who.identity, who.issuer), digest)


def test_verdict_names_what_was_missing_and_why() -> None:
    keyless = ArtifactPolicy(keyless=KeylessPolicy.load(ROOT, [CODY]))
    assert signature_verdict([], keyless, DIGEST, "repo", bundles=[BUNDLE]) is None
    assert signature_verdict([], keyless, DIGEST, "repo") == "unsigned: no sigstore bundle found"
    why = signature_verdict([], keyless, "sha256:" + "2" * 64, "repo", bundles=[BUNDLE])
    assert why is not None and why.startswith(f"bundle signs {DIGEST}")
    assert is_bundle_type("application/vnd.dev.sigstore.bundle+json; version=0.3")
    assert not is_bundle_type("application/vnd.in-toto+json")


def test_config_keyless_policy(tmp_path: Path) -> None:
    config = ArtifactsConfig(
        kinds=["none"],
        verify=VerifyConfig(identities=[SignerIdentityConfig(identity=CODY.identity,
                                                             issuer=CODY.issuer)],
                            trusted_root=ROOT),
    )  # fmt: skip
    policy = ArtifactPolicy.from_config(config)
    assert policy.verifying and policy.kinds == {"signatures"} and not policy.keys
    assert policy.keyless is not None and policy.keyless.identities == (CODY,)
    # identities alone: the public-good root shipped with sigstore-python
    who = [SignerIdentityConfig(identity="a", issuer="b")]
    default = ArtifactsConfig(verify=VerifyConfig(identities=who))
    assert ArtifactPolicy.from_config(default).keyless is not None
    pattern = [SignerIdentityConfig(identity_regexp=r"cody@.*", issuer=CODY.issuer)]
    keyless = ArtifactPolicy.from_config(
        ArtifactsConfig(verify=VerifyConfig(identities=pattern, trusted_root=ROOT))
    ).keyless
    assert keyless is not None and keyless.check(BUNDLE, DIGEST).regexp

    base = '[upstreams.hub]\nurl = "http://127.0.0.1:1"\n'
    base += '[mirrors.eu]\nurl = "http://127.0.0.1:3"\nparent = "hub"\n'
    base += '[regions.eu]\nmirrors = ["eu"]\n[regions.eu.artifacts.verify]\n'
    bad = {
        f'trusted_root = "{ROOT}"': "trusted_root: needs identities",
        'identities = [{ identity = "a", issuer = "b" }]\ntrusted_root = "/nonexistent.json"':
            "trusted_root: trusted root /nonexistent.json: No such file",
        f'identities = [{{ identity = "a", issuer = "b" }}]\ntrusted_root = "{DATA / "SOURCES.md"}"':
            "not a sigstore trusted root",
        'identities = [{ identity = "a" }]': "identities[0].issuer: Field required",
        'identities = [{ issuer = "b" }]': "give one of identity (exact) or identity_regexp",
        'identities = [{ identity = "a", identity_regexp = "a", issuer = "b" }]':
            "give one of identity",
        'identities = [{ identity_regexp = "(", issuer = "b" }]':
            "identity_regexp: not a regular expression",
        'identities = [{ identity = "", issuer = "b" }]': "identities[0].identity",
        'keys = ["/nonexistent.pub"]': "regions.eu.artifacts.verify: Value error, keys:",
    }  # fmt: skip
    import tomllib

    for lines, message in bad.items():
        with pytest.raises(ConfigError) as err:
            parse_config(tomllib.loads(base + lines), "c.toml")
        assert message.split("Value error, ")[-1] in str(err.value), (lines, str(err.value))
        assert "Traceback" not in str(err.value)
