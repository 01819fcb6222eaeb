"""Manifests as data: media types, descriptors, platforms, parsing and platform selection.

Everything here is pure (no I/O): :mod:`warmer.oci.registry` fetches bytes and hands them to
:func:`parse_manifest`; :func:`select_platforms` picks the entries of an index.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from warmer.oci.validate import InvalidValue, check_digest, check_media_type, check_size

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
#: Sent as ``Accept`` on every manifest request (schema 1 deliberately left out).
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

DEFAULT_PLATFORM_TEXT = "linux/amd64"

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm"}
# Variants that are the default for their architecture, so "linux/arm64" == "linux/arm64/v8".
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1"}
# What an index's platform fields may hold (os, architecture, variant: "linux", "arm64", "v8").
_PLATFORM_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


class ManifestFormatError(ValueError):
    """Bytes that are not a manifest this tool can use; the message says why."""


class SchemaOneManifest(ManifestFormatError):
    """A Docker v2 schema 1 manifest: deprecated, unsigned content addressing, refused."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_hasher(digest: str) -> Any:
    """A hashlib object for ``digest``'s algorithm (sha256 or sha512)."""
    algorithm, _, hexpart = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not hexpart:
        raise ManifestFormatError(f"unsupported digest {digest!r}")
    return hashlib.new(algorithm)


def digest_of(data: bytes, like: str = "sha256:0") -> str:
    """The digest of ``data`` in the algorithm of the digest ``like``."""
    h = new_hasher(like)
    h.update(data)
    return f"{like.partition(':')[0]}:{h.hexdigest()}"


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``, normalised (``aarch64`` -> ``arm64``)."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(
                f"invalid platform {text!r}: expected os/architecture[/variant], "
                "e.g. linux/amd64 or linux/arm64/v8"
            )
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, data: Any, where: str = "platform") -> Platform | None:
        """A descriptor's ``platform`` object; ``None`` when absent or without os and
        architecture. A field that is there but not a plain word is a ManifestFormatError
        (it would end up in messages and choices)."""
        if not isinstance(data, dict):
            return None
        os_, arch, variant = data.get("os"), data.get("architecture"), data.get("variant")
        if not isinstance(os_, str) or not isinstance(arch, str):
            return None
        for value in (os_, arch, variant) if isinstance(variant, str) else (os_, arch):
            if not _PLATFORM_WORD.fullmatch(value):
                raise ManifestFormatError(f"{where}: invalid platform field {value[:40]!r}")
        return cls(
            os_, _ARCH_ALIASES.get(arch, arch), variant if isinstance(variant, str) else None
        )

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def _variant(self) -> str | None:
        return self.variant or _DEFAULT_VARIANT.get(self.architecture)


DEFAULT_PLATFORM = Platform.parse(DEFAULT_PLATFORM_TEXT)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        if not isinstance(data, dict):
            raise ManifestFormatError(f"{where}: descriptor is not an object")
        try:
            digest = check_digest(data.get("digest"), "digest")
        except InvalidValue as exc:
            raise ManifestFormatError(
                f"{where}: descriptor without a valid digest ({exc})"
            ) from None
        try:
            size = check_size(data.get("size"), "size")
        except InvalidValue as exc:
            raise ManifestFormatError(
                f"{where}: descriptor {digest} without a valid size ({exc})"
            ) from None
        media_type = data.get("mediaType")
        if media_type is not None:
            try:
                media_type = check_media_type(media_type, "mediaType")
            except InvalidValue as exc:
                raise ManifestFormatError(f"{where}: descriptor {digest}: {exc}") from None
        return cls(
            media_type or "",
            digest,
            size,
            Platform.from_json(data.get("platform"), f"{where} platform"),
        )


@dataclass(frozen=True)
class ManifestHead:
    digest: str
    media_type: str
    size: int


@dataclass
class Manifest:
    digest: str
    media_type: str
    body: bytes
    data: dict[str, Any] = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def manifests(self) -> list[Descriptor]:
        if not self.is_index:
            return []
        return [
            Descriptor.from_json(d, f"manifest {self.digest} entry {i}")
            for i, d in enumerate(_list(self.data, "manifests", self.digest))
        ]

    @property
    def config(self) -> Descriptor | None:
        if self.is_index or "config" not in self.data:
            return None
        return Descriptor.from_json(self.data["config"], f"manifest {self.digest} config")

    @property
    def layers(self) -> list[Descriptor]:
        if self.is_index:
            return []
        return [
            Descriptor.from_json(d, f"manifest {self.digest} layer {i}")
            for i, d in enumerate(_list(self.data, "layers", self.digest))
        ]


