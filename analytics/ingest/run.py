"""Reading one file end to end: detect, resume, select lines, parse, normalise into events.

This is the I/O shell around the pure parsers. ``scan_file`` yields nothing itself: it
calls ``on_event`` per event and returns what it read, skipped and where it stopped, so the
caller decides whether to print, aggregate or store.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from analytics.events import Event
from analytics.ingest.base import Hit, LineParser
from analytics.ingest.buildkite_job import BuildkiteParser
from analytics.ingest.ci import (
    CircleCIParser,
    CloudBuildParser,
    CodeBuildParser,
    GitHubParser,
    GitLabParser,
    JenkinsParser,
)
from analytics.ingest.clients import ClientLogParser
from analytics.ingest.detect import FORMATS, detect_bytes
from analytics.ingest.distribution import DistributionParser
from analytics.ingest.kubelet import KubeletParser, is_document
from analytics.ingest.reader import (
    HEAD,
    BlockReader,
    NotRegularFile,
    ReadStats,
    damage_of,
    file_kind,
    fingerprint,
    open_file,
    open_stream,
    skip,
)
from analytics.ingest.select import line_ends, selector
from analytics.ingest.unused import SUSPECT_PATTERNS, Unused, looks_like_reference
from analytics.regions import RegionRules
from warmer.oci.reference import Reference, try_parse

log = logging.getLogger(__name__)
DETECT_BYTES = 64 << 10
# A file of no known format is still scanned for lines that look like an image use (so a
# log the parsers cannot read shows in the coverage, not only as "skipped"), up to this.
UNKNOWN_SCAN_BYTES = 64 << 20
UNKNOWN = "unknown"  # the format recorded for such a file, and its coverage row


@dataclass(frozen=True)
class Resume:
    """Where a previous ingest of this content stopped, the hash of the KiB before it, and
    the format it was read as (``UNKNOWN``: only scanned for image-looking lines)."""

    offset: int
    tail_fp: str
    format: str


@dataclass
class FileResult:
    path: str
    format: str | None = None
    events: int = 0
    stats: ReadStats = field(default_factory=ReadStats)
    start: int = 0  # offset reading started at (0, or where the last ingest stopped)
    end: int = 0  # offset reading stopped at
    head_fp: str = ""
    tail_fp: str = ""
    warning: str | None = None  # the one line that says what went wrong, naming the file
    # None, or: "damaged" (truncated, corrupt, read error: what was read before is kept),
    # "unreadable" (nothing read), "not-regular" (FIFO, socket, device: never opened),
    # "unknown-format" and "missing" (a path named that does not exist).
    problem: str | None = None
    reason: str | None = None  # for damaged and unreadable files: why, without the path
    # Lines that look like an image use but gave no event (analytics.ingest.unused); line
    # numbers count from where this read started.
    unused: Unused = field(default_factory=Unused)

    @property
    def failed(self) -> bool:
        """Unreadable or damaged: the ingest as a whole failed (exit 1)."""
        return self.problem in ("damaged", "unreadable")

    def problem_json(self) -> dict[str, object]:
        return {
            "file": self.path,
            "problem": self.problem,
            "reason": self.reason,
            "lines": self.stats.lines,
            "offset": self.end if self.end >= 0 else None,
            "events": self.events,
        }


@dataclass
class Options:
    rules: RegionRules = field(default_factory=RegionRules)
    default_time: datetime | None = None  # else the file's mtime
    format: str | None = None  # force a format instead of detecting it
    upstream: str | None = None  # registry a mirror log's repositories belong to
    pipeline: str | None = None  # force a pipeline name


# The formats whose parser takes only (emit, stats, default time).
_PARSERS: dict[str, Callable[[Callable[[Hit], None], ReadStats, datetime], LineParser]] = {
    "github": GitHubParser,
    "gitlab": GitLabParser,
    "jenkins": JenkinsParser,
    "circleci": CircleCIParser,
    "cloudbuild": CloudBuildParser,
    "codebuild": CodeBuildParser,
    "buildkite": BuildkiteParser,
    "kubelet": KubeletParser,
}


def make_parser(
    fmt: str, emit: Callable[[Hit], None], stats: ReadStats, when: datetime, opts: Options
) -> LineParser:
    if fmt in _PARSERS:
        return _PARSERS[fmt](emit, stats, when)
    if fmt == "distribution":
        return DistributionParser(emit, stats, when, upstream=opts.upstream)
    if fmt in ("docker", "podman", "buildkit", "kaniko", "jib"):
        return ClientLogParser(emit, stats, when, fmt)
    raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})")


def walk(paths: list[Path], onerror: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Files under ``paths`` in a stable order; hidden files and directories are skipped.

    Symbolic links to directories are not followed (no loops); ``onerror`` hears of each
    directory that cannot be listed.
    """
    for root in paths:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield Path(dirpath) / name
        else:
            yield root


