"""The analytics store: hourly usage aggregates, distinct pipelines, static references, and
the bookkeeping that makes re-ingesting a file idempotent. Raw log lines are never kept.

Tables (SQLAlchemy Core, declared and migrated in ``warmer.store.schema``; SQLite by
default, PostgreSQL too):

- ``analytics_usage``: pulls and already-present uses per (day, hour, region, image, tag,
  digest, source); an ingest adds to the counts with a dialect upsert.
- ``analytics_usage_pipelines``: one row per distinct pipeline (a short hash of its name)
  per usage bucket, so distinct counts stay exact however often counts are added.
- ``analytics_static_refs``: references named in Dockerfiles, compose, Kubernetes and CI
  files, with the time each (file, reference) was first seen.
- ``analytics_ingested_files``: per ingested file, a fingerprint of its first KiB, how far
  it was read (offset in the decompressed stream) and a fingerprint of the KiB before that
  offset. A file whose head and tail match is continued from the offset (an appended log);
  one that does not match any record is read from the start (a rotated or new file).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd
from sqlalchemy import Table, and_, delete, func, select
from sqlalchemy.engine import Connection

from analytics.events import Event
from analytics.frames import USAGE_COLUMNS
from warmer.store import db
from warmer.store.schema import USAGE_KEY as _KEY
from warmer.store.schema import ingested_files, static_refs, usage, usage_pipelines

__all__ = [
    "Aggregate",
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
    rows = [
        {**dict(zip(_KEY, key, strict=True)), "pulls": c[0], "present": c[1]}
        for key, c in agg.counts.items()
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
    prow = [{**dict(zip(_KEY, key, strict=True)), "pipeline": p} for key, p in agg.pipelines]
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
def add_static_refs(
    url: str,
    refs: Iterable[Any],
    files: Iterable[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Replace the stored references of every scanned file with ``refs``.

    ``refs`` are ``analytics.staticrefs.StaticRef`` (``file``, ``line``, ``reference``,
    ``kind``, ``platform``). ``files`` lists every file scanned (also those with no
    reference left) so removed references disappear. ``first_seen`` is kept per (file,
    reference) across rescans, even when the line moves.
    """
    now = now or datetime.now(UTC)
    items = list(refs)
    scanned = set(files or ()) | {r.file for r in items}
    if not scanned:
        return 0
    with db.engine_for(url).begin() as conn:
        first: dict[tuple[str, str], datetime] = {}
        names = sorted(scanned)
        for i in range(0, len(names), 500):
            part = names[i : i + 500]
            for row in conn.execute(
                select(static_refs.c.file, static_refs.c.reference, static_refs.c.first_seen).where(
                    static_refs.c.file.in_(part)
                )
            ):
                seen = (
                    row.first_seen if row.first_seen.tzinfo else row.first_seen.replace(tzinfo=UTC)
                )
                key = (row.file, row.reference)
                first[key] = min(first.get(key, seen), seen)
            conn.execute(delete(static_refs).where(static_refs.c.file.in_(part)))
        rows: dict[tuple[str, int, str], dict[str, Any]] = {}
        for r in items:
            ref = r.reference
            canonical = str(ref)
            rows[(r.file, r.line, canonical)] = {
                "file": r.file,
                "line": r.line,
                "reference": canonical,
                "image": ref.name,
                "tag": ref.tag or "",
                "digest": ref.digest or "",
                "kind": r.kind,
                "platform": r.platform or "",
                "first_seen": first.get((r.file, canonical), now),
                "last_seen": now,
            }
        if rows:
            conn.execute(static_refs.insert(), list(rows.values()))
    return len(rows)


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
    """Hourly usage rows; ``since`` inclusive, ``until`` exclusive (days, dates or datetimes).

    ``pipelines`` is the number of distinct pipelines in the row's own bucket; for exact
    distinct counts over other groupings use ``pipelines_frame``.
    """
    p = usage_pipelines
    counts = (
        select(*[p.c[k] for k in _KEY], func.count().label("pipelines"))
        .group_by(*[p.c[k] for k in _KEY])
        .subquery()
    )
    joined = usage.outerjoin(counts, and_(*[usage.c[k] == counts.c[k] for k in _KEY]))
    q = select(
        *[usage.c[k] for k in _KEY],
        usage.c.pulls,
        usage.c.present,
        func.coalesce(counts.c.pipelines, 0).label("pipelines"),
    ).select_from(joined)
    q = _filter(q, usage, region, since, until)
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(q.order_by(usage.c.day, usage.c.hour)).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=USAGE_COLUMNS)
    frame["day"] = pd.to_datetime(frame["day"]).astype("datetime64[ns]")
    for col in ("hour", "pulls", "present", "pipelines"):
        frame[col] = frame[col].astype("int64")
    for col in ("region", "image", "tag", "digest", "source"):
        frame[col] = frame[col].astype(object)
    return frame


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
    """Stored static references: file, line, reference, image, tag, first_seen (UTC), ..."""
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
    )
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(q.order_by(s.c.file, s.c.line)).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[*STATIC_COLUMNS, "platform"])
    frame["first_seen"] = pd.to_datetime(frame["first_seen"], utc=True)
    frame["line"] = frame["line"].astype("int64")
    return frame
