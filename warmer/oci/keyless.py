"""Keyless sigstore bundles: verified offline against a trusted root and signer identities.

Newer cosign (``cosign sign`` / ``attest`` with the new bundle format, the default since
cosign 3) and GitHub's artifact attestations attach a **sigstore bundle** (media type
:data:`BUNDLE_TYPES`) to an image as an OCI 1.1 referrer: one layer, the bundle's JSON. The
bundle holds a DSSE envelope over an in-toto statement whose ``subject`` names the image
digest, the short-lived Fulcio certificate of the signer (an OIDC identity and its issuer)
and the Rekor transparency-log entry that proves when it was signed.

:class:`KeylessPolicy` checks one bundle the way ``cosign verify --certificate-identity
--certificate-oidc-issuer`` does offline, with sigstore-python's verifier (the well-kept
implementation of the sigstore client spec; this module only chooses what to trust and
checks the statement): the certificate chains to a certificate authority of the trusted
root at the log's time, its SCT and the log entry (inclusion proof, signed checkpoint and
promise) verify against the root's CT and Rekor keys, the certificate names one of the
configured identities with its issuer, the DSSE signature verifies with the certificate's
key, and the statement (in-toto) names the image digest. The payload's ``name`` is not
compared with the repository: cosign's bundle statements may omit it (the digest is what
is signed).

The trusted root is a file (``trusted_root.json``, the sigstore ``TrustedRoot`` format, as
``cosign trusted-root create`` or a private sigstore deployment writes it) or
``"public-good"``: the public sigstore instance's root as shipped inside the installed
sigstore-python, read offline (never refreshed over the network by the warmer).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from warmer.oci.cosign import SignatureError
from warmer.oci.validate import InvalidValue, check_digest, shown

__all__ = [
    "BUNDLE_TYPES",
    "IN_TOTO",
    "MAX_BUNDLE",
    "PUBLIC_GOOD",
    "KeylessPolicy",
    "SignerIdentity",
    "is_bundle_type",
    "load_trusted_root",
]

#: The media types of a sigstore bundle (as a referrer's artifactType and its layer's type).
BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    }
)
IN_TOTO = "application/vnd.in-toto+json"
#: The special trusted root: the public sigstore instance's, shipped with sigstore-python.
PUBLIC_GOOD = "public-good"
#: The largest bundle read: a certificate, a log entry and a small statement are a few KB.
MAX_BUNDLE = 1024 * 1024

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # sigstore-python is imported when a policy is loaded: it is heavy
    from cryptography.x509 import Certificate
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import VerificationPolicy


def is_bundle_type(media_type: str) -> bool:
    """Whether ``media_type`` (an artifactType or a layer's mediaType) is a sigstore bundle."""
    return media_type in BUNDLE_TYPES or media_type.replace(" ", "") in BUNDLE_TYPES


@dataclass(frozen=True)
class SignerIdentity:
    """Who may sign: the certificate's subject (an email or a workflow URI) and the OIDC
    issuer that vouched for it (as cosign's ``--certificate-identity`` and
    ``--certificate-oidc-issuer``). With ``regexp`` the identity is a regular expression
    the subject must match whole (``--certificate-identity-regexp``: a workflow signing at
    any tag); the issuer is always exact."""

    identity: str
    issuer: str
    regexp: bool = False

    def __str__(self) -> str:
        return f"{self.identity} ({self.issuer})"

    def policy(self) -> VerificationPolicy:
        """The sigstore-python verification policy for this identity."""
        from sigstore.verify import policy

        if not self.regexp:
            return policy.Identity(identity=self.identity, issuer=self.issuer)
        return _IdentityPattern(re.compile(self.identity), policy.OIDCIssuer(self.issuer))


#: The Sigstore "other name" SAN type (an identity that is neither an email nor a URI).
_OTHERNAME_OID = "1.3.6.1.4.1.57264.1.7"
MAX_SAN = 4096  # characters: a longer subject alternative name is not matched


class _IdentityPattern:
    """A verification policy: the OIDC issuer (exact), then a subject alternative name
    (email, URI or Sigstore other name) that ``pattern`` matches whole. Runs after the
    certificate chained to the trusted root, so the names come from a trusted issuer."""

    def __init__(self, pattern: re.Pattern[str], issuer: VerificationPolicy) -> None:
        self.pattern = pattern
        self.issuer = issuer

    def verify(self, cert: Certificate) -> None:
        from cryptography.x509 import (
            OtherName,
            RFC822Name,
            SubjectAlternativeName,
            UniformResourceIdentifier,
        )
        from sigstore.errors import VerificationError

        self.issuer.verify(cert)
        names = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
        sans: list[str] = [*names.get_values_for_type(RFC822Name)]
        sans += names.get_values_for_type(UniformResourceIdentifier)
        for other in names.get_values_for_type(OtherName):
            if other.type_id.dotted_string == _OTHERNAME_OID:
                sans.append(_utf8_string(other.value))
        if not any(len(n) <= MAX_SAN and self.pattern.fullmatch(n) for n in sans):
            raise VerificationError(
                f"Certificate's SANs do not match {self.pattern.pattern!r}; "
                f"actual SANs: {sorted(sans)}"
            )


def _utf8_string(der: bytes) -> str:
    """The text of a DER UTF8String (an other-name SAN's value); the bytes as text if they
    are not one."""
    if len(der) >= 2 and der[0] == 0x0C:
        size, start = der[1], 2
        if size & 0x80:  # long form: the next (size & 0x7f) bytes hold the length
            start = 2 + (size & 0x7F)
            size = int.from_bytes(der[2:start], "big")
        if start + size == len(der):
            return der[start:].decode("utf-8", "replace")
    return der.decode("utf-8", "replace")


def load_trusted_root(spec: str, where: str = "trusted root") -> TrustedRoot:
    """The sigstore ``TrustedRoot`` named by ``spec`` (a file, or :data:`PUBLIC_GOOD`);
    raises SignatureError with why when it cannot be used."""
    from sigstore.models import ClientTrustConfig, TrustedRoot

    try:
        if spec == PUBLIC_GOOD:
            # offline: the root shipped inside the installed sigstore-python (its TUF cache
            # is seeded from it); the warmer never refreshes it over the network. The
            # library warns that offline means no updates: that is the point, so quiet.
            tuf_log = logging.getLogger("sigstore._internal.tuf")
            level = tuf_log.level
            tuf_log.setLevel(logging.ERROR)
            try:
                return ClientTrustConfig.production(offline=True).trusted_root
            finally:
                tuf_log.setLevel(level)
        return TrustedRoot.from_file(str(Path(spec)))
    except OSError as exc:
        raise SignatureError(f"{where} {spec}: {exc.strerror or exc}") from None
    except Exception as exc:  # sigstore raises several kinds for a malformed root
        raise SignatureError(f"{where} {spec}: not a sigstore trusted root ({exc})") from None


def _reason(exc: BaseException) -> str:
    """A verifier's message fit for a log line: certificate values in it come from the
    network, so it is cut and escaped when it is not plain text."""
    text = " ".join(str(exc).split())
    if len(text) > 200 or not text.isprintable():
        return shown(text)
    return text


def _statement_subjects(payload: bytes) -> list[str]:
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("bundle payload is not a JSON in-toto statement") from None
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    if not isinstance(subjects, list):
        raise SignatureError("bundle statement has no subject list")
    digests: list[str] = []
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict):
            continue
        value = subject["digest"].get("sha256")
        try:
            digests.append(check_digest(f"sha256:{value}", "statement subject digest"))
        except InvalidValue:
            continue
    return digests


