"""Ingest many paths: walk, scan each file, and store per file with offset bookkeeping."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analytics import store
from analytics.events import Event
from analytics.ingest.reader import ReadStats
from analytics.ingest.run import FileResult, Options, Resume, scan_file, walk


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)
    events_by_format: Counter[str] = field(default_factory=Counter)
    files_by_format: Counter[str] = field(default_factory=Counter)
    unchanged: int = 0  # files already ingested to their end

    @property
    def events(self) -> int:
        return sum(self.events_by_format.values())

    @property
    def warnings(self) -> list[str]:
        return [f.warning for f in self.files if f.warning]

    def as_dict(self) -> dict[str, object]:
        return {
            "files": len(self.files),
            "unchanged": self.unchanged,
            "events": self.events,
            "formats": {
                fmt: {"files": self.files_by_format[fmt], "events": self.events_by_format[fmt]}
                for fmt in sorted(self.files_by_format)
            },
            "skipped_lines": self.stats.skipped,
            "skipped": {
                k: v for k, v in self.stats.as_dict().items() if k not in ("bytes", "lines")
            },
            "bytes": self.stats.bytes,
            "lines": self.stats.lines,
            "warnings": self.warnings,
        }


def ingest(
    paths: list[Path],
    opts: Options,
    url: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> IngestReport:
    """Scan every file under ``paths``. With ``url``, store aggregates (idempotently);
    ``on_event`` sees every event either way (a dry run passes no ``url``)."""
    report = IngestReport()
    for path in walk(paths):
        if not path.exists():
            result = FileResult(str(path), warning=f"{path}: no such file or directory")
        elif url is None:
            result = scan_file(path, opts, on_event or (lambda e: None))
        else:
            result = _ingest_one(url, path, opts, on_event)
        report.files.append(result)
        report.stats.add(result.stats)
        if result.format and not result.warning:
            report.files_by_format[result.format] += 1
            report.events_by_format[result.format] += result.events
            if result.start > 0 and result.end == result.start:
                report.unchanged += 1
        if on_file:
            on_file(result)
    return report


def _ingest_one(
    url: str, path: Path, opts: Options, on_event: Callable[[Event], None] | None
) -> FileResult:
    agg = store.Aggregate()
    records: list[store.FileRecord] = []
    resolved = str(path.resolve())

    def resume(head_fp: str) -> Resume | None:
        records.extend(store.file_records(url, head_fp))
        # The same path first, then the newest: a renamed (rotated) file keeps its place.
        records.sort(key=lambda r: r.path != resolved)
        return Resume(records[0].offset, records[0].tail_fp) if records else None

    def add(ev: Event) -> None:
        agg.add(ev)
        if on_event:
            on_event(ev)

    result = scan_file(path, opts, add, resume)
    if result.warning or result.format is None or not result.head_fp:
        return result
    if records and result.start > 0:
        rid = records[0].id
    else:  # read from the start: a record with this path and head is this file, rewritten
        same = [r for r in records if r.path == resolved]
        rid = same[0].id if same else None
    store.commit_file(
        url,
        agg,
        store.FileRecord(result.head_fp, resolved, result.tail_fp, result.end, result.format, rid),
    )
    return result
