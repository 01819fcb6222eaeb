"""The analytics store: hourly usage aggregates, distinct pipelines, static references, and
the bookkeeping that makes re-ingesting a file idempotent. Raw log lines are never kept.

Tables (SQLAlchemy Core, declared and migrated in ``warmer.store.schema``; SQLite by
default, PostgreSQL too):

- ``analytics_usage``: pulls and already-present uses per (day, hour, region, image, tag,
  digest, source); an ingest adds to the counts with a dialect upsert. ``pipelines`` is the
  bucket's row count in the next table, kept by a trigger on it (a ranking reads it with
  the usage rows instead of counting).
- ``analytics_usage_pipelines``: one row per distinct pipeline (a short hash of its name)
  per usage bucket, so distinct counts stay exact however often counts are added.
- ``analytics_static_refs``: references named in Dockerfiles, compose, Kubernetes and CI
  files, with the time each (file, reference) was first seen (its commit's date in a git
  work tree, else the scan time), and the references the files' git history shows removed
  (line 0 or below, ``last_seen`` = the removing commit's date).
- ``analytics_ingested_files``: per ingested file, a fingerprint of its first KiB, how far
  it was read (offset in the decompressed stream) and a fingerprint of the KiB before that
  offset. A file whose head and tail match is continued from the offset (an appended log);
  one that does not match any record is read from the start (a rotated or new file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import String, Table, cast, delete, func, select
from sqlalchemy.engine import Connection

from analytics.events import Event
from analytics.frames import USAGE_COLUMNS, empty_usage
from warmer.store import db
from warmer.store.schema import USAGE_KEY as _KEY
from warmer.store.schema import ingested_files, static_refs, usage, usage_pipelines

__all__ = [
    "Aggregate",
    "add_dated_refs",
    "add_events",
    "add_static_refs",
    "ingested_files",
    "pipeline_hash",
    "pipelines_frame",
    "static_frame",
    "static_refs",
    "usage",
    "usage_frame",
    "usage_pipelines",
    "write_aggregate",
]


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def pipeline_hash(name: str) -> str:
    return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:16]


# -- aggregation (pure) --------------------------------------------------------------
BucketKey = tuple[date, int, str, str, str, str, str]


@dataclass
class Aggregate:
    """Events folded into hourly buckets in memory; bounded by distinct buckets, not events."""

    counts: dict[BucketKey, list[int]] = field(default_factory=dict)
    pipelines: set[tuple[BucketKey, str]] = field(default_factory=set)
    events: int = 0

    def add(self, ev: Event) -> None:
        ts = ev.timestamp.astimezone(UTC)
        ref = ev.reference
        key: BucketKey = (
            ts.date(),
            ts.hour,
            ev.region or "",
            ref.name,
            ref.tag or "",
            ev.digest or ref.digest or "",
            ev.source,
        )
        row = self.counts.get(key)
        if row is None:
            row = self.counts[key] = [0, 0]
        row[0] += 1
        if ev.pulled is False:
            row[1] += 1
        if ev.pipeline:
            self.pipelines.add((key, pipeline_hash(ev.pipeline)))
        self.events += 1

    def __len__(self) -> int:
        return len(self.counts)


def write_aggregate(conn: Connection, agg: Aggregate, chunk: int = 5000) -> None:
    """Add ``agg`` to the store. Buckets and pipelines go in key order: two writers sharing
    buckets (on PostgreSQL) then take the rows' locks in the same order and wait for each
    other instead of deadlocking; the pipelines trigger updates rows this transaction has
    locked already."""
    rows = [
        {**dict(zip(_KEY, key, strict=True)), "pulls": c[0], "present": c[1]}
        for key, c in sorted(agg.counts.items())
    ]
    for i in range(0, len(rows), chunk):
        stmt = _insert(conn, usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={
                "pulls": usage.c.pulls + stmt.excluded.pulls,
                "present": usage.c.present + stmt.excluded.present,
            },
        )
        conn.execute(stmt, rows[i : i + chunk])
    prow = [
        {**dict(zip(_KEY, key, strict=True)), "pipeline": p} for key, p in sorted(agg.pipelines)
    ]
    for i in range(0, len(prow), chunk):
        pstmt = _insert(conn, usage_pipelines).on_conflict_do_nothing()
        conn.execute(pstmt, prow[i : i + chunk])


def add_events(url: str, events: Iterable[Event]) -> int:
    """Aggregate ``events`` and add them to the store in one transaction; returns the count."""
    agg = Aggregate()
    for ev in events:
        agg.add(ev)
    with db.engine_for(url).begin() as conn:
        write_aggregate(conn, agg)
    return agg.events


# -- static references ---------------------------------------------------------------
class _Dated(Protocol):
    """``analytics.staticrefs.history.Dated``: a reference and when it was named."""

    @property
    def ref(self) -> Any: ...
    @property
    def first_seen(self) -> datetime: ...
    @property
    def last_seen(self) -> datetime: ...
    @property
    def present(self) -> bool: ...
    @property
    def dated_by(self) -> str: ...


@dataclass(frozen=True)
class _ScanDated:
    ref: Any
    first_seen: datetime
    last_seen: datetime
    present: bool = True
    dated_by: str = "scan"


def add_static_refs(
    url: str,
    refs: Iterable[Any],
    files: Iterable[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Replace the stored references of every scanned file with ``refs``, dated at scan time.

    ``refs`` are ``analytics.staticrefs.StaticRef`` (``file``, ``line``, ``reference``,
    ``kind``, ``platform``). ``files`` lists every file scanned (also those with no
    reference left) so removed references disappear. ``first_seen`` is kept per (file,
    reference) across rescans, even when the line moves.
    """
    now = now or datetime.now(UTC)
    return len(add_dated_refs(url, [_ScanDated(r, now, now) for r in refs], files, now))


