"""Artifacts that follow their image: kinds, the region's policy, plan entries, verdicts.

Pure: no network, clock or database. :mod:`warmer.warm.discover` finds the artifacts
through a mirror; :func:`warmer.warm.resolve.resolve` attaches them to each
:class:`~warmer.warm.plan.WantedImage` (``artifacts``), so the planner plans them with the
image, through the same tiers, against the same budget, window and rate limit.

Kinds (``regions.NAME.artifacts.kinds``)
    ``signatures`` (cosign ``sha256-<hex>.sig`` tags; sigstore bundles and cosign/notary
    signatures as OCI 1.1 referrers), ``attestations`` (``.att``; in-toto / DSSE
    referrers), ``sbom`` (``.sbom``; SPDX / CycloneDX / syft referrers), ``all``, ``none``.
    Default ``["signatures"]``. ``types`` allow-lists more referrer ``artifactType`` values.
    A verifying policy (``verify.keys``, ``verify.identities``) implies ``signatures``.

What is looked for
    For each digest of the image (its index and the selected platform manifests): one tag
    per kind, and the referrers (the OCI 1.1 API with paging where the registry answers
    it, else the fallback tag ``sha256-<hex>``, an index of the referrers). Then, to
    ``depth`` levels (default 2), the same for each artifact found that is not a signature
    (an SBOM's signature, an attestation's). Every lookup is one manifest request.

How a client finds them at a mirror
    By tag: so a cosign tag or fallback index is planned *by its tag* through each mirror
    (the mirror then holds the tag), a referrer manifest by digest, blobs by digest.

API for other parts (refresh, verify, export/import, status)
    :class:`ArtifactPolicy` ``.from_config(region.artifacts)``; :class:`Artifact` (what
    discovery returns); :func:`plan_blobs` (artifacts as plan entries); :func:`per_image`
    (count and bytes of artifacts per image in a plan); :func:`signature_verdict` (whether
    an image's signatures verify, and why not).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from warmer.oci.cosign import (
    TAG_SUFFIXES,
    PublicKey,
    SignatureError,
    check_signature,
    load_public_keys,
    signature_layers,
)
from warmer.oci.keyless import PUBLIC_GOOD, KeylessPolicy, SignerIdentity
from warmer.warm.plan import Blob, Plan

if TYPE_CHECKING:
    from warmer.config import ArtifactsConfig

KINDS = tuple(TAG_SUFFIXES)  # signatures, attestations, sbom: cosign's tag order
REFERRERS = "referrers"  # the kind of a fallback-tag index listing referrers
_TYPES: Mapping[str, frozenset[str]] = {
    "signatures": frozenset(
        {
            "application/vnd.dev.sigstore.bundle.v0.3+json",
            "application/vnd.dev.sigstore.bundle+json;version=0.3",
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.dev.cosign.simplesigning.v1+json",
            "application/vnd.cncf.notary.signature",
        }
    ),
    "attestations": frozenset(
        {
            "application/vnd.in-toto+json",
            "application/vnd.dsse.envelope.v1+json",
            "application/vnd.dev.cosign.artifact.att.v1+json",
        }
    ),
    "sbom": frozenset(
        {
            "application/spdx+json",
            "text/spdx",
            "application/vnd.cyclonedx+json",
            "application/vnd.cyclonedx+xml",
            "application/vnd.syft+json",
            "application/vnd.dev.cosign.artifact.sbom.v1+json",
        }
    ),
}


@dataclass(frozen=True)
class ArtifactPolicy:
    """A region's artifact settings, keys loaded. ``kinds`` empty and ``types`` empty:
    nothing is looked for (``none``)."""

    kinds: frozenset[str] = frozenset({"signatures"})
    types: frozenset[str] = frozenset()
    depth: int = 2
    keys: tuple[PublicKey, ...] = ()
    keyless: KeylessPolicy | None = None

    @classmethod
    def from_config(cls, config: ArtifactsConfig) -> ArtifactPolicy:
        kinds: set[str] = set(config.kinds)
        if "all" in kinds:
            kinds = set(KINDS)
        kinds.discard("none")
        verify = config.verify
        keys = tuple(load_public_keys(verify.keys))
        keyless = None
        if verify.identities:
            who = [
                SignerIdentity(i.identity or i.identity_regexp or "", i.issuer, not i.identity)
                for i in verify.identities
            ]
            keyless = KeylessPolicy.load(verify.trusted_root or PUBLIC_GOOD, who)
        if keys or keyless:
            kinds.add("signatures")
        return cls(frozenset(kinds), frozenset(config.types), config.depth, keys, keyless)

    @property
    def active(self) -> bool:
        return self.depth > 0 and bool(self.kinds or self.types)

    @property
    def verifying(self) -> bool:
        return bool(self.keys) or self.keyless is not None

    def tag_kinds(self) -> list[str]:
        """The kinds looked for as cosign tags, in cosign's order."""
        return [k for k in KINDS if k in self.kinds]

    def kind_of_type(self, artifact_type: str) -> str | None:
        """The kind a referrer of ``artifact_type`` is warmed as, or None: not wanted."""
        base = artifact_type.split(";", 1)[0].strip().lower()
        for kind in KINDS:
            if kind in self.kinds and (artifact_type in _TYPES[kind] or base in _TYPES[kind]):
                return kind
        return "other" if artifact_type in self.types else None


