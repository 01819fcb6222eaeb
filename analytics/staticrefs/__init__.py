"""Static image references: what Dockerfiles, compose, Kubernetes and CI files name.

``scan_paths`` walks files and directories, picks the reader by file name, and reports
each ``StaticRef`` (file, line, canonical reference, kind, platform) through a callback;
it yields one warning per unresolvable or invalid reference (``file:line: ...``) or
unreadable file, and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from analytics.staticrefs.dockerfiles import scan_dockerfile
from analytics.staticrefs.model import Found, StaticRef, Warn
from analytics.staticrefs.yamlfiles import scan_yaml

__all__ = ["StaticRef", "classify", "scan_file", "scan_paths"]

MAX_FILE = 8 << 20
_SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".tox"}


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


def scan_file(path: Path, found: Found, warn: Warn, kind: str | None = None) -> bool:
    """Scan one file; False when it is not a kind of file we read."""
    kind = kind or classify(path)
    if kind is None:
        return False
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            warn(f"{path}: {size} bytes is too large for a {kind} file; skipped")
            return True
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        warn(f"{path}: not UTF-8 text; skipped")
        return True
    except OSError as exc:
        warn(f"{path}: cannot read: {exc.strerror or exc}")
        return True
    if kind == "dockerfile":
        scan_dockerfile(str(path), text, found, warn)
    else:
        scan_yaml(str(path), text, kind, found, warn)
    return True


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def scan_paths(
    paths: list[Path], found: Found, scanned: Callable[[str], None] | None = None
) -> Iterator[str]:
    """Scan ``paths`` (files or directories); yields warnings as they happen.

    A file named on the command line is read whatever its name (as a Dockerfile unless it
    ends in .yml/.yaml); under a directory only recognised names are read.
    """
    warnings: list[str] = []
    for root in paths:
        if not root.exists():
            yield f"{root}: no such file or directory"
            continue
        explicit = not root.is_dir()
        for path in _walk(root):
            kind = classify(path)
            if kind is None and explicit:
                kind = "dockerfile"
            if scan_file(path, found, warnings.append, kind) and scanned:
                scanned(str(path))
            yield from warnings
            warnings.clear()