_STATIC_REFS_LOCK = 74657202  # PostgreSQL advisory lock key (migrations use 74657201)


def add_dated_refs(
    url: str,
    dated: Iterable[_Dated],
    files: Iterable[str] | None = None,
    now: datetime | None = None,
) -> dict[tuple[str, int, str], datetime]:
    """Replace the stored references of every scanned file with ``dated``; returns the
    ``first_seen`` stored for each present (file, line, reference).

    A reference dated by git keeps its commit date. One dated at the scan time keeps the
    earliest ``first_seen`` stored for its (file, reference) while present, even when its
    line moved. A removed reference (``present`` false: found in the file's git history)
    is stored with ``last_seen`` = its removal and line 0, -1, -2 ... (newest removal
    first): no line of the file names it now, and ``static_frame`` reports it ``removed``.
    """
    now = now or datetime.now(UTC)
    items = list(dated)
    scanned = set(files or ()) | {d.ref.file for d in items}
    if not scanned:
        return {}
    with db.engine_for(url).begin() as conn:
        if conn.dialect.name == "postgresql":
            # One writer of references at a time: two scans of the same files each deleted
            # the rows they saw, and the second's insert then hit the first's new rows
            # (unique violation; SQLite's write lock serialises writers by itself).
            conn.execute(select(func.pg_advisory_xact_lock(_STATIC_REFS_LOCK)))
        first: dict[tuple[str, str], datetime] = {}
        names = sorted(scanned)
        s = static_refs
        for i in range(0, len(names), 500):
            part = names[i : i + 500]
            q = select(s.c.file, s.c.reference, s.c.first_seen).where(
                s.c.file.in_(part), s.c.line > 0
            )
            for row in conn.execute(q):
                seen = _utc(row.first_seen)
                key = (row.file, row.reference)
                first[key] = min(first.get(key, seen), seen)
            conn.execute(delete(s).where(s.c.file.in_(part)))
        rows: dict[tuple[str, int, str], dict[str, Any]] = {}
        gone: dict[tuple[str, str], int] = {}
        for d in sorted(items, key=lambda d: (d.present, d.last_seen), reverse=True):
            r = d.ref
            ref = r.reference
            canonical = str(ref)
            if d.present:
                line = int(r.line)
                seen = d.first_seen
                if d.dated_by != "git":
                    seen = min(first.get((r.file, canonical), seen), seen)
            else:
                line = -gone.get((r.file, canonical), 0)
                gone[(r.file, canonical)] = -line + 1
                seen = d.first_seen
            rows.setdefault(
                (r.file, line, canonical),
                {
                    "file": r.file,
                    "line": line,
                    "reference": canonical,
                    "image": ref.name,
                    "tag": ref.tag or "",
                    "digest": ref.digest or "",
                    "kind": r.kind,
                    "platform": r.platform or "",
                    "first_seen": seen,
                    "last_seen": d.last_seen if not d.present else now,
                },
            )
        if rows:
            conn.execute(static_refs.insert(), list(rows.values()))
    return {k: v["first_seen"] for k, v in rows.items() if k[1] > 0}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- frames for the model ------------------------------------------------------------
