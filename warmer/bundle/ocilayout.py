"""OCI image layout on disk: ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.

Blobs are written through :class:`BlobWriter`: bytes stream to a hidden temporary file next
to the final name, are hashed as they arrive, and the file is renamed into place only when
the digest (and size, when known) match. A crash leaves at most a temporary file, which the
next writer of that blob truncates, so a half-written blob is never mistaken for a good one.

The layout spec is small and stable, and no maintained Python package writes it with
streaming and verification, so it is written here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
#: containerd's name annotation, so ``ctr images import`` names images the same way.
CONTAINERD_NAME = "io.containerd.image.name"
CHUNK = 1024 * 1024
DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_DIGEST_RE = DIGEST_RE
_PARTIAL_SUFFIX = ".partial"


class LayoutError(Exception):
    """The layout on disk is not usable: a bad digest, a blob that does not verify."""


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a sha256/sha512 digest; it becomes a file name, so be strict."""
    if not _DIGEST_RE.match(digest):
        raise LayoutError(f"unsupported or malformed digest {digest!r}")
    return digest


def safe_relpath(relpath: str) -> str:
    """``relpath`` if it names a file inside the bundle; ValueError for an absolute path, a
    ``..`` or empty component, a backslash or a control character."""
    parts = relpath.split("/")
    if (
        not relpath
        or relpath.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\\" in relpath
        or any(ord(c) < 32 or ord(c) == 127 for c in relpath)
    ):
        raise ValueError(f"unsafe path {relpath[:80]!r}: must be relative, inside the bundle")
    return relpath


def blob_relpath(digest: str) -> str:
    algorithm, _, hexpart = check_digest(digest).partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def digest_for_relpath(relpath: str) -> str | None:
    """The digest a ``blobs/<alg>/<hex>`` path names, or None for other files."""
    parts = relpath.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        digest = f"{parts[1]}:{parts[2]}"
        if _DIGEST_RE.match(digest):
            return digest
    return None


def hash_stream(stream: IO[bytes], algorithm: str = "sha256") -> tuple[str, int]:
    """(hex digest, size) of everything left in ``stream``, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    size = 0
    while chunk := stream.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def hash_file(path: Path, algorithm: str = "sha256") -> tuple[str, int]:
    with open(path, "rb") as f:
        return hash_stream(f, algorithm)


@dataclass
class IndexEntry:
    """One ``manifests`` entry of ``index.json``: a descriptor with its name annotations."""

    media_type: str
    digest: str
    size: int
    ref_name: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = self.platform
        annotations = dict(self.annotations)
        if self.ref_name is not None:
            annotations[REF_NAME] = self.ref_name
        if annotations:
            out["annotations"] = annotations
        return out


def index_document(entries: list[IndexEntry]) -> bytes:
    """The bytes of an ``index.json`` listing ``entries`` (stable key order, one newline)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX_MEDIA_TYPE,
        "manifests": [e.to_json() for e in entries],
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def parse_index(data: bytes, where: str = INDEX_FILE) -> list[IndexEntry]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{where}: not JSON ({exc})") from None
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise LayoutError(f"{where}: no 'manifests' list")
    out: list[IndexEntry] = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("digest"), str):
            raise LayoutError(f"{where}: manifests[{i}] is not a descriptor")
        annotations = {str(k): str(v) for k, v in (e.get("annotations") or {}).items()}
        ref_name = annotations.pop(REF_NAME, None)
        out.append(
            IndexEntry(
                str(e.get("mediaType", "")),
                check_digest(e["digest"]),
                int(e.get("size", 0)),
                ref_name,
                annotations,
                e.get("platform") if isinstance(e.get("platform"), dict) else None,
            )
        )
    return out


class BlobWriter:
    """Stream one blob into the layout: hash while writing, rename only when it verifies."""

    def __init__(self, final: Path, digest: str, expected_size: int | None = None) -> None:
        self.final = final
        self.digest = digest
        self.expected_size = expected_size
        self.temp = final.with_name("." + final.name + _PARTIAL_SUFFIX)
        self._hash = hashlib.new(digest.partition(":")[0])
        self.size = 0
        self._file: IO[bytes] | None = None

    def __enter__(self) -> BlobWriter:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.temp, "wb")  # truncates a partial left by an earlier crash
        return self

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "BlobWriter used outside 'with'"
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        self._file.close()
        if exc_type is not None:
            self.temp.unlink(missing_ok=True)
            return
        got = f"{self.digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if got != self.digest or (
            self.expected_size is not None and self.size != self.expected_size
        ):
            self.temp.unlink(missing_ok=True)
            raise LayoutError(
                f"blob {self.digest}: wrote {self.size} bytes hashing to {got}"
                + (
                    f", expected {self.expected_size} bytes"
                    if self.expected_size is not None
                    else ""
                )
            )
        os.replace(self.temp, self.final)


class OciLayout:
    """A directory holding an OCI image layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def init(self) -> None:
        """Create the directory and the ``oci-layout`` marker (idempotent)."""
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = self.root / LAYOUT_FILE
        if not marker.exists():
            marker.write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}) + "\n")

    def blob_path(self, digest: str) -> Path:
        return self.root / blob_relpath(digest)

    def verified_blob(self, digest: str, size: int | None = None) -> bool:
        """True when the blob file is present and hashes to ``digest`` (resuming an export)."""
        path = self.blob_path(digest)
        if not path.is_file() or (size is not None and path.stat().st_size != size):
            return False
        hexpart, _ = hash_file(path, digest.partition(":")[0])
        return hexpart == digest.partition(":")[2]

    def blob_writer(self, digest: str, size: int | None = None) -> BlobWriter:
        return BlobWriter(self.blob_path(digest), check_digest(digest), size)

    def write_blob(self, digest: str, data: bytes) -> None:
        with self.blob_writer(digest, len(data)) as w:
            w.write(data)

    def write_index(self, entries: list[IndexEntry]) -> None:
        tmp = self.root / (INDEX_FILE + _PARTIAL_SUFFIX)
        tmp.write_bytes(index_document(entries))
        os.replace(tmp, self.root / INDEX_FILE)

    def read_index(self) -> list[IndexEntry]:
        return parse_index((self.root / INDEX_FILE).read_bytes())

    def files(self) -> Iterator[str]:
        """Relative paths of every finished file (temporary ``.partial`` files left out)."""
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.endswith(_PARTIAL_SUFFIX):
                yield path.relative_to(self.root).as_posix()

    def remove_partials(self) -> None:
        for path in self.root.rglob("*" + _PARTIAL_SUFFIX):
            path.unlink(missing_ok=True)