class _Normaliser:
    """Hits to events: parse references once per distinct text, apply region rules."""

    def __init__(self, path: str, fmt: str, when: datetime, opts: Options, stats: ReadStats):
        self.path, self.fmt, self.when, self.opts, self.stats = path, fmt, when, opts, stats
        self.refs: dict[str, Reference | None] = {}
        self.on_event: Callable[[Event], None] = lambda e: None
        self.count = 0

    def __call__(self, hit: Hit) -> None:
        ref = self.refs.get(hit.reference, False)
        if ref is False:
            ref = try_parse(hit.reference)
            if len(self.refs) > 50000:
                self.refs.clear()
            self.refs[hit.reference] = ref
        if ref is None:
            self.stats.malformed += 1
            log.debug("%s: not an image reference: %r", self.path, hit.reference)
            return
        assert isinstance(ref, Reference)
        digest = hit.digest or ref.digest
        if ref.digest and ref.tag:  # name:tag@digest: the reference is name:tag, digest apart
            ref = Reference(ref.registry, ref.repository, ref.tag, None)
        pipeline = self.opts.pipeline or hit.pipeline
        region = self.opts.rules.resolve(hit.runner, pipeline, self.path, hit.mirror)
        self.count += 1
        self.on_event(
            Event(
                timestamp=hit.timestamp or self.when,
                reference=ref,
                digest=digest,
                source=hit.source or self.fmt,
                pipeline=pipeline,
                region=region,
                pulled=hit.pulled,
            )
        )


def scan_file(
    path: Path,
    opts: Options,
    on_event: Callable[[Event], None],
    resume: Callable[[str], Resume | None] | None = None,
) -> FileResult:
    """Read ``path`` (plain, .gz or .zst), calling ``on_event`` for each event.

    ``resume(head_fp)`` may answer where a previous ingest of the same content stopped;
    reading continues there when the KiB before that offset still matches, else from 0.
    """
    result = FileResult(str(path))
    try:
        return _scan(path, opts, on_event, resume, result)
    except NotRegularFile as exc:  # became a FIFO (or the like) after the walk looked
        return not_regular(path, exc.kind)
    except OSError as exc:  # permissions, a dangling link, a read error at the start
        return unreadable(path, exc)


def not_regular(path: Path, kind: str) -> FileResult:
    return FileResult(
        str(path), warning=f"{path}: {kind}, not a regular file; skipped", problem="not-regular"
    )


def unreadable(path: Path, exc: OSError) -> FileResult:
    reason = str(exc.strerror or exc)
    return FileResult(
        str(path), warning=f"{path}: cannot read: {reason}", problem="unreadable", reason=reason
    )


