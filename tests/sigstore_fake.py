"""A private, in-memory Sigstore instance for tests: a Fulcio-like CA, a CT log and a Rekor log.

``FakeSigstore`` makes keyless, cosign-style Sigstore bundles (v0.3, DSSE over an in-toto
Statement v1 naming a container image digest) that sigstore-python's real ``Verifier``
accepts offline against the trusted root this instance writes. Everything sigstore-python
checks is produced for real, just with keys generated here:

* the leaf certificate chains to our root CA at the log's integrated time, has an email SAN,
  the Fulcio OIDC issuer extensions (1.3.6.1.4.1.57264.1.1 raw and .1.8 UTF8String),
  KeyUsage digitalSignature, EKU codeSigning and one embedded SCT, signed by our CT log key
  over the RFC 6962 precertificate entry (issuer key hash + TBS without the SCT extension);
* the DSSE signature is ECDSA P-256/SHA-256 over the PAE with the leaf key;
* the ``dsse`` 0.0.1 log entry body records the payload hash and the signature with the leaf
  certificate, and carries an inclusion promise (SET over the canonical entry), an RFC 6962
  inclusion proof into this instance's log and a checkpoint (signed note) over its root.

A bundle from another instance is untrusted (different CA, CT and Rekor keys); ``tamper``
changes a signed bundle's subject digest without re-signing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["DSSE_PAYLOAD_TYPE", "FakeSigstore", "digest_hex", "statement_of", "tamper"]

DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

_OIDC_ISSUER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_OIDC_ISSUER_V2_OID = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_SCT_LIST_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_CA_ORG, _CA_NAME = "fake-sigstore.example", "fake-sigstore root"
_EPOCH_START = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH_END = datetime(2049, 12, 31, tzinfo=UTC)  # UTCTime range, avoids GeneralizedTime


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (definite length), for the few ASN.1 values cryptography cannot build."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key ID (SHA-256 of the DER SubjectPublicKeyInfo), as Sigstore uses for logs."""
    return hashlib.sha256(_spki(key)).digest()


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    """digitalSignature alone for a signing leaf; keyCertSign and cRLSign for the CA."""
    # digital_signature, content_commitment, key_encipherment, data_encipherment,
    # key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only
    return x509.KeyUsage(
        signing, False, False, False, False, not signing, not signing, False, False
    )


