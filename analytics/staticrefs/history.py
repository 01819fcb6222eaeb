"""When each static reference was named: dates from git history, else the scan time.

A reference found in a file inside a git work tree is dated by the commits of HEAD's
first-parent history (the default branch as checked out): ``first_seen`` is the committer
date of the commit that added it to that file, and a reference no longer in the file keeps
a row with ``last_seen`` = the date of the commit that removed it. The references of each
revision come from the same parsers as the scan (``scan_dockerfile``, ``scan_yaml``), so an
``ARG`` default or a compose variable that changes is a change of image even when the
``FROM`` line is untouched.

A present reference's ``last_seen`` is the scan time, not HEAD's date: it is still named
when the scan reads it (the working tree, which may be ahead of HEAD), and a reference
without a removal date is live for the model whatever its ``last_seen``. A reference in the
working tree but in no commit (not committed yet), and every reference outside a git work
tree or when git is missing, is dated at the scan time (``dated_by`` says which).

Cost: three git processes per repository (``gitlog``), and at most ``max_revisions`` of
each file parsed (its newest ones; when a file has more, references already named in the
oldest revision read are dated by that revision, and a note says so). Renames are not
followed: a moved file's references are first seen at the move.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from analytics.staticrefs import MAX_FILE, SKIP_DIRS, classify
from analytics.staticrefs.dockerfiles import scan_dockerfile
from analytics.staticrefs.gitlog import TOO_LARGE, GitError, log, read_blobs, repo_info
from analytics.staticrefs.model import StaticRef
from analytics.staticrefs.yamlfiles import scan_yaml

__all__ = ["DEFAULT_MAX_REVISIONS", "Dated", "HistoryReport", "date_refs", "intervals", "merge"]

DEFAULT_MAX_REVISIONS = 200


@dataclass(frozen=True, slots=True)
class Dated:
    """A reference with when it was named: ``present`` (in the file now) or removed."""

    ref: StaticRef  # a removed reference: as it was in the last revision naming it
    first_seen: datetime
    last_seen: datetime  # present: the scan time; removed: the removing commit's date
    present: bool
    dated_by: str  # "git" or "scan"
    added_in: str = ""  # the commit that added it (git)
    removed_in: str = ""  # the commit that removed it ("" while present, or not committed)

    def to_json(self) -> dict[str, object]:
        return {
            **self.ref.to_json(),
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "present": self.present,
            "dated_by": self.dated_by,
            "added_in": self.added_in or None,
            "removed_in": self.removed_in or None,
        }


# -- pure: revisions -> intervals -> dated references --------------------------------------
@dataclass(frozen=True)
class Revision:
    commit: str
    when: datetime
    refs: list[StaticRef] | None  # None: the file is absent at this commit


@dataclass
class Interval:
    reference: str
    first: datetime
    added_in: str
    sample: StaticRef
    last: datetime | None = None  # None: still named at the newest revision
    removed_in: str = ""


def intervals(revisions: Sequence[Revision]) -> list[Interval]:
    """Each span during which a reference was named in the file, oldest revision first."""
    done: list[Interval] = []
    live: dict[str, Interval] = {}
    for rev in revisions:
        now: dict[str, StaticRef] = {}
        for r in rev.refs or ():
            now.setdefault(str(r.reference), r)
        for name, iv in list(live.items()):
            if name not in now:
                iv.last, iv.removed_in = rev.when, rev.commit
                done.append(live.pop(name))
        for name, r in now.items():
            if name in live:
                live[name].sample = r
            else:
                live[name] = Interval(name, rev.when, rev.commit, r)
    return done + list(live.values())


def scan_dated(found: Sequence[StaticRef], now: datetime) -> list[Dated]:
    return [Dated(r, now, now, True, "scan") for r in found]


def merge(found: Sequence[StaticRef], spans: Sequence[Interval], now: datetime) -> list[Dated]:
    """The working tree's references dated by the spans still open at HEAD, then the
    closed spans as removed references. A reference open at HEAD but gone from the
    working tree (removed, not committed) is removed at the scan time."""
    open_at_head = {iv.reference: iv for iv in spans if iv.last is None}
    here = {str(r.reference) for r in found}
    out: list[Dated] = []
    for r in found:
        iv = open_at_head.get(str(r.reference))
        if iv is None:
            out.append(Dated(r, now, now, True, "scan"))
        else:
            out.append(Dated(r, iv.first, now, True, "git", iv.added_in))
    for iv in spans:
        if iv.last is not None:
            out.append(
                Dated(iv.sample, iv.first, iv.last, False, "git", iv.added_in, iv.removed_in)
            )
        elif iv.reference not in here:
            out.append(Dated(iv.sample, iv.first, now, False, "git", iv.added_in))
    return out


def parse_revision(display: str, kind: str, data: bytes) -> list[StaticRef]:
    """The references of one revision's text; its warnings are the past's, not reported."""
    text = data.decode("utf-8-sig", "replace")
    refs: list[StaticRef] = []

    def ignore(_: str) -> None:
        pass

    if kind == "dockerfile":
        scan_dockerfile(display, text, refs.append, ignore)
    else:
        scan_yaml(display, text, kind, refs.append, ignore)
    return refs


# -- I/O: find the work trees, read their history ------------------------------------------
@dataclass
class HistoryReport:
    dated: list[Dated] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # scanned, and deleted ones with history
    notes: list[str] = field(default_factory=list)  # one line each, for the user
    repos: int = 0
    commits: int = 0
    revisions: int = 0  # file revisions read and parsed
    seconds: float = 0.0

    def summary(self) -> str:
        by_git = sum(d.dated_by == "git" for d in self.dated)
        return (
            f"dated {by_git} of {len(self.dated)} reference(s) by the git history of "
            f"{self.repos} repositor{'y' if self.repos == 1 else 'ies'} "
            f"({self.commits} commits, {self.revisions} file revisions read, "
            f"{self.seconds:.2f}s); {len(self.dated) - by_git} at scan time"
        )


@dataclass(frozen=True)
class _Root:
    given: Path  # as on the command line: file names are reported under it
    real: Path
    is_dir: bool


def _real(path: Path, is_dir: bool = False) -> Path:
    """Absolute, symbolic links resolved; a file's own link is not (the scan reads it where
    it is named, and git tracks it there)."""
    if is_dir or path.name in ("", ".", ".."):
        return Path(os.path.realpath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def _find_top(start: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The nearest directory at or above ``start`` holding ``.git`` (a directory, or a file
    for worktrees and submodules)."""
    seen: list[Path] = []
    d: Path | None = start
    found: Path | None = None
    while d is not None:
        if d in cache:
            found = cache[d]
            break
        seen.append(d)
        if os.path.lexists(d / ".git"):
            found = d
            break
        d = d.parent if d.parent != d else None
    for s in seen:
        cache[s] = found
    return found


