"""Read a bundle from a directory or from an uncompressed tar, without unpacking the tar.

A plain tar allows random access: members are located once from their headers and then
read in place, so importing a tar needs no extra disk space.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import IO, Protocol

from warmer.bundle.bundlefile import BUNDLE_FILE, Bundle, BundleFormatError, loads
from warmer.bundle.ocilayout import hash_stream


class BundleSource(Protocol):
    where: str

    def exists(self, relpath: str) -> bool: ...

    def open(self, relpath: str) -> IO[bytes]: ...

    def size(self, relpath: str) -> int: ...

    def close(self) -> None: ...


class DirSource:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def _path(self, relpath: str) -> Path:
        path = (self.root / relpath).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise BundleFormatError(f"{relpath}: path leaves the bundle directory")
        return path

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).is_file()

    def open(self, relpath: str) -> IO[bytes]:
        return open(self._path(relpath), "rb")

    def size(self, relpath: str) -> int:
        return self._path(relpath).stat().st_size

    def close(self) -> None:
        pass


class TarSource:
    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            # Plain tar only, so members are read in place; closed by close().
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115
        except tarfile.TarError as exc:
            raise BundleFormatError(f"{path}: not an uncompressed tar ({exc})") from None
        self._members = {m.name.removeprefix("./"): m for m in self._tar.getmembers() if m.isfile()}

    def exists(self, relpath: str) -> bool:
        return relpath in self._members

    def open(self, relpath: str) -> IO[bytes]:
        f = self._tar.extractfile(self._members[relpath])
        if f is None:
            raise BundleFormatError(f"{self.where}: {relpath} is not a regular file")
        return f

    def size(self, relpath: str) -> int:
        return self._members[relpath].size

    def close(self) -> None:
        self._tar.close()


def open_source(path: Path) -> BundleSource:
    if path.is_dir():
        return DirSource(path)
    if path.is_file():
        return TarSource(path)
    raise BundleFormatError(f"{path}: no such bundle directory or tar file")


def read_bundle(source: BundleSource) -> tuple[Bundle, bytes]:
    if not source.exists(BUNDLE_FILE):
        raise BundleFormatError(f"{source.where}: no {BUNDLE_FILE} (not a warmer bundle)")
    with source.open(BUNDLE_FILE) as f:
        data = f.read()
    return loads(data, f"{source.where}/{BUNDLE_FILE}"), data


def actual_checksums(source: BundleSource, bundle: Bundle) -> dict[str, str | None]:
    """sha256 of every file ``bundle.json`` lists (None for a file that is not there)."""
    out: dict[str, str | None] = {}
    for rel in bundle.files:
        try:
            present = source.exists(rel)
        except BundleFormatError:
            present = False
        if not present:
            out[rel] = None
            continue
        with source.open(rel) as f:
            out[rel] = hash_stream(f)[0]
    return out