@dataclass(frozen=True)
class Artifact:
    """One artifact manifest attached to ``subject`` (an image or artifact digest).

    ``tag`` is the tag a client finds it by (a cosign tag, or the fallback tag of a
    referrers index), None for a referrer found through an index (fetched by digest).
    ``data`` is the manifest's parsed JSON (for signatures: their layers' annotations).
    """

    subject: str
    kind: str  # signatures | attestations | sbom | other | referrers (a fallback index)
    digest: str
    size: int
    media_type: str
    tag: str | None
    blobs: tuple[Blob, ...] = ()
    artifact_type: str = ""
    level: int = 1
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def bytes(self) -> int:
        return self.size + sum(b.size for b in self.blobs)


def plan_blobs(artifacts: Iterable[Artifact]) -> tuple[Blob, ...]:
    """Artifacts as plan entries: each manifest (by its tag when it has one), then its
    blobs, all marked ``artifact``; repeated digests once."""
    seen: set[str] = set()
    out: list[Blob] = []
    for a in artifacts:
        entries = [Blob(a.digest, a.size, "manifest", a.media_type, a.tag or "", True)]
        entries += [Blob(b.digest, b.size, "blob", b.media_type, "", True) for b in a.blobs]
        for entry in entries:
            if entry.digest not in seen:
                seen.add(entry.digest)
                out.append(entry)
    return tuple(out)


def summary(artifacts: Sequence[Artifact]) -> dict[str, int]:
    """``{"count": artifact manifests, "bytes": their manifests and blobs}`` (distinct)."""
    blobs = plan_blobs(artifacts)
    return {
        "count": sum(1 for b in blobs if b.kind == "manifest"),
        "bytes": sum(b.size for b in blobs),
    }


def per_image(plan: Plan) -> dict[str, dict[str, int]]:
    """Artifacts each planned image brings, over all mirrors: ``{"count", "bytes",
    "items"}`` (count and bytes of distinct artifact manifests and blobs; items planned)."""
    out: dict[str, dict[str, int]] = {}
    seen: set[tuple[str, str]] = set()
    for item in plan.items:
        if not item.artifact:
            continue
        row = out.setdefault(item.image, {"count": 0, "bytes": 0, "items": 0})
        row["items"] += 1
        if (item.image, item.digest) in seen:
            continue
        seen.add((item.image, item.digest))
        row["bytes"] += item.size
        row["count"] += item.kind == "manifest"
    return out


def signature_verdict(
    signatures: Sequence[tuple[Mapping[str, Any], Mapping[str, bytes]]],
    policy: ArtifactPolicy,
    digest: str,
    repository: str,
    registries: Collection[str] = (),
    bundles: Sequence[bytes] = (),
) -> str | None:
    """None when one signature of ``digest`` verifies under ``policy``, else the reason
    none does.

    ``signatures``: each ``.sig`` manifest (parsed JSON) with its payloads by digest (the
    payloads that could not be read are absent), checked with the policy's keys;
    ``bundles``: the sigstore bundles (JSON) attached to ``digest`` as referrers, checked
    with its keyless policy.
    """
    reasons: list[str] = []
    if policy.keys:
        for manifest, payloads in signatures:
            layers = signature_layers(manifest)
            if not layers:
                reasons.append("signature manifest has no cosign signature layer")
            for layer in layers:
                payload = payloads.get(layer.digest)
                if payload is None:
                    reasons.append(f"payload {layer.digest} could not be read")
                    continue
                try:
                    check_signature(
                        payload, layer.signature, policy.keys, digest, repository, registries
                    )
                except SignatureError as exc:
                    reasons.append(str(exc))
                    continue
                return None
    if policy.keyless is not None:
        for body in bundles:
            try:
                policy.keyless.check(body, digest)
            except SignatureError as exc:
                reasons.append(str(exc))
                continue
            return None
    if not reasons:
        wanted = " or ".join(
            what
            for what, on in (("cosign signature", policy.keys), ("sigstore bundle", policy.keyless))
            if on
        )
        return f"unsigned: no {wanted or 'signature'} found"
    return "; ".join(dict.fromkeys(reasons))