def _display(root: _Root, absolute: Path) -> tuple[str, str] | None:
    """(file name as the scan reports it, kind) of a top-level path under ``root``."""
    if not root.is_dir:
        if absolute != root.real:
            return None
        return str(root.given), classify(root.given) or "dockerfile"
    if absolute != root.real and root.real not in absolute.parents:
        return None
    rel = absolute.relative_to(root.real)
    if any(part in SKIP_DIRS for part in rel.parts[:-1]):
        return None
    shown = root.given / rel
    kind = classify(shown)
    return (str(shown), kind) if kind else None


def date_refs(
    roots: Sequence[Path],
    found: Sequence[StaticRef],
    scanned: Sequence[str],
    now: datetime,
    max_revisions: int = DEFAULT_MAX_REVISIONS,
    git: str = "git",
    max_bytes: int = MAX_FILE,
) -> HistoryReport:
    """Date ``found`` (the references of the ``scanned`` files under ``roots``)."""
    t0 = time.perf_counter()
    report = HistoryReport(files=list(scanned))
    by_file: dict[str, list[StaticRef]] = {}
    for r in found:
        by_file.setdefault(r.file, []).append(r)
    exe = shutil.which(git) if max_revisions > 0 else None
    if exe is None:
        if max_revisions > 0:
            report.notes.append(f"{git} not found: every reference is dated at the scan time")
        report.dated = scan_dated(found, now)
        return report
    rs = [_Root(p, _real(p, p.is_dir()), p.is_dir()) for p in roots if p.exists()]
    cache: dict[Path, Path | None] = {}
    tops: dict[Path, list[str]] = {}  # candidate top -> scanned files in it
    outside: list[str] = []
    for name in scanned:
        top = _find_top(_real(Path(name)).parent, cache)
        if top is None:
            outside.append(name)
        else:
            tops.setdefault(top, []).append(name)
    for root in rs:  # a root inside a repository with nothing scanned (all deleted)
        top = _find_top(root.real if root.is_dir else root.real.parent, cache)
        if top is not None:
            tops.setdefault(top, [])
    if outside:
        report.notes.append(
            f"{len(outside)} file(s) not in a git work tree: dated at the scan time"
        )
    dated: dict[str, list[Dated]] = {n: scan_dated(by_file.get(n, []), now) for n in scanned}
    for top in sorted(tops):
        _one_repo(exe, top, rs, by_file, set(scanned), now, max_revisions, max_bytes, dated,
                  report)  # fmt: skip
    report.dated = [d for name in dated for d in dated[name]]
    report.seconds = time.perf_counter() - t0
    return report


