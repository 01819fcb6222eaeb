"""Read a bundle from a directory or from an uncompressed tar, without unpacking the tar.

A plain tar allows random access: members are located once from their headers and then
read in place, so importing a tar needs no extra disk space.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import IO, Protocol

from warmer.bundle.bundlefile import BUNDLE_FILE, Bundle, BundleFormatError, loads
from warmer.bundle.ocilayout import hash_stream, safe_relpath

MAX_BUNDLE_FILE = 64 * 1024 * 1024


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
    """Members are read in place, never extracted; a tar whose member list cannot be read
    to its end, or that holds anything but plain files and directories under safe relative
    names (no absolute path, no ``..``, no link or device), is refused as a whole."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            # Plain tar only, so members are read in place; closed by close().
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115
        except (tarfile.TarError, OSError) as exc:
            raise BundleFormatError(f"{path}: not an uncompressed tar ({exc})") from None
        try:
            members = self._tar.getmembers()
            self._members = {}
            for m in members:
                name = m.name.removeprefix("./")
                if m.isdir() and name.rstrip("/") in ("", "."):
                    continue
                if m.isdir():
                    name = name.rstrip("/")
                try:
                    safe_relpath(name)
                except ValueError as exc:
                    raise BundleFormatError(f"{path}: member {exc}") from None
                if m.isfile():
                    self._members[name] = m
                elif not m.isdir():
                    kind = "link" if m.issym() or m.islnk() else "special file"
                    raise BundleFormatError(
                        f"{path}: member {name!r} is a {kind}; a bundle holds only files"
                    )
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._tar.close()
            raise BundleFormatError(f"{path}: damaged tar ({exc})") from None
        except BundleFormatError:
            self._tar.close()
            raise

    def exists(self, relpath: str) -> bool:
        return relpath in self._members

    def open(self, relpath: str) -> IO[bytes]:
        member = self._members.get(relpath)
        if member is None:
            raise BundleFormatError(f"{self.where}: no member {relpath}")
        try:
            f = self._tar.extractfile(member)
        except (tarfile.TarError, OSError) as exc:
            raise BundleFormatError(f"{self.where}: {relpath}: unreadable ({exc})") from None
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
    try:
        with source.open(BUNDLE_FILE) as f:
            data = f.read(MAX_BUNDLE_FILE + 1)
    except (tarfile.TarError, OSError) as exc:
        raise BundleFormatError(f"{source.where}/{BUNDLE_FILE}: unreadable ({exc})") from None
    if len(data) > MAX_BUNDLE_FILE:
        raise BundleFormatError(f"{source.where}/{BUNDLE_FILE}: larger than 64 MiB")
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
        try:
            with source.open(rel) as f:
                out[rel] = hash_stream(f)[0]
        except (tarfile.TarError, OSError) as exc:
            # a truncated tar or an unreadable file: a problem named like a missing one
            raise BundleFormatError(f"{source.where}: {rel}: unreadable ({exc})") from None
    return out
