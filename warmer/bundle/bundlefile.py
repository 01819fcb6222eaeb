"""``bundle.json``: what an air-gap bundle holds and the checksum of every file in it.

It sits next to the OCI layout (``oci-layout``, ``index.json``, ``blobs/``) and lists each
image (name, tag, digest, platforms, the manifests and blobs it needs) and the sha256 of
every file written. A delta bundle (``since``) omits blobs its base bundle already carried;
:meth:`Bundle.omitted_blobs` says which, so an import can check the target has them.
Everything here is pure: reading and writing the file happen at the edges.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from warmer.bundle.ocilayout import DIGEST_RE, blob_relpath, digest_for_relpath, safe_relpath

BUNDLE_FILE = "bundle.json"
FORMAT: Final = "warmer-bundle/1"


class BundleFormatError(ValueError):
    """``bundle.json`` is missing, not JSON, or not a bundle this version understands."""


# Every value of bundle.json becomes a file name, a URL path or a header at the target: each
# is checked against its grammar on load (a sha256/sha512 digest, a repository path and tag
# as in an image reference, a size within reason, a relative path inside the bundle).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE_RE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_ARTIFACT_TAG_RE = re.compile(r"^sha256-[a-f0-9]{64}(\.sig|\.att|\.sbom)?$")
MAX_SIZE = 1 << 42  # 4 TiB: more than any layer, less than anything absurd


def _digest(value: str) -> str:
    if not DIGEST_RE.match(value):
        raise ValueError(f"not a sha256/sha512 digest: {value[:80]!r}")
    return value


def _media_type(value: str) -> str:
    if value and not _MEDIA_TYPE_RE.match(value):
        raise ValueError(f"not a media type: {value[:80]!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlobRecord(_Strict):
    digest: str
    size: int = Field(ge=0, le=MAX_SIZE)
    media_type: str = ""

    check_digest = field_validator("digest")(_digest)
    check_media_type = field_validator("media_type")(_media_type)


class ManifestRecord(_Strict):
    """A manifest the image needs, in push order (platform manifests before their index)."""

    digest: str
    size: int = Field(ge=0, le=MAX_SIZE)
    media_type: str
    platform: str | None = None

    check_digest = field_validator("digest")(_digest)
    check_media_type = field_validator("media_type")(_media_type)


class ArtifactRecord(_Strict):
    """A signature, attestation, SBOM or referrer attached to an image (or to another
    artifact: ``subject``), with the tag a client finds it by (``sha256-<hex>.sig``, the
    fallback tag ``sha256-<hex>`` of a referrers index; None: a referrer, by digest)."""

    kind: Literal["signatures", "attestations", "sbom", "other", "referrers"]
    subject: str
    digest: str
    size: int = Field(ge=0, le=MAX_SIZE)
    media_type: str
    tag: str | None = None
    blobs: list[BlobRecord] = Field(default_factory=list)

    check_digests = field_validator("digest", "subject")(_digest)
    check_media_type = field_validator("media_type")(_media_type)

    @field_validator("tag")
    @classmethod
    def check_tag(cls, value: str | None) -> str | None:
        if value is not None and not _ARTIFACT_TAG_RE.match(value):
            raise ValueError(f"not an artifact tag: {value[:80]!r}")
        return value


class ImageRecord(_Strict):
    name: str = Field(
        description="canonical reference as asked, e.g. docker.io/library/python:3.12"
    )
    registry: str
    repository: str
    tag: str | None
    digest: str = Field(description="what the tag points to in this bundle")
    source_digest: str = Field(
        description="what it pointed to at the source (differs when filtered)"
    )
    media_type: str
    platforms: list[str]
    manifests: list[ManifestRecord]
    blobs: list[BlobRecord]
    artifacts: list[ArtifactRecord] = Field(
        default_factory=list, description="pushed after the image, by tag; indexes last"
    )

    check_digests = field_validator("digest", "source_digest")(_digest)
    check_media_type = field_validator("media_type")(_media_type)

    def all_blobs(self) -> list[BlobRecord]:
        """The image's blobs, then its artifacts' blobs (repeats left in)."""
        return [*self.blobs, *(b for a in self.artifacts for b in a.blobs)]

    @field_validator("repository")
    @classmethod
    def check_repository(cls, value: str) -> str:
        if len(value) > 255 or not _REPOSITORY_RE.match(value):
            raise ValueError(f"not a repository name: {value[:80]!r}")
        return value

    @field_validator("tag")
    @classmethod
    def check_tag(cls, value: str | None) -> str | None:
        if value is not None and not _TAG_RE.match(value):
            raise ValueError(f"not a tag: {value[:80]!r}")
        return value


class SinceRecord(_Strict):
    created: datetime
    sha256: str = Field(description="sha256 of the base bundle.json")
    source: str


class Bundle(_Strict):
    format: Literal["warmer-bundle/1"] = FORMAT
    created: datetime
    source: str
    since: SinceRecord | None = None
    images: list[ImageRecord] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 hex")

    @field_validator("files")
    @classmethod
    def check_files(cls, value: dict[str, str]) -> dict[str, str]:
        for path, hexdigest in value.items():
            safe_relpath(path)
            if not _HEX64_RE.match(hexdigest):
                raise ValueError(f"{path[:80]!r}: not a sha256 hex checksum")
        return value

    def blob_files(self) -> set[str]:
        """Digests of the blobs (manifests included) this bundle carries."""
        return {d for d in (digest_for_relpath(p) for p in self.files) if d is not None}

    def omitted_blobs(self) -> list[BlobRecord]:
        """Blobs the images need that a delta left out (its base bundle carried them)."""
        have = self.blob_files()
        seen: set[str] = set()
        out: list[BlobRecord] = []
        for image in self.images:
            for blob in image.all_blobs():
                if blob.digest not in have and blob.digest not in seen:
                    seen.add(blob.digest)
                    out.append(blob)
        return out

    def missing_manifests(self) -> list[str]:
        """Manifests images need but the bundle lacks: always an error (deltas keep them)."""
        have = self.blob_files()
        needed = {m.digest for i in self.images for m in i.manifests}
        needed |= {a.digest for i in self.images for a in i.artifacts}
        return sorted(needed - have)

    def dumps(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def loads(data: bytes, where: str = BUNDLE_FILE) -> Bundle:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{where}: not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise BundleFormatError(f"{where}: not a {FORMAT} bundle (format={found!r})")
    try:
        return Bundle.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleFormatError(f"{where}: {loc}: {first['msg']}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_problems(bundle: Bundle, actual: dict[str, str | None]) -> list[str]:
    """Compare listed checksums with ``actual`` (path -> sha256 hex, None when absent).

    A blob's file name is its digest, so a blob is also checked against its own name: a
    tampered blob cannot be hidden by editing ``bundle.json`` too.
    """
    problems: list[str] = []
    for path, want in sorted(bundle.files.items()):
        got = actual.get(path)
        if got is None:
            problems.append(f"{path}: missing")
            continue
        if got != want:
            problems.append(f"{path}: checksum mismatch (sha256 {got}, bundle.json says {want})")
            continue
        digest = digest_for_relpath(path)
        if digest is not None and digest.startswith("sha256:") and digest[7:] != got:
            problems.append(f"{path}: content does not match its digest name")
    for digest in bundle.missing_manifests():
        problems.append(f"{blob_relpath(digest)}: manifest needed by an image but not in bundle")
    return problems
