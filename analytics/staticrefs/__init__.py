"""Static image references: what Dockerfiles, compose, Kubernetes and CI files name.

``scan_paths`` walks files and directories, picks the reader by file name, and reports
each ``StaticRef`` (file, line, canonical reference, kind, platform) through a callback;
it yields one warning per unresolvable or invalid reference (``file:line: ...``) or
unreadable file, and goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from analytics.ingest.reader import NotRegularFile, file_kind, open_regular
from analytics.staticrefs.dockerfiles import scan_dockerfile
from analytics.staticrefs.model import Found, StaticRef, Warn
from analytics.staticrefs.yamlfiles import scan_yaml

__all__ = ["MAX_FILE", "SKIP_DIRS", "ScanTally", "StaticRef", "classify", "scan_file", "scan_paths"]

MAX_FILE = 8 << 20
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".tox"}


def classify(path: Path) -> str | None:
    """``dockerfile``, ``compose``, ``github``, ``gitlab``, ``kubernetes`` (any other YAML)."""
    name = path.name
    lower = name.lower()
    if (
        lower in ("dockerfile", "containerfile")
        or lower.startswith(("dockerfile.", "containerfile."))
        or lower.endswith((".dockerfile", ".containerfile"))
    ):
        return "dockerfile"
    if not lower.endswith((".yml", ".yaml")):
        return None
    if lower.startswith(("docker-compose", "compose")):
        return "compose"
    if lower.endswith(".gitlab-ci.yml") or lower == ".gitlab-ci.yml":
        return "gitlab"
    if "/.github/workflows/" in "/" + path.as_posix():
        return "github"
    return "kubernetes"


@dataclass
class ScanTally:
    """Files that were not (all) read: skipped by policy, or failed (the command exits 1)."""

    scanned: int = 0
    not_regular: list[str] = field(default_factory=list)  # FIFOs, sockets, devices
    too_large: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # unreadable: nothing of it was read
    missing: list[str] = field(default_factory=list)  # named paths that do not exist

    def as_dict(self) -> dict[str, object]:
        return {
            "scanned": self.scanned,
            "not_regular": self.not_regular,
            "too_large": self.too_large,
            "unreadable": self.failed,
            "missing": self.missing,
        }


def scan_file(
    path: Path,
    found: Found,
    warn: Warn,
    kind: str | None = None,
    tally: ScanTally | None = None,
) -> bool:
    """Scan one file; False when it is not a kind of file we read.

    Only a regular file is opened (a FIFO would block forever). Invalid UTF-8 is replaced
    and named (file:line of the first bad byte); the rest of the file is still scanned.
    """
    kind = kind or classify(path)
    if kind is None:
        return False
    tally = tally if tally is not None else ScanTally()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            warn(f"{path}: {file_kind(st.st_mode)}, not a regular file; skipped")
            tally.not_regular.append(str(path))
            return True
        if st.st_size > MAX_FILE:
            warn(f"{path}: {st.st_size} bytes is too large for a {kind} file; skipped")
            tally.too_large.append(str(path))
            return True
        f, _ = open_regular(path)
        with f:
            data = f.read(MAX_FILE + 1)
    except NotRegularFile as exc:  # it became one after the stat
        warn(f"{path}: {exc.kind}, not a regular file; skipped")
        tally.not_regular.append(str(path))
        return True
    except OSError as exc:
        warn(f"{path}: cannot read: {exc.strerror or exc}")
        tally.failed.append(str(path))
        return True
    tally.scanned += 1
    text = _decode(path, data, warn)
    if kind == "dockerfile":
        scan_dockerfile(str(path), text, found, warn)
    else:
        scan_yaml(str(path), text, kind, found, warn)
    return True


def _decode(path: Path, data: bytes, warn: Warn) -> str:
    """UTF-8 text (a leading BOM dropped); invalid bytes replaced, and the first named."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        warn(f"{path}:{line}: invalid UTF-8 at byte {exc.start}; replaced, rest of file read")
        return data.decode("utf-8-sig", "replace")


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def scan_paths(
    paths: list[Path],
    found: Found,
    scanned: Callable[[str], None] | None = None,
    tally: ScanTally | None = None,
) -> Iterator[str]:
    """Scan ``paths`` (files or directories); yields warnings as they happen.

    A file named on the command line is read whatever its name (as a Dockerfile unless it
    ends in .yml/.yaml); under a directory only recognised names are read. Symbolic links
    to directories are not followed (no loops). ``tally`` counts what was skipped or failed.
    """
    tally = tally if tally is not None else ScanTally()
    warnings: list[str] = []
    for root in paths:
        if not root.exists() and not root.is_symlink():
            tally.missing.append(str(root))
            yield f"{root}: no such file or directory"
            continue
        explicit = not root.is_dir()
        for path in _walk(root):
            kind = classify(path)
            if kind is None and explicit:
                kind = "dockerfile"
            if scan_file(path, found, warnings.append, kind, tally) and scanned:
                scanned(str(path))
            yield from warnings
            warnings.clear()
