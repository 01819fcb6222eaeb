"""cosign's classic signature format: tags, the signature manifest, the payload, keys.

cosign (key-based, the "classic" layout that cosign 1.x and 2.x write by default) stores
what it attaches to an image as tags in the image's own repository, named after the image
digest: ``sha256-<hex>.sig`` (signatures), ``.att`` (attestations), ``.sbom`` (SBOMs). A
signature tag is an OCI image manifest with one layer per signature; each layer is a
*simple-signing payload* (media type :data:`SIMPLESIGNING`), and the layer descriptor's
annotation :data:`SIGNATURE_ANNOTATION` holds the base64 signature over the payload's bytes:

    {"critical":{"identity":{"docker-reference":"registry/repo"},
                 "image":{"docker-manifest-digest":"sha256:..."},
                 "type":"cosign container image signature"},"optional":null}

OCI 1.1 referrers (newer cosign, SBOMs attached by other tools) are found through the
referrers API or, where a registry lacks it (CNCF distribution 2.8 and 3.x answer
``/v2/<repo>/referrers/<digest>`` with a plain-text ``404 page not found``), through the
fallback tag ``sha256-<hex>`` that names an index of the referrers (:func:`fallback_tag`).

Public API (used by discovery, the verifying policy, and by refresh/verify/export):

* :func:`artifact_tag`, :func:`fallback_tag`, :data:`TAG_SUFFIXES`: the tag names;
* :func:`load_public_key` / :func:`load_public_keys`: ECDSA P-256 and Ed25519 PEM keys;
* :func:`signature_layers`: the (payload descriptor, signature) pairs of a signature manifest;
* :func:`parse_payload` and :class:`Payload`: a simple-signing payload, checked;
* :func:`verify` / :func:`check_signature`: one signature against keys, digest, identity;
* :class:`Signer` and :func:`signature_image`: make cosign-format signatures (tests, sandbox).

Verification is what ``cosign verify --key`` checks offline for a key-based signature: the
signature over the payload bytes verifies with the key (ECDSA P-256 over SHA-256, DER; or
Ed25519 over the bytes), the payload's type is cosign's, its digest is the image's, and its
docker-reference names the expected repository. Keyless sigstore bundles (Fulcio
certificates, Rekor entries) are :mod:`warmer.oci.keyless`'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from warmer.oci.manifest import OCI_CONFIG, OCI_MANIFEST
from warmer.oci.reference import InvalidReference, parse
from warmer.oci.validate import InvalidValue, check_digest

__all__ = [
    "SIGNATURE_ANNOTATION",
    "SIGNATURE_TYPE",
    "SIMPLESIGNING",
    "TAG_SUFFIXES",
    "Payload",
    "PublicKey",
    "SignatureError",
    "SignatureImage",
    "SignatureLayer",
    "Signer",
    "artifact_tag",
    "check_signature",
    "fallback_tag",
    "load_public_key",
    "load_public_keys",
    "parse_payload",
    "signature_image",
    "signature_layers",
    "simple_signing_payload",
    "verify",
]

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
#: The tag suffix cosign uses per kind of attached artifact.
TAG_SUFFIXES: Mapping[str, str] = {"signatures": ".sig", "attestations": ".att", "sbom": ".sbom"}
#: The largest payload read: cosign's are a few hundred bytes.
MAX_PAYLOAD = 64 * 1024

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class SignatureError(ValueError):
    """A signature, payload or key that cannot be used or does not verify; says why."""


def _hex(digest: str) -> tuple[str, str]:
    try:
        algo, _, hexpart = check_digest(digest).partition(":")
    except InvalidValue as exc:
        raise SignatureError(str(exc)) from None
    return algo, hexpart


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers fallback tag of ``digest``: ``sha256-<hex>``."""
    algo, hexpart = _hex(digest)
    return f"{algo}-{hexpart}"


def artifact_tag(digest: str, kind: str = "signatures") -> str:
    """cosign's tag for ``kind`` (signatures, attestations, sbom) attached to ``digest``."""
    if kind not in TAG_SUFFIXES:
        raise SignatureError(f"unknown artifact kind {kind!r}")
    return fallback_tag(digest) + TAG_SUFFIXES[kind]


# --- keys ---------------------------------------------------------------------------------


def load_public_key(pem: bytes, where: str = "public key") -> PublicKey:
    """An ECDSA P-256 or Ed25519 public key from PEM (``cosign.pub``); SignatureError else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError(f"{where}: not a PEM public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SignatureError(f"{where}: ECDSA curve {key.curve.name} is not P-256")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise SignatureError(
        f"{where}: {type(key).__name__} keys are not supported (ECDSA P-256, Ed25519)"
    )


def load_public_keys(paths: Iterable[str | Path]) -> list[PublicKey]:
    """Each PEM file's key; SignatureError naming the file that cannot be read or used."""
    keys = []
    for path in paths:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise SignatureError(f"{path}: cannot read ({exc.strerror or exc})") from None
        keys.append(load_public_key(pem, str(path)))
    return keys


# --- the payload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """A simple-signing payload's critical fields (``optional`` as given, maybe None)."""

    docker_reference: str
    digest: str
    type: str
    optional: Any = None