def _day(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    day: date = pd.Timestamp(value).date()
    return day


def usage_frame(
    url: str, region: str | None = None, since: Any = None, until: Any = None
) -> pd.DataFrame:
    """Hourly usage rows, in no particular order; ``since`` inclusive, ``until`` exclusive
    (days, dates or datetimes).

    ``pipelines`` is the number of distinct pipelines in the row's own bucket; for exact
    distinct counts over other groupings use ``pipelines_frame``.
    """
    seen: dict[str, dict[str, str]] = {c: {} for c in _TEXT_COLUMNS}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in USAGE_COLUMNS}
    with db.engine_for(url).connect() as conn:
        # No ORDER BY: SQLite would read the rows through the key's index, at two and a half
        # times the time of reading the table as it lies.
        q = _filter(_usage_query(conn.dialect.name), usage, region, since, until)
        # In chunks (a server-side cursor on PostgreSQL): only one chunk's rows and
        # strings are alive at a time.
        result = conn.execution_options(yield_per=LOAD_CHUNK).execute(q)
        for rows in result.partitions():
            for col, values in _usage_columns(rows, seen).items():
                parts[col].append(values)
    if not parts["day"]:
        return empty_usage()
    columns: dict[str, np.ndarray] = {}
    for col in USAGE_COLUMNS:  # one column's chunks joined at a time, then let go
        chunks = parts.pop(col)
        columns[col] = np.concatenate(chunks)
        chunks.clear()
    return pd.DataFrame(columns, copy=False)


# Rows per fetch: the driver's fresh row objects and strings for this many are alive at once.
LOAD_CHUNK = 20_000
_TEXT_COLUMNS = ("region", "image", "tag", "digest", "source")


def _usage_columns(rows: Sequence[Any], seen: dict[str, dict[str, str]]) -> dict[str, np.ndarray]:
    """One chunk of usage rows as column arrays. The driver makes a new string for every
    cell (about 400 bytes a row over the five text columns); each distinct value is kept
    once instead (``seen``, per column), so the frame holds a pointer per cell."""
    frame = pd.DataFrame.from_records(rows, columns=USAGE_COLUMNS, nrows=len(rows))
    out: dict[str, np.ndarray] = {}
    # The day as ISO text, parsed in one vectorised pass (not a date object per row).
    day = pd.to_datetime(frame["day"], format="ISO8601")
    out["day"] = day.to_numpy(dtype="datetime64[ns]")
    for col in ("hour", "pulls", "present", "pipelines"):
        out[col] = frame[col].to_numpy(dtype=np.int64)
    for col in _TEXT_COLUMNS:
        values = frame[col].to_numpy(dtype=object)
        codes, uniques = pd.factorize(values)
        if len(values) and codes.min() >= 0:  # key columns: never NULL
            kept = seen[col]
            shared = np.array([kept.setdefault(u, u) for u in uniques.tolist()], dtype=object)
            values = shared[codes]
        out[col] = values
    return out


def _usage_query(dialect: str) -> Any:
    """The usage rows, the day as ISO text whatever the server's DateStyle (PostgreSQL's
    cast follows it)."""
    iso: Any = cast(usage.c.day, String)
    if dialect != "sqlite":
        iso = func.to_char(usage.c.day, "YYYY-MM-DD")
    columns = [usage.c[k] for k in _KEY[1:]]
    return select(iso.label("day"), *columns, usage.c.pulls, usage.c.present, usage.c.pipelines)


def pipelines_frame(
    url: str, region: str | None = None, since: Any = None, until: Any = None
) -> pd.DataFrame:
    """(day, hour, region, image, tag, digest, source, pipeline-hash) rows: exact distincts."""
    cols = [*_KEY, "pipeline"]
    q = _filter(
        select(*[usage_pipelines.c[c] for c in cols]), usage_pipelines, region, since, until
    )
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(q).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=cols)
    frame["day"] = pd.to_datetime(frame["day"]).astype("datetime64[ns]")
    frame["hour"] = frame["hour"].astype("int64")
    return frame


def _filter(q: Any, table: Table, region: str | None, since: Any, until: Any) -> Any:
    if region is not None:
        q = q.where(table.c.region == region)
    start, end = _day(since), _day(until)
    if start is not None:
        q = q.where(table.c.day >= start)
    if end is not None:
        q = q.where(table.c.day < end)
    return q


STATIC_COLUMNS = ["file", "line", "reference", "image", "tag", "first_seen", "digest", "kind"]


def static_frame(url: str) -> pd.DataFrame:
    """Stored static references: file, line, reference, image, tag, first_seen (UTC), digest,
    kind, platform, last_seen (UTC) and ``removed`` (UTC, NaT while named: the time a
    reference found in git history left its file; its row has line 0 or below)."""
    s = static_refs
    q = select(
        s.c.file,
        s.c.line,
        s.c.reference,
        s.c.image,
        s.c.tag,
        s.c.first_seen,
        s.c.digest,
        s.c.kind,
        s.c.platform,
        s.c.last_seen,
    )
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(q.order_by(s.c.file, s.c.line)).all()
    frame = pd.DataFrame(
        [tuple(r) for r in rows], columns=[*STATIC_COLUMNS, "platform", "last_seen"]
    )
    frame["first_seen"] = pd.to_datetime(frame["first_seen"], utc=True)
    frame["last_seen"] = pd.to_datetime(frame["last_seen"], utc=True)
    frame["line"] = frame["line"].astype("int64")
    frame["removed"] = frame["last_seen"].where(frame["line"] <= 0)
    return frame