def _one_repo(
    git: str,
    candidate: Path,
    roots: list[_Root],
    by_file: dict[str, list[StaticRef]],
    scanned: set[str],
    now: datetime,
    max_revisions: int,
    max_bytes: int,
    dated: dict[str, list[Dated]],
    report: HistoryReport,
) -> None:
    try:
        info = repo_info(git, candidate)
    except GitError as exc:
        report.notes.append(f"{candidate}: git cannot read it ({exc}); dated at the scan time")
        return
    top = info.top
    specs: list[str] = []
    whole = False
    for root in roots:
        if root.real == top or top in root.real.parents:
            specs.append(root.real.relative_to(top).as_posix())
        elif root.is_dir and root.real in top.parents:
            whole = True
    if whole or "." in specs:
        specs = []
    elif not specs:
        return
    try:
        commits = log(git, top, specs)
    except GitError as exc:
        report.notes.append(f"{top}: git log failed ({exc}); dated at the scan time")
        return
    report.repos += 1
    report.commits += len(commits)
    revs: dict[str, list[tuple[str, datetime, str]]] = {}  # display -> newest first
    kinds: dict[str, str] = {}
    shown: dict[str, tuple[str, str] | None] = {}
    for c in commits:
        for path in c.paths:
            if path not in shown:
                shown[path] = _pick(roots, top / path, scanned)
            pick = shown[path]
            if pick is not None:
                revs.setdefault(pick[0], []).append((c.sha, c.when, path))
                kinds[pick[0]] = pick[1]
    truncated = [name for name, rs in revs.items() if len(rs) > max_revisions]
    if truncated:
        report.notes.append(
            f"{len(truncated)} file(s) with more than {max_revisions} revisions (e.g. "
            f"{truncated[0]}): the newest {max_revisions} read, older names dated by the oldest"
        )
    wanted = [(sha, path) for rs in revs.values() for sha, _, path in rs[:max_revisions]]
    try:
        blobs = read_blobs(git, top, wanted, max_bytes)
    except GitError as exc:
        report.notes.append(f"{top}: git cat-file failed ({exc}); dated at the scan time")
        return
    if info.shallow:
        report.notes.append(f"{top}: a shallow clone: names older than its history are "
                            "dated by its oldest commit")  # fmt: skip
    for name, rs in revs.items():
        history: list[Revision] = []
        for sha, when, path in reversed(rs[:max_revisions]):
            data = blobs.get((sha, path))
            if data is TOO_LARGE:
                continue  # not read: the previous revision's names stand
            refs = None if data is None else parse_revision(name, kinds[name], data)
            history.append(Revision(sha, when, refs))
        report.revisions += len(history)
        if name not in scanned:
            report.files.append(name)  # deleted since: its references are all removed
        dated[name] = merge(by_file.get(name, []), intervals(history), now)


def _pick(roots: list[_Root], absolute: Path, scanned: set[str]) -> tuple[str, str] | None:
    for root in roots:
        got = _display(root, absolute)
        if got is None:
            continue
        name = got[0]
        # A file in the working tree that the scan skipped (too large, not regular,
        # unreadable) is left alone; a deleted one is dated from its history alone.
        if name in scanned or not os.path.lexists(name):
            return got
        return None
    return None