def _sha256(data: bytes) -> dict[str, str]:
    """A Rekor ``{algorithm, value}`` hash object."""
    return {"algorithm": "sha256", "value": hashlib.sha256(data).hexdigest()}


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (RFC 6962 section 2.1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _tree_hash(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over already leaf-hashed entries."""
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(_tree_hash(leaves[:k]), _tree_hash(leaves[k:]))


def _inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 audit path for ``leaves[index]``, leaf level first."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_inclusion_path(index, leaves[:k]), _tree_hash(leaves[k:])]
    return [*_inclusion_path(index - k, leaves[k:]), _tree_hash(leaves[:k])]


def digest_hex(digest: str) -> str:
    """The hex of ``sha256:<hex>`` (or of bare hex); raises ``ValueError`` if malformed."""
    hex_ = digest.removeprefix("sha256:").lower()
    if len(hex_) != 64 or any(c not in "0123456789abcdef" for c in hex_):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hex_


def statement_of(bundle: bytes) -> dict[str, Any]:
    """The (unverified) in-toto statement inside a bundle's DSSE envelope."""
    payload = json.loads(bundle)["dsseEnvelope"]["payload"]
    statement: dict[str, Any] = json.loads(base64.b64decode(payload))
    return statement


def tamper(bundle: bytes, new_digest: str | None = None) -> bytes:
    """Rewrite the DSSE payload's subject digest(s) without re-signing anything.

    ``new_digest`` defaults to the original digest with its last hex digit changed.
    """
    doc = json.loads(bundle)
    statement = statement_of(bundle)
    for subject in statement["subject"]:
        old = subject["digest"]["sha256"]
        flipped = old[:-1] + ("0" if old[-1] != "0" else "1")
        subject["digest"]["sha256"] = digest_hex(new_digest) if new_digest else flipped
    doc["dsseEnvelope"]["payload"] = _b64(json.dumps(statement).encode())
    return json.dumps(doc).encode()


class FakeSigstore:
    """A private Sigstore: root CA (Fulcio), CT log and Rekor log, all ECDSA P-256, in memory.

    ``log_origin`` names the Rekor log in checkpoints; ``filler_entries`` unrelated leaves are
    put in the log first so that inclusion proofs are not trivially empty.
    """

    def __init__(self, *, log_origin: str = "rekor.fake.example", filler_entries: int = 3) -> None:
        self.log_origin = log_origin
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ct_key = ec.generate_private_key(ec.SECP256R1())
        self._rekor_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name.from_rfc4514_string(f"CN={_CA_NAME},O={_CA_ORG}")
        ca_pub = self._ca_key.public_key()
        self.root_certificate: x509.Certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_EPOCH_START)
            .not_valid_after(_EPOCH_END)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(signing=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_pub), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        self._leaves: list[bytes] = [_leaf_hash(b"filler %d" % i) for i in range(filler_entries)]

    # -- the trusted root -------------------------------------------------------------

    def _log_key(self, key: ec.EllipticCurvePrivateKey, base_url: str) -> dict[str, Any]:
        return {
            "baseUrl": base_url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(_spki(key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2000-01-01T00:00:00Z"},
            },
            "logId": {"keyId": _b64(_key_id(key.public_key()))},
        }

    def trusted_root(self) -> dict[str, Any]:
        """The protobuf-JSON trusted root naming this instance's CA, CT log and Rekor log."""
        root_der = self.root_certificate.public_bytes(Encoding.DER)
        return {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [self._log_key(self._rekor_key, f"https://{self.log_origin}")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": _CA_ORG, "commonName": _CA_NAME},
                    "uri": "https://fulcio.fake-sigstore.example",
                    "certChain": {"certificates": [{"rawBytes": _b64(root_der)}]},
                    "validFor": {"start": "2000-01-01T00:00:00Z"},
                }
            ],
            "ctlogs": [self._log_key(self._ct_key, "https://ctfe.fake-sigstore.example")],
            "timestampAuthorities": [],
        }

    def write_trusted_root(self, path: str | os.PathLike[str]) -> Path:
        """Write ``trusted_root()`` as JSON to ``path`` and return it as a ``Path``."""
        out = Path(path)
        out.write_text(json.dumps(self.trusted_root(), indent=2))
        return out

    # -- Fulcio + CT ------------------------------------------------------------------

    def _sct_extension(self, tbs: bytes, at: datetime) -> x509.UnrecognizedExtension:
        """An RFC 6962 SCT list holding one precertificate SCT from our CT log over ``tbs``."""
        issuer_key_hash = _key_id(self._ca_key.public_key())
        millis = int(at.timestamp() * 1000)
        # digitally-signed struct: v1, certificate_timestamp, time, precert_entry, entry, no exts
        entry = issuer_key_hash + len(tbs).to_bytes(3, "big") + tbs
        sig = _sign(self._ct_key, struct.pack("!BBQH", 0, 0, millis, 1) + entry + b"\0\0")
        sct = (
            struct.pack("!B", 0)
            + _key_id(self._ct_key.public_key())
            + struct.pack("!QH", millis, 0)
            + struct.pack("!BBH", 4, 3, len(sig))  # sha256, ecdsa
            + sig
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        return x509.UnrecognizedExtension(_SCT_LIST_OID, _der(0x04, sct_list))

    def _issue(
        self, key: ec.EllipticCurvePrivateKey, identity: str, issuer: str, at: datetime
    ) -> x509.Certificate:
        """A 10-minute Fulcio-style leaf for ``identity``, with the SCT embedded last."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at)
            .not_valid_after(at + timedelta(minutes=10))
            .add_extension(_key_usage(signing=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), True)
            .add_extension(x509.UnrecognizedExtension(_OIDC_ISSUER_OID, issuer.encode()), False)
            .add_extension(
                x509.UnrecognizedExtension(_OIDC_ISSUER_V2_OID, _der(0x0C, issuer.encode())),
                critical=False,
            )
        )
        # The precertificate TBS is the final TBS minus the SCT extension, which comes last.
        precert_tbs = builder.sign(self._ca_key, hashes.SHA256()).tbs_certificate_bytes
        cert = builder.add_extension(self._sct_extension(precert_tbs, at), False).sign(
            self._ca_key, hashes.SHA256()
        )
        if cert.tbs_precertificate_bytes != precert_tbs:  # the SCT would not verify
            raise RuntimeError("precertificate TBS changed when the SCT was embedded")
        return cert

    # -- Rekor ------------------------------------------------------------------------

    def _log_entry(self, body: bytes, integrated_time: int) -> dict[str, Any]:
        """Append ``body`` to the log; its entry with SET, inclusion proof and checkpoint."""
        self._leaves.append(_leaf_hash(body))
        index, size = len(self._leaves) - 1, len(self._leaves)
        root = _tree_hash(self._leaves)
        log_id = _key_id(self._rekor_key.public_key())
        # The SET signs the RFC 8785 form of this object: sorted keys, no spaces, int values.
        promise = {
            "body": _b64(body),
            "integratedTime": integrated_time,
            "logID": log_id.hex(),
            "logIndex": index,
        }
        set_sig = _sign(
            self._rekor_key, json.dumps(promise, sort_keys=True, separators=(",", ":")).encode()
        )
        note = f"{self.log_origin}\n{size}\n{_b64(root)}\n"
        note_sig = log_id[:4] + _sign(self._rekor_key, note.encode())
        name = self.log_origin.split()[0]
        return {
            "logIndex": str(index),
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": _b64(set_sig)},
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": _b64(root),
                "treeSize": str(size),
                "hashes": [_b64(h) for h in _inclusion_path(index, self._leaves)],
                "checkpoint": {"envelope": f"{note}\n\u2014 {name} {_b64(note_sig)}\n"},
            },
            "canonicalizedBody": _b64(body),
        }

    # -- signing ----------------------------------------------------------------------

    def sign_image(
        self,
        digest: str,
        name: str,
        identity: str = "ci@example.com",
        issuer: str = "https://issuer.example",
        predicate_type: str = COSIGN_SIGN_PREDICATE,
        when: datetime | None = None,
    ) -> bytes:
        """A keyless Sigstore bundle (v0.3 JSON) attesting image ``name`` at ``digest``.

        ``digest`` is ``sha256:<hex>`` or bare hex; ``identity`` is the certificate's email
        SAN and ``issuer`` its OIDC issuer; ``when`` (default now) is the signing time, which
        the verifier checks against the certificate only, never against the wall clock.
        """
        at = (when or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {"sha256": digest_hex(digest)}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
        payload = json.dumps(statement, separators=(",", ":")).encode()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(key, identity, issuer, at)
        type_ = DSSE_PAYLOAD_TYPE.encode()
        sig = _sign(key, b"DSSEv1 %d %s %d %s" % (len(type_), type_, len(payload), payload))
        envelope = {
            "payload": _b64(payload),
            "payloadType": DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(sig)}],
        }
        cert_pem = cert.public_bytes(Encoding.PEM)
        body = {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": _sha256(json.dumps(envelope).encode()),
                "payloadHash": _sha256(payload),
                "signatures": [{"signature": _b64(sig), "verifier": _b64(cert_pem)}],
            },
        }
        body_bytes = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        entry = self._log_entry(body_bytes, int(at.timestamp()) + 1)
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(Encoding.DER))},
                "tlogEntries": [entry],
            },
            "dsseEnvelope": envelope,
        }
        return json.dumps(bundle, indent=2).encode()
