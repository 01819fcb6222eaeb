"""Reading one file end to end: detect, resume, select lines, parse, normalise into events.

This is the I/O shell around the pure parsers. ``scan_file`` yields nothing itself: it
calls ``on_event`` per event and returns what it read, skipped and where it stopped, so the
caller decides whether to print, aggregate or store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from analytics.events import Event
from analytics.ingest.base import Hit, LineParser
from analytics.ingest.ci import GitHubParser, GitLabParser, JenkinsParser
from analytics.ingest.clients import ClientLogParser
from analytics.ingest.detect import FORMATS, detect_bytes
from analytics.ingest.distribution import DistributionParser
from analytics.ingest.kubelet import KubeletParser
from analytics.ingest.reader import (
    HEAD,
    BlockReader,
    ReadStats,
    fingerprint,
    open_file,
    open_stream,
    skip,
)
from analytics.ingest.select import selector
from analytics.regions import RegionRules
from warmer.oci.reference import Reference, try_parse

log = logging.getLogger(__name__)
DETECT_BYTES = 64 << 10


@dataclass(frozen=True)
class Resume:
    """Where a previous ingest of this content stopped, and the hash of the KiB before it."""

    offset: int
    tail_fp: str


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
    warning: str | None = None


@dataclass
class Options:
    rules: RegionRules = field(default_factory=RegionRules)
    default_time: datetime | None = None  # else the file's mtime
    format: str | None = None  # force a format instead of detecting it
    upstream: str | None = None  # registry a mirror log's repositories belong to
    pipeline: str | None = None  # force a pipeline name


def make_parser(
    fmt: str, emit: Callable[[Hit], None], stats: ReadStats, when: datetime, opts: Options
) -> LineParser:
    if fmt == "github":
        return GitHubParser(emit, stats, when)
    if fmt == "gitlab":
        return GitLabParser(emit, stats, when)
    if fmt == "jenkins":
        return JenkinsParser(emit, stats, when)
    if fmt == "kubelet":
        return KubeletParser(emit, stats, when)
    if fmt == "distribution":
        return DistributionParser(emit, stats, when, upstream=opts.upstream)
    if fmt in ("docker", "podman", "buildkit"):
        return ClientLogParser(emit, stats, when, fmt)
    raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})")


def walk(paths: list[Path]) -> Iterator[Path]:
    """Files under ``paths`` in a stable order; hidden files and directories are skipped."""
    for root in paths:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
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
        pipeline = self.opts.pipeline or hit.pipeline
        region = self.opts.rules.resolve(hit.runner, pipeline, self.path, hit.mirror)
        self.count += 1
        self.on_event(
            Event(
                timestamp=hit.timestamp or self.when,
                reference=ref,
                digest=hit.digest or ref.digest,
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
    except (OSError, EOFError, ValueError) as exc:  # zstd/gzip corruption, permissions
        result.warning = f"{path}: cannot read: {exc}"
        return result


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
        first = stream.read(DETECT_BYTES)
        if not first:
            return result
        result.head_fp = fingerprint(first[:HEAD])
        fmt = opts.format or detect_bytes(first)
        result.format = fmt
        if fmt is None:
            result.warning = f"{path}: no known log format in its first lines; skipped"
            result.end = -1
            return result
        prefix, start, last = first, 0, b""
        prior = resume(result.head_fp) if resume else None
        if prior is not None and prior.offset > 0:
            got = _seek_to(stream, first, prior.offset, plain)
            if got is not None and fingerprint(got[0]) == prior.tail_fp:
                prefix, start, last = got[1], prior.offset, got[0]
            else:  # same head, different content: a new file; read it all
                stream.close()
                stream = open_stream(path)
                prefix = stream.read(DETECT_BYTES)
        result.start = start
        when = opts.default_time or datetime.fromtimestamp(mtime, UTC)
        stats = result.stats
        norm = _Normaliser(str(path), fmt, when, opts, stats)
        norm.on_event = on_event
        parser = make_parser(fmt, norm, stats, when, opts)
        if isinstance(parser, DistributionParser):
            parser.prime(first.decode("utf-8", "replace"))
        reader = BlockReader(stream, stats, prefix=prefix, last=last)
        select, feed = selector(parser.keywords), parser.feed
        for block in reader:
            for s, e in select(block):
                feed(block[s:e].decode("utf-8"))
        parser.finish()
        result.events = norm.count
        result.end = start + reader.consumed
        result.tail_fp = fingerprint(reader.last)
        return result
    finally:
        stream.close()


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
