"""Reading a work tree's history with the ``git`` command (the I/O half of ``history``).

Three git processes per repository, whatever its size: ``rev-parse`` (top level, shallow
or not, HEAD), one ``log`` of HEAD's first-parent history listing the files each commit
changed with its committer date, and one ``cat-file --batch`` that streams every wanted
revision of every wanted file. git runs with argument lists (never a shell), without the
caller's ``GIT_*`` variables (a ``GIT_DIR`` set for another repository would answer for
it), with optional locks off (reading never takes the index lock) and a time limit.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

GIT_TIMEOUT = 300.0  # seconds for one git process
TOO_LARGE = b"\0too large\0"  # a revision larger than the reader's limit: not read
_CHUNK = 1 << 16


class GitError(Exception):
    """git failed, is missing, or answered something unexpected; the message says which."""


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


def run_git(git: str, top: Path, args: list[str], timeout: float = GIT_TIMEOUT) -> bytes:
    """``git -C top ARGS``'s standard output; GitError with git's first error line."""
    try:
        done = subprocess.run(
            [git, "-C", str(top), *args],
            capture_output=True,
            env=git_env(),
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise GitError(f"{git}: not found") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took more than {timeout:.0f}s") from None
    except OSError as exc:
        raise GitError(f"{git}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(lines[0] if lines else f"git {args[0]} exited {done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class RepoInfo:
    top: Path  # the work tree's top level, as git prints it (symbolic links resolved)
    shallow: bool
    head: str


def repo_info(git: str, where: Path) -> RepoInfo:
    out = run_git(git, where, ["rev-parse", "--show-toplevel", "--is-shallow-repository", "HEAD"])
    lines = out.decode("utf-8", "surrogateescape").splitlines()
    if len(lines) != 3 or not lines[0]:
        raise GitError(f"unexpected rev-parse answer: {lines!r}")
    return RepoInfo(Path(lines[0]), lines[1] == "true", lines[2])


@dataclass(frozen=True)
class Commit:
    sha: str
    when: datetime  # committer date, UTC
    paths: tuple[str, ...]  # changed files, relative to the top level


def parse_log(raw: bytes) -> list[Commit]:
    """``log -z --name-only --format=%x01%H %ct`` output: one Commit per record."""
    out: list[Commit] = []
    for record in raw.split(b"\x01")[1:]:
        head, _, rest = record.partition(b"\0")
        sha, _, stamp = head.decode("ascii", "replace").partition(" ")
        try:
            when = datetime.fromtimestamp(int(stamp), UTC)
        except (ValueError, OverflowError, OSError):
            raise GitError(f"unexpected log record {head[:80]!r}") from None
        names = rest.lstrip(b"\n").split(b"\0")
        paths = tuple(n.decode("utf-8", "surrogateescape") for n in names if n)
        out.append(Commit(sha, when, paths))
    return out


def log(git: str, top: Path, pathspecs: list[str]) -> list[Commit]:
    """HEAD's first-parent commits touching ``pathspecs`` (top-relative), newest first.

    A merge counts as the commit that brought its changes to the branch (its diff against
    the first parent); renames are a deletion and an addition (``--no-renames``)."""
    args = [
        "-c",
        "log.showSignature=false",
        "log",
        "--first-parent",
        "--diff-merges=first-parent",
        "--no-renames",
        "--name-only",
        "-z",
        "--format=%x01%H %ct",
        "HEAD",
        "--",
        *(f":(top,literal){p}" for p in pathspecs),
    ]
    # -c goes before the subcommand: run_git puts "-C top" first, which git accepts.
    return parse_log(run_git(git, top, args))


def _feed(stdin: IO[bytes], wanted: list[tuple[str, str]]) -> None:
    try:
        for sha, path in wanted:
            stdin.write(f"{sha}:{path}\n".encode("utf-8", "surrogateescape"))
        stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # git died: the reader reports it


def _read_exact(out: IO[bytes], n: int, keep: bool) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        chunk = out.read(min(n, _CHUNK))
        if not chunk:
            raise GitError("cat-file ended early")
        if keep:
            parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_blobs(
    git: str,
    top: Path,
    wanted: Iterable[tuple[str, str]],
    max_bytes: int,
    timeout: float = GIT_TIMEOUT,
) -> dict[tuple[str, str], bytes | None]:
    """The content of each (commit, path): None where the path is absent at that commit,
    ``TOO_LARGE`` (not read, memory stays bounded) above ``max_bytes``.

    One ``cat-file --batch`` process; a thread feeds the requests while this one reads, so
    neither pipe fills up."""
    todo = [(s, p) for s, p in wanted if "\n" not in p]
    got: dict[tuple[str, str], bytes | None] = {}
    if not todo:
        return got
    try:
        proc = subprocess.Popen(
            [git, "-C", str(top), "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=git_env(),
        )
    except OSError as exc:
        raise GitError(f"{git}: {exc.strerror or exc}") from None
    assert proc.stdin is not None and proc.stdout is not None
    feeder = threading.Thread(target=_feed, args=(proc.stdin, todo), daemon=True)
    timer = threading.Timer(timeout, proc.kill)
    feeder.start()
    timer.start()
    try:
        for key in todo:
            header = proc.stdout.readline()
            if not header:
                raise GitError(
                    "cat-file ended early" + (" (time limit)" if timer.finished.is_set() else "")
                )
            fields = header.split()
            if len(fields) == 3 and fields[1] == b"blob":
                size = int(fields[2])
                keep = size <= max_bytes
                data = _read_exact(proc.stdout, size, keep)
                _read_exact(proc.stdout, 1, False)  # the newline after the content
                got[key] = data if keep else TOO_LARGE
            elif len(fields) == 3:  # a tree or a submodule's commit: no file content
                _read_exact(proc.stdout, int(fields[2]) + 1, False)
                got[key] = None
            else:  # "<name> missing" / "ambiguous": not in that commit
                got[key] = None
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        feeder.join(timeout=5)
    return got
