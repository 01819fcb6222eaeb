"""Ingest many paths: walk, scan each file, and store with offset bookkeeping.

Storing goes in batches of files (``BATCH_FILES``): the fingerprints of a batch are looked up
in one query before it is read, and its aggregates and file records are written in one
transaction after. A walk over tens of thousands of small job logs otherwise spends most of
its time in per-file queries and commits. A crash loses at most the batch in flight, whose
aggregates and offsets go together, so a re-run neither skips nor double counts it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from analytics.events import Event
from analytics.ingest.reader import HEAD, NotRegularFile, ReadStats, fingerprint, open_file
from analytics.ingest.run import (
    UNKNOWN,
    FileResult,
    Options,
    Resume,
    check_path,
    scan_file,
    unreadable,
    walk,
)
from analytics.ingest.unused import coverage

if TYPE_CHECKING:  # the store (pandas, SQLAlchemy) is imported only when storing
    from analytics.store import Aggregate

BATCH_FILES = 500
BATCH_BUCKETS = 200_000  # also flush when the batch's aggregate holds this many buckets


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)
    events_by_format: Counter[str] = field(default_factory=Counter)
    files_by_format: Counter[str] = field(default_factory=Counter)
    unused_by_format: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0  # files already ingested to their end

    SAMPLES = 10  # unused lines listed in the summary, over all files

    @property
    def events(self) -> int:
        return sum(self.events_by_format.values())

    @property
    def unused(self) -> int:
        """Lines that look like an image use but gave no event (analytics.ingest.unused)."""
        return sum(self.unused_by_format.values())

    @property
    def coverage(self) -> float | None:
        """events / (events + unused lines): 1.0 when every image-looking line was used."""
        return coverage(self.events, self.unused)

    def coverage_by_format(self) -> dict[str, float | None]:
        return {
            fmt: coverage(self.events_by_format[fmt], self.unused_by_format[fmt])
            for fmt in sorted(self.files_by_format)
        }

    def coverage_rows(self) -> list[dict[str, object]]:
        """One row per format: files, events, unused lines, coverage (a table to plot)."""
        return [
            {
                "format": fmt,
                "files": self.files_by_format[fmt],
                "events": self.events_by_format[fmt],
                "unused_lines": self.unused_by_format[fmt],
                "coverage": cov,
            }
            for fmt, cov in self.coverage_by_format().items()
        ]

    def unused_files(self, first: int = 50) -> dict[str, int]:
        """The files with the most unused lines (at most ``first``), most first."""
        counts = [(f.unused.count, f.path) for f in self.files if f.unused.count]
        return {path: n for n, path in sorted(counts, key=lambda c: (-c[0], c[1]))[:first]}

    def unused_samples(self) -> list[dict[str, object]]:
        """The first unused lines: file, line number (from where the read started), text."""
        out: list[dict[str, object]] = []
        for f in self.files:
            for line, text in f.unused.samples:
                if len(out) >= self.SAMPLES:
                    return out
                out.append({"file": f.path, "line": line, "format": f.format, "text": text})
        return out

    @property
    def warnings(self) -> list[str]:
        return [f.warning for f in self.files if f.warning]

    @property
    def failed(self) -> list[FileResult]:
        """Files unreadable or damaged (the command exits 1)."""
        return [f for f in self.files if f.failed]

    def problems(self, kind: str) -> list[FileResult]:
        return [f for f in self.files if f.problem == kind]

    def as_dict(self) -> dict[str, object]:
        return {
            "files": len(self.files),
            "unchanged": self.unchanged,
            "events": self.events,
            "formats": {
                fmt: {
                    "files": self.files_by_format[fmt],
                    "events": self.events_by_format[fmt],
                    "unused_lines": self.unused_by_format[fmt],
                    "coverage": coverage(self.events_by_format[fmt], self.unused_by_format[fmt]),
                }
                for fmt in sorted(self.files_by_format)
            },
            "unused_lines": self.unused,
            "coverage": self.coverage,
            "unused_files": self.unused_files(),
            "unused_sample": self.unused_samples(),
            "skipped_lines": self.stats.skipped,
            "skipped": {
                k: v for k, v in self.stats.as_dict().items() if k not in ("bytes", "lines")
            },
            "skipped_files": {
                "not_regular": len(self.problems("not-regular")),
                "unknown_format": len(self.problems("unknown-format")),
                "missing": len(self.problems("missing")),
            },
            "not_regular": [f.path for f in self.problems("not-regular")],
            "damaged": [f.problem_json() for f in self.failed],
            "bytes": self.stats.bytes,
            "lines": self.stats.lines,
            "warnings": self.warnings,
        }


def _entries(paths: list[Path]) -> Iterator[tuple[Path, FileResult | None]]:
    """Each path to read with None, or with the result that says why it is not read."""
    errors: list[OSError] = []
    for path in walk(paths, errors.append):
        while errors:
            yield _listing_error(errors.pop(0))
        yield path, check_path(path)
    while errors:
        yield _listing_error(errors.pop(0))


def _listing_error(exc: OSError) -> tuple[Path, FileResult]:
    path = Path(str(exc.filename))
    return path, unreadable(path, exc)


def ingest(
    paths: list[Path],
    opts: Options,
    url: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> IngestReport:
    """Scan every file under ``paths``. With ``url``, store aggregates (idempotently);
    ``on_event`` sees every event either way (a dry run passes no ``url``).

    Only regular files are opened (a FIFO, socket or device is skipped and counted). A
    damaged file (truncated or corrupt compression, a read error) keeps the events read
    before the damage; it and unreadable files are listed in ``IngestReport.failed``.
    """
    report = IngestReport()
    entries = _entries(paths)
    if url is None:
        for path, problem in entries:
            _add(report, problem or scan_file(path, opts, on_event or (lambda e: None)), on_file)
        return report
    while chunk := list(islice(entries, BATCH_FILES)):
        batch = _Batch(url, [p for p, problem in chunk if problem is None])
        for path, problem in chunk:
            if problem is not None:
                _add(report, problem, on_file)
                continue
            _add(report, batch.scan(path, opts, on_event), on_file)
            if len(batch.agg) >= BATCH_BUCKETS:
                batch.flush(reload=True)
        batch.flush()
    return report


def _add(
    report: IngestReport, result: FileResult, on_file: Callable[[FileResult], None] | None
) -> None:
    report.files.append(result)
    report.stats.add(result.stats)
    if result.format and result.problem in (None, "damaged") and result.end >= 0:
        report.files_by_format[result.format] += 1
        report.events_by_format[result.format] += result.events
        report.unused_by_format[result.format] += result.unused.count
        if result.problem is None and result.start > 0 and result.end == result.start:
            report.unchanged += 1
    elif result.problem == "unknown-format":
        if result.start > 0 and result.end == result.start:
            report.unchanged += 1
        if result.unused.count:
            # Read by no parser, with lines that look like image uses: they count against
            # the coverage, under the format they lack.
            report.files_by_format[UNKNOWN] += 1
            report.unused_by_format[UNKNOWN] += result.unused.count
    if on_file:
        on_file(result)


@dataclass
class _Record:
    """A row of ``analytics_ingested_files`` as this run sees it (``id`` None: not yet
    inserted); records of one head fingerprint are kept most recently updated first."""

    head_fp: str
    path: str
    tail_fp: str
    offset: int
    format: str
    id: int | None = None
    updated_at: datetime | None = None
    dirty: bool = False


def _head_fp(path: Path) -> str | None:
    """The fingerprint ``scan_file`` will compute (first KiB of the decompressed text)."""
    try:
        stream = open_file(path)[0]
        with stream:
            head = stream.read(HEAD)
    except (OSError, NotRegularFile):
        return None  # the scan reports why
    return fingerprint(head) if head else None


class _Batch:
    """Files scanned together: one lookup query before, one write transaction after."""

    def __init__(self, url: str, paths: list[Path]) -> None:
        from analytics import store

        self.url = url
        self.agg: Aggregate = store.Aggregate()
        heads = {fp for fp in map(_head_fp, paths) if fp}
        self.known: dict[str, list[_Record]] = {fp: [] for fp in heads}
        self._load(sorted(heads))

    def _load(self, heads: list[str]) -> None:
        from sqlalchemy import select

        from analytics import store
        from warmer.store import db

        t = store.ingested_files
        with db.engine_for(self.url).connect() as conn:
            for i in range(0, len(heads), 400):  # under SQLite's bound-parameter limit
                rows = conn.execute(
                    select(t)
                    .where(t.c.head_fp.in_(heads[i : i + 400]))
                    .order_by(t.c.updated_at.desc(), t.c.id.desc())
                ).all()
                for r in rows:
                    self.known.setdefault(r.head_fp, []).append(
                        _Record(r.head_fp, r.path, r.tail_fp, int(r.offset), r.format, int(r.id))
                    )

    def records(self, head_fp: str) -> list[_Record]:
        if head_fp not in self.known:  # the file changed since its head was read
            self.known[head_fp] = []
            self._load([head_fp])
        return self.known[head_fp]

    def scan(
        self, path: Path, opts: Options, on_event: Callable[[Event], None] | None
    ) -> FileResult:
        from analytics import store

        agg = store.Aggregate()
        resolved = str(path.resolve())
        found: list[_Record] = []

        def resume(head_fp: str) -> Resume | None:
            # The same path first, then the newest: a renamed (rotated) file keeps its place.
            found.extend(sorted(self.records(head_fp), key=lambda r: r.path != resolved))
            return Resume(found[0].offset, found[0].tail_fp, found[0].format) if found else None

        def add(ev: Event) -> None:
            agg.add(ev)
            if on_event:
                on_event(ev)

        result = scan_file(path, opts, add, resume)
        scanned = result.problem == "unknown-format"  # for image-looking lines only
        if (
            result.problem not in (None, "damaged", "unknown-format")
            or not (result.format or scanned)
            or not result.head_fp
            or result.end < 0
        ):
            return result  # nothing read, nothing kept
        fmt = result.format or UNKNOWN
        # A damaged file keeps what was read before the damage, and its offset stops at the
        # last complete line: reading it again adds nothing, a repaired copy continues there.
        if found and result.start > 0:
            rec: _Record | None = found[0]
        else:  # read from the start: a record with this path and head is this file, rewritten
            rec = next((r for r in found if r.path == resolved), None)
        if rec is None:
            rec = _Record(result.head_fp, resolved, "", 0, fmt)
        same_head = self.records(result.head_fp)
        if rec in same_head:
            same_head.remove(rec)
        same_head.insert(0, rec)  # most recently updated first
        rec.path, rec.tail_fp, rec.offset, rec.format = (
            resolved,
            result.tail_fp,
            result.end,
            fmt,
        )
        rec.updated_at, rec.dirty = datetime.now(UTC), True
        _merge(self.agg, agg)
        return result

    def flush(self, reload: bool = False) -> None:
        """Write the batch's aggregates and file records in one transaction; ``reload``
        looks the batch's fingerprints up again for the files still to come."""
        from sqlalchemy import bindparam

        from analytics import store
        from warmer.store import db

        dirty = [r for recs in self.known.values() for r in recs if r.dirty]
        if not dirty and not len(self.agg):
            return
        t = store.ingested_files
        fields = ("head_fp", "path", "tail_fp", "offset", "format", "updated_at")
        with db.engine_for(self.url).begin() as conn:
            store.write_aggregate(conn, self.agg)
            new = [{f: getattr(r, f) for f in fields} for r in dirty if r.id is None]
            if new:
                conn.execute(t.insert(), new)
            old = [{"rid": r.id, **{f: getattr(r, f) for f in fields}} for r in dirty if r.id]
            if old:
                conn.execute(t.update().where(t.c.id == bindparam("rid")), old)
        self.agg = store.Aggregate()
        heads = sorted(self.known)
        self.known = {fp: [] for fp in heads} if reload else {}
        if reload:  # inserted rows have ids now
            self._load(heads)


def _merge(into: Aggregate, part: Aggregate) -> None:
    for key, counts in part.counts.items():
        row = into.counts.get(key)
        if row is None:
            into.counts[key] = counts
        else:
            row[0] += counts[0]
            row[1] += counts[1]
    into.pipelines |= part.pipelines
    into.events += part.events