def simple_signing_payload(
    docker_reference: str, digest: str, optional: Mapping[str, Any] | None = None
) -> bytes:
    """The payload cosign signs, byte for byte as cosign writes it (compact, this order)."""
    check_digest(digest)
    data = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": dict(optional) if optional is not None else None,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def parse_payload(body: bytes) -> Payload:
    """A payload's fields, checked for shape (not trust); SignatureError when unusable."""
    if len(body) > MAX_PAYLOAD:
        raise SignatureError(f"payload larger than {MAX_PAYLOAD} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise SignatureError("payload is not JSON") from None
    critical = data.get("critical") if isinstance(data, dict) else None
    if not isinstance(critical, dict):
        raise SignatureError("payload has no 'critical' object")
    identity, image = critical.get("identity"), critical.get("image")
    ref = identity.get("docker-reference") if isinstance(identity, dict) else None
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    kind = critical.get("type")
    if not isinstance(ref, str) or not isinstance(digest, str) or not isinstance(kind, str):
        raise SignatureError("payload lacks docker-reference, docker-manifest-digest or type")
    try:
        digest = check_digest(digest, "docker-manifest-digest")
    except InvalidValue as exc:
        raise SignatureError(f"payload: {exc}") from None
    return Payload(ref[:512], digest, kind[:200], data.get("optional"))


# --- signature manifests ------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureLayer:
    """One signature of a ``.sig`` manifest: its payload blob and base64 signature."""

    digest: str
    size: int
    signature: str  # base64, as in the annotation


def signature_layers(manifest: Mapping[str, Any]) -> list[SignatureLayer]:
    """The simple-signing layers of a signature manifest (parsed JSON) that carry a
    signature annotation; other layers are left out (they are not cosign signatures)."""
    layers = manifest.get("layers")
    out: list[SignatureLayer] = []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLESIGNING:
            continue
        notes = layer.get("annotations")
        sig = notes.get(SIGNATURE_ANNOTATION) if isinstance(notes, dict) else None
        size = layer.get("size")
        if not isinstance(sig, str) or not isinstance(size, int) or isinstance(size, bool):
            continue
        try:
            digest = check_digest(layer.get("digest"))
        except InvalidValue:
            continue
        if 0 <= size <= MAX_PAYLOAD and len(sig) <= 4096:
            out.append(SignatureLayer(digest, size, sig))
    return out


# --- verification -------------------------------------------------------------------------


def verify(key: PublicKey, payload: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``payload`` verifies with ``key``."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        else:
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _same_repository(reference: str, repository: str, registries: Collection[str]) -> bool:
    try:
        ref = parse(reference)
    except InvalidReference:
        return False
    return ref.repository == repository and (not registries or ref.registry in registries)


def check_signature(
    payload: bytes,
    signature_b64: str,
    keys: Sequence[PublicKey],
    digest: str,
    repository: str,
    registries: Collection[str] = (),
) -> Payload:
    """Verify one cosign signature; return its payload, or raise SignatureError with why.

    ``repository`` is the path the image is known by (``library/python``); the payload's
    docker-reference must name it (any tag or digest on it ignored), under one of
    ``registries`` when given (``docker.io``, the upstream's host).
    """
    if not keys:
        raise SignatureError("no public key to verify with")
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature annotation is not base64") from None
    if not any(verify(key, payload, raw) for key in keys):
        raise SignatureError("signature does not verify with any configured key")
    fields = parse_payload(payload)
    if fields.type != SIGNATURE_TYPE:
        raise SignatureError(f"payload type is {fields.type!r}, not {SIGNATURE_TYPE!r}")
    if fields.digest != digest:
        raise SignatureError(f"payload signs {fields.digest}, not {digest}")
    if not _same_repository(fields.docker_reference, repository, registries):
        raise SignatureError(
            f"payload names {fields.docker_reference!r}, not repository {repository!r}"
        )
    return fields


# --- signing (tests, the sandbox) ---------------------------------------------------------


class Signer:
    """A private key that makes cosign-format signatures (ECDSA P-256 by default)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def generate(cls, algorithm: str = "ecdsa-p256") -> Signer:
        if algorithm == "ed25519":
            return cls(ed25519.Ed25519PrivateKey.generate())
        if algorithm != "ecdsa-p256":
            raise SignatureError(f"unknown algorithm {algorithm!r}")
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise SignatureError("only ECDSA P-256 and Ed25519 private keys sign")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: bytes) -> str:
        """The base64 signature over ``payload``, as cosign puts it in the annotation."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            raw = self.key.sign(payload)
        else:
            raw = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class SignatureImage:
    """A signature manifest and the blobs it references, ready to push under
    :func:`artifact_tag` of the signed digest."""

    manifest: bytes
    media_type: str
    blobs: tuple[bytes, ...]  # the config, then each payload

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def _descriptor(media_type: str, body: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return {"mediaType": media_type, "size": len(body), "digest": digest}


def signature_image(signed: Sequence[tuple[bytes, str]]) -> SignatureImage:
    """The ``.sig`` manifest cosign writes for (payload, base64 signature) pairs."""
    diff_ids = ["sha256:" + hashlib.sha256(p).hexdigest() for p, _ in signed]
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    layers = [
        {**_descriptor(SIMPLESIGNING, p), "annotations": {SIGNATURE_ANNOTATION: s}}
        for p, s in signed
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config),
        "layers": layers,
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    return SignatureImage(body, OCI_MANIFEST, (config, *(p for p, _ in signed)))