def check_path(path: Path) -> FileResult | None:
    """None for a regular file to read; else the result that says why it is not read.

    ``stat`` only, nothing is opened: a FIFO is never waited on.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.lexists(path) or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return unreadable(path, exc)  # a dangling or looping link, a denied directory
        return FileResult(
            str(path), warning=f"{path}: no such file or directory", problem="missing"
        )
    if not stat.S_ISREG(st.st_mode):
        return not_regular(path, file_kind(st.st_mode))
    return None


def _damaged(result: FileResult, reason: str) -> None:
    result.problem, result.reason = "damaged", reason
    result.warning = (
        f"{result.path}: damaged: {reason}; kept {result.stats.lines} complete line(s) "
        f"read before it, to byte {max(result.end, 0)} of the text ({result.events} event(s))"
    )


def _scan(
    path: Path,
    opts: Options,
    on_event: Callable[[Event], None],
    resume: Callable[[str], Resume | None] | None,
    result: FileResult,
) -> FileResult:
    stream, kind, mtime = open_file(path)
    plain = kind is None
    try:
        try:
            first = stream.read(DETECT_BYTES)
        except OSError as exc:
            _damaged(result, f"read error: {exc.strerror or exc}")
            return result
        if not first:
            if damage_of(stream):
                _damaged(result, str(damage_of(stream)))
            return result
        result.head_fp = fingerprint(first[:HEAD])
        fmt = opts.format or detect_bytes(first)
        result.format = fmt
        prior = resume(result.head_fp) if resume else None
        if prior is not None and (prior.format == UNKNOWN) != (fmt is None):
            prior = None  # read as the other kind last time (e.g. --format names it now)
        if fmt is None:
            result.end = -1
            if damage_of(stream):  # too little could be read to tell what it is
                _damaged(result, str(damage_of(stream)))
                return result
            result.problem = "unknown-format"
            if b"\x00" not in first:  # text: a binary file (an image, an archive) is no log
                at = _resume_at(path, stream, first, plain, prior, result)
                if at is None:
                    return result
                stream, prefix, result.start, last = at
                _scan_unknown(stream, prefix, last, result)
            looks = result.unused.count
            new = " new" if result.start else ""
            result.warning = f"{path}: no known log format in its first lines; skipped" + (
                f" ({looks}{new} line(s) in it look like image uses: --format can name its format)"
                if looks
                else ""
            )
            return result
        at = _resume_at(path, stream, first, plain, prior, result)
        if at is None:
            return result
        stream, prefix, start, last = at
        result.start = start
        when = opts.default_time or datetime.fromtimestamp(mtime, UTC)
        stats = result.stats
        norm = _Normaliser(str(path), fmt, when, opts, stats)
        norm.on_event = on_event
        parser = make_parser(fmt, norm, stats, when, opts)
        if isinstance(parser, DistributionParser):
            parser.prime(first.decode("utf-8", "replace"))
        reader = BlockReader(stream, stats, prefix=prefix, last=last)
        if isinstance(parser, KubeletParser) and start == 0 and is_document(first):
            parser.document(b"".join(reader).decode("utf-8"))  # kubectl -o json: one value
        elif parser.scan_unused:
            _read_scanning(reader, parser, norm, result.unused)
        else:
            select, feed = selector(parser.keywords), parser.feed
            for block in reader:
                for s, e in select(block):
                    feed(block[s:e].decode("utf-8"))
        parser.finish()
        result.events = norm.count
        result.end = start + reader.consumed
        result.tail_fp = fingerprint(reader.last)
        if reader.damage:
            _damaged(result, reader.damage)
        return result
    finally:
        stream.close()


def _resume_at(
    path: Path,
    stream: BinaryIO,
    first: bytes,
    plain: bool,
    prior: Resume | None,
    result: FileResult,
) -> tuple[BinaryIO, bytes, int, bytes] | None:
    """Where to read from: (the stream, bytes already read from there, that offset, the KiB
    before it). From where the previous ingest stopped when the KiB before that offset still
    matches, else from 0 (the stream may be a new one). None: damaged before that offset
    (``result`` says so)."""
    if prior is None or prior.offset <= 0:
        return stream, first, 0, b""
    got = _seek_to(stream, first, prior.offset, plain)
    if got is None and damage_of(stream):  # damaged before where we stopped last
        result.end = -1  # nothing read, nothing to record
        _damaged(result, str(damage_of(stream)))
        return None
    if got is not None and fingerprint(got[0]) == prior.tail_fp:
        return stream, got[1], prior.offset, got[0]
    # Same head, different content: a new file; read it all.
    stream.close()
    stream = open_stream(path)
    return stream, stream.read(DETECT_BYTES), 0, b""


def _scan_unknown(stream: BinaryIO, prefix: bytes, last: bytes, result: FileResult) -> None:
    """Count the lines of a file of no known format that look like an image use (up to
    ``UNKNOWN_SCAN_BYTES`` from where the last ingest stopped, so a file is not counted
    twice): nothing reads them, so each is unused. Records how far it got in ``result``."""
    reader = BlockReader(stream, result.stats, prefix=prefix, last=last)
    suspect = line_ends(SUSPECT_PATTERNS)
    for block in reader:
        missed: list[tuple[int, str]] = []
        for end in suspect(block):
            _check(block, end, missed)
        if missed:
            _count_missed(reader, block, missed, result.unused)
        if reader.consumed >= UNKNOWN_SCAN_BYTES:
            break
    if reader.damage:
        return  # end stays -1: nothing recorded, the next ingest scans it again
    result.end = result.start + reader.consumed
    result.tail_fp = fingerprint(reader.last)


def _read_scanning(
    reader: BlockReader, parser: LineParser, norm: _Normaliser, unused: Unused
) -> None:
    """Feed the parser its lines and count the image-looking lines it did not understand.

    The suspect lines (few, known by the offset of their newline) are merged into the
    parser's lines in one pass; only a suspect line the parser is fed costs two
    ``recognized()`` calls, and only one it is not fed is looked up on its own.
    """
    select, feed = selector(parser.keywords), parser.feed
    suspect, recognized = line_ends(SUSPECT_PATTERNS), parser.recognized
    end = 1 << 62
    for block in reader:
        sus = suspect(block)
        if not sus:
            for s, e in select(block):
                feed(block[s:e].decode("utf-8"))
            continue
        missed: list[tuple[int, str]] = []
        it = iter(sus)
        nxt = next(it)
        for s, e in select(block):
            while nxt < e:  # a suspect line the parser does not even select
                _check(block, nxt, missed)
                nxt = next(it, end)
            line = block[s:e].decode("utf-8")
            if e != nxt:
                feed(line)
                continue
            known, events = recognized(), norm.count
            feed(line)
            if known == recognized() and events == norm.count and looks_like_reference(line):
                missed.append((s, line))
            nxt = next(it, end)
        while nxt < end:
            _check(block, nxt, missed)
            nxt = next(it, end)
        if missed:
            _count_missed(reader, block, missed, unused)


def _check(block: bytes, line_end: int, missed: list[tuple[int, str]]) -> None:
    start = block.rfind(b"\n", 0, line_end) + 1
    line = block[start:line_end].decode("utf-8")
    if looks_like_reference(line):
        missed.append((start, line))


def _count_missed(
    reader: BlockReader, block: bytes, missed: list[tuple[int, str]], unused: Unused
) -> None:
    base = reader.stats.lines - block.count(b"\n")  # lines before this block
    for s, line in missed:
        no = base + block.count(b"\n", 0, s) + 1 if unused.wants_sample() else 0
        unused.add(no, line)


def _seek_to(
    stream: BinaryIO, first: bytes, offset: int, plain: bool
) -> tuple[bytes, bytes] | None:
    """Position ``stream`` at ``offset``: (the KiB before it, bytes already read past it)."""
    if offset <= len(first):
        return first[max(0, offset - HEAD) : offset], first[offset:]
    if plain:
        tail, reached = skip(stream, offset, plain=True)
    else:
        rest, n = skip(stream, offset - len(first), plain=False)
        tail, reached = (first + rest)[-HEAD:], len(first) + n
    if reached < offset:
        return None  # the file is shorter than the offset: truncated or replaced
    return tail, b""