@dataclass(frozen=True)
class KeylessPolicy:
    """A region's keyless verification: a trusted root and the identities allowed to sign."""

    verifier: Verifier  # sigstore-python's, over the trusted root
    identities: tuple[SignerIdentity, ...]

    @classmethod
    def load(cls, trusted_root: str, identities: Sequence[SignerIdentity]) -> KeylessPolicy:
        if not identities:
            raise SignatureError(
                "keyless verification needs identities: without them a certificate of any "
                "identity the root's authority issued would pass"
            )
        from sigstore.errors import Error as SigstoreError
        from sigstore.verify import Verifier

        root = load_trusted_root(trusted_root)
        try:
            verifier = Verifier(trusted_root=root)
        except SigstoreError as exc:  # e.g. a root without a transparency log
            raise SignatureError(f"trusted root {trusted_root}: {_reason(exc)}") from None
        return cls(verifier, tuple(identities))

    def check(self, body: bytes, digest: str) -> SignerIdentity:
        """Verify one bundle (its JSON) for image ``digest``; return the identity that
        signed it, or raise SignatureError with why not."""
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle

        if len(body) > MAX_BUNDLE:
            raise SignatureError(f"bundle is {len(body)} bytes (more than {MAX_BUNDLE})")
        try:
            bundle = Bundle.from_json(body)
        except Exception as exc:  # sigstore raises several kinds for malformed input
            raise SignatureError(f"not a sigstore bundle: {_reason(exc)}") from None
        reasons: list[str] = []
        for who in self.identities:
            try:
                kind, payload = self.verifier.verify_dsse(bundle, who.policy())
            except (SigstoreError, ValueError) as exc:
                reasons.append(_reason(exc))
                continue
            if kind != IN_TOTO:
                raise SignatureError(f"bundle payload type is {shown(kind)}, not {IN_TOTO}")
            subjects = _statement_subjects(payload)
            if digest not in subjects:
                raise SignatureError(
                    f"bundle signs {', '.join(subjects) or 'no digest'}, not {digest}"
                )
            return who
        raise SignatureError("bundle does not verify: " + "; ".join(dict.fromkeys(reasons)))