def _list(data: dict[str, Any], key: str, digest: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestFormatError(f"manifest {digest}: {key!r} is not a list")
    return value


#: The largest manifest read (OCI's distribution spec has registries accept at least 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024


def parse_manifest(body: bytes, digest: str, content_type: str | None) -> Manifest:
    """Parse and check a manifest body; raise :class:`ManifestFormatError` if unusable."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in SCHEMA1_TYPES:
        raise SchemaOneManifest(f"manifest {digest} is Docker schema 1 ({ctype}), not supported")
    if len(body) > MAX_MANIFEST:
        raise ManifestFormatError(f"manifest {digest} is larger than {MAX_MANIFEST} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a number too long, too deep
        raise ManifestFormatError(f"manifest {digest} is not JSON") from None
    if not isinstance(data, dict):
        raise ManifestFormatError(f"manifest {digest} is not a JSON object")
    if data.get("schemaVersion") == 1:
        raise SchemaOneManifest(f"manifest {digest} is Docker schema 1, not supported")
    body_type = data.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestFormatError(f"manifest {digest} has a mediaType that is not a string")
    media_type = body_type or (ctype if ctype in INDEX_TYPES | IMAGE_TYPES else None)
    if media_type is None:
        # OCI allows mediaType to be absent; tell index from image by shape.
        if "manifests" in data:
            media_type = OCI_INDEX
        elif "layers" in data and "config" in data:
            media_type = OCI_MANIFEST
    if media_type not in INDEX_TYPES | IMAGE_TYPES:
        shown = (media_type or ctype or "unknown")[:80]
        raise ManifestFormatError(f"manifest {digest} has unsupported media type {shown!r}")
    manifest = Manifest(digest, media_type, body, data)
    # Validate descriptors now so later property access cannot fail half-way.
    _ = manifest.manifests, manifest.config, manifest.layers
    return manifest


def _matches(want: Platform, have: Platform) -> bool:
    if (want.os, want.architecture) != (have.os, have.architecture):
        return False
    return want.variant is None or want._variant() == have._variant()


def _variant_rank(want: Platform, have: Platform) -> tuple[int, int, int]:
    # Exact variant first, then an entry without variant, then the highest variant (v8 > v7).
    exact = 0 if have._variant() == want._variant() else 1
    digits = "".join(c for c in (have.variant or "") if c.isdigit())
    return exact, 0 if have.variant is None else 1, -int(digits or 0)


def select_platforms(
    entries: Sequence[Descriptor], platforms: Sequence[Platform]
) -> list[Descriptor]:
    """One entry per wanted platform (best variant), in the order asked, without repeats."""
    chosen: list[Descriptor] = []
    for want in platforms or [DEFAULT_PLATFORM]:
        candidates = [d for d in entries if d.platform is not None and _matches(want, d.platform)]
        if not candidates:
            continue
        best = min(candidates, key=lambda d: _variant_rank(want, d.platform or want))
        if best not in chosen:
            chosen.append(best)
    return chosen


@dataclass
class ImageTree:
    """What one tag or digest resolves to, for the platforms asked."""

    repository: str
    reference: str
    digest: str
    media_type: str
    size: int
    index: Manifest | None
    images: list[tuple[Descriptor, Manifest]]

    def blobs(self) -> list[Descriptor]:
        """Configs and layers of the selected images, de-duplicated, in order."""
        seen: set[str] = set()
        out: list[Descriptor] = []
        for _, manifest in self.images:
            config = manifest.config
            for d in ([config] if config else []) + manifest.layers:
                if d.digest not in seen:
                    seen.add(d.digest)
                    out.append(d)
        return out

    def manifest_digests(self) -> list[tuple[str, int]]:
        """(digest, size) of the index first (when any), then each platform manifest."""
        out: list[tuple[str, int]] = []
        if self.index is not None:
            out.append((self.index.digest, self.index.size))
        for _, manifest in self.images:
            item = (manifest.digest, manifest.size)
            if item not in out:
                out.append(item)
        return out

    def platforms(self) -> list[Platform]:
        return [d.platform for d, _ in self.images if d.platform is not None]

    def total_size(self) -> int:
        """Bytes of manifests and distinct blobs: what a cold pull moves."""
        return sum(size for _, size in self.manifest_digests()) + sum(d.size for d in self.blobs())
