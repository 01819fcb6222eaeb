"""The ledger: what each mirror holds, tag resolutions, runs, run items and incidents.

Tables are SQLModel classes; the schema is created by the numbered migrations of
``warmer.store.schema`` (frozen SQLAlchemy table definitions, so a later change to a
model never alters what an old migration does). Times are stored as UTC.

The writes a run makes (item updates, holdings, incidents, the reset of a killed run's
items) also exist as values (``ItemUpdate``, ``HoldingRecord``, ...): ``Ledger.apply``
commits a sequence of them in one transaction, which is how ``warmer.store.writer`` keeps
the executor's bookkeeping off its event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, Session, SQLModel, col, select

from warmer.store import db
from warmer.store.writes import (
    HoldingRecord,
    IncidentRecord,
    InflightReset,
    ItemUpdate,
    LedgerOp,
    apply_one,
)

__all__ = [
    "Drift",
    "Holding",
    "HoldingRecord",
    "Incident",
    "IncidentRecord",
    "InflightReset",
    "ItemUpdate",
    "Ledger",
    "LedgerOp",
    "Resolution",
    "Run",
    "RunItem",
    "as_utc",
    "utcnow",
]

RUN_STATES = ("running", "done", "failed", "aborted")
ITEM_STATES = ("pending", "running", "done", "failed", "skipped")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class Resolution(SQLModel, table=True):
    """A tag's digest as seen at one place (an upstream or a mirror tier) at one time."""

    __tablename__ = "resolution"
    id: int | None = Field(default=None, primary_key=True)
    image: str = Field(index=True)  # canonical name without tag: docker.io/library/python
    tag: str
    digest: str
    media_type: str = ""
    where: str  # upstream or mirror name
    tier: int  # -1 for the upstream, then 0, 1 ... down the chain
    observed_at: datetime
    superseded_at: datetime | None = None


class Holding(SQLModel, table=True):
    """Content a mirror (instance) is known to hold, warmed and verified by the warmer."""

    __tablename__ = "holding"
    __table_args__ = (sa.UniqueConstraint("mirror", "instance", "repository", "digest"),)
    id: int | None = Field(default=None, primary_key=True)
    mirror: str = Field(index=True)
    instance: str = ""
    repository: str  # as named at the upstream (the mirror's prefix is config)
    kind: str  # manifest | blob
    digest: str = Field(index=True)
    size: int
    warmed_at: datetime  # the last time the warmer fetched it through this mirror
    verified: bool
    expires_at: datetime | None = None  # by the mirror's expiry policy (None: never)
    first_fetched_at: datetime | None = None  # when the mirror fetched it from its parent
    state: str = "warm"  # warm | incident | superseded
    run_id: int | None = None


class Run(SQLModel, table=True):
    __tablename__ = "run"
    id: int | None = Field(default=None, primary_key=True)
    region: str = Field(index=True)
    state: str = "running"
    started_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    images: str = "[]"  # JSON list of planned images
    skipped: str = "[]"  # JSON list of {image, reason}
    summary: str = "{}"  # JSON summary written at the end
    owner: str = ""  # which process runs it (host:pid), for takeover


class RunItem(SQLModel, table=True):
    __tablename__ = "run_item"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True, foreign_key="run.id")
    seq: int  # the plan's order
    mirror: str
    instance: str = ""
    tier: int
    repository: str  # path at the mirror
    upstream_repository: str
    kind: str
    digest: str
    size: int
    media_type: str = ""
    image: str
    reference: str
    depends_on: str = "[]"  # JSON list of seq
    parent_cost: int = 0
    state: str = "pending"
    reason: str = ""
    attempts: int = 0
    bytes: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Incident(SQLModel, table=True):
    """Content that did not match its digest, or a tier serving what the upstream never had."""

    __tablename__ = "incident"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime
    run_id: int | None = None
    mirror: str
    repository: str
    digest: str
    kind: str  # digest-mismatch | foreign-digest | ...
    detail: str


class Drift(SQLModel, table=True):
    """A tag seen to move upstream, or a tier seen serving another digest than the upstream."""

    __tablename__ = "drift"
    id: int | None = Field(default=None, primary_key=True)
    image: str = Field(index=True)  # canonical name without tag
    tag: str
    upstream: str
    old_digest: str  # "" when the tag was not known before
    new_digest: str
    detected_at: datetime
    moved_after: datetime | None = None  # the last observation that still showed old_digest
    stale_tiers: str = (
        "[]"  # JSON list of {mirror, tier, served, since, seconds, invalidated, fresh_after}
    )


# The tables are created by the ledger's migrations in warmer.store.schema.

# -- access ---------------------------------------------------------------------------------


class Ledger:
    """Reads and writes of the ledger tables over one database URL."""

    def __init__(self, url: str = db.DEFAULT_URL) -> None:
        self.url = url
        self.engine = db.engine_for(url)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # holdings -------------------------------------------------------------------------------

    def holdings(self, mirrors: Iterable[str], now: datetime) -> list[Holding]:
        """Warm, verified, unexpired content of the given mirrors (expired rows never count)."""
        names = list(mirrors)
        with self.session() as s:
            rows = s.exec(
                select(Holding).where(
                    col(Holding.mirror).in_(names),
                    Holding.state == "warm",
                    Holding.verified == True,  # noqa: E712
                )
            ).all()
        return [h for h in rows if (as_utc(h.expires_at) or now + timedelta(1)) > now]

    def record_holding(
        self,
        *,
        mirror: str,
        instance: str,
        repository: str,
        kind: str,
        digest: str,
        size: int,
        now: datetime,
        ttl: timedelta | None,
        run_id: int | None,
    ) -> None:
        record = HoldingRecord(
            mirror=mirror, instance=instance, repository=repository, kind=kind, digest=digest,
            size=size, now=now, ttl=ttl, run_id=run_id,
        )  # fmt: skip
        self.apply([record])

    def mark_holdings(self, mirror: str, digest: str, state: str) -> int:
        """Stop counting a digest as warm at a mirror (incident, superseded)."""
        with self.session() as s:
            result = s.execute(
                sa.update(Holding)
                .where(col(Holding.mirror) == mirror, col(Holding.digest) == digest)
                .values(state=state)
            )
            s.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    # resolutions ----------------------------------------------------------------------------

    def record_resolution(
        self,
        *,
        image: str,
        tag: str,
        digest: str,
        media_type: str,
        where: str,
        tier: int,
        now: datetime,
    ) -> None:
        with self.session() as s:
            s.add(
                Resolution(
                    image=image,
                    tag=tag,
                    digest=digest,
                    media_type=media_type,
                    where=where,
                    tier=tier,
                    observed_at=now,
                )
            )
            s.commit()

    def last_resolution(self, image: str, tag: str, where: str) -> Resolution | None:
        with self.session() as s:
            return s.exec(
                select(Resolution)
                .where(Resolution.image == image, Resolution.tag == tag, Resolution.where == where)
                .order_by(col(Resolution.observed_at).desc(), col(Resolution.id).desc())
            ).first()

    # freshness (refresh, drift, pins) --------------------------------------------------------

    def tracked_tags(self) -> list[tuple[str, str]]:
        """Every (image, tag) the ledger has a resolution for, sorted."""
        with self.session() as s:
            rows = s.execute(sa.select(col(Resolution.image), col(Resolution.tag)).distinct()).all()
        return sorted((str(i), str(t)) for i, t in rows)

    def resolutions(self, image: str, tag: str, where: str | None = None) -> list[Resolution]:
        """A tag's resolutions, oldest first (at one place when ``where`` is given)."""
        with self.session() as s:
            q = select(Resolution).where(Resolution.image == image, Resolution.tag == tag)
            if where is not None:
                q = q.where(Resolution.where == where)
            return list(s.exec(q.order_by(col(Resolution.observed_at), col(Resolution.id))).all())

    def supersede(
        self, *, image: str, tag: str, digest: str, repository: str, mirrors: Iterable[str],
        now: datetime,
    ) -> int:  # fmt: skip
        """``digest`` is no longer what ``image:tag`` points to: its resolutions get
        ``superseded_at`` and its warm holdings at ``mirrors`` the state 'superseded'."""
        with self.session() as s:
            s.execute(
                sa.update(Resolution)
                .where(
                    col(Resolution.image) == image,
                    col(Resolution.tag) == tag,
                    col(Resolution.digest) == digest,
                    col(Resolution.superseded_at).is_(None),
                )
                .values(superseded_at=now)
            )
            result = s.execute(
                sa.update(Holding)
                .where(
                    col(Holding.mirror).in_(list(mirrors)),
                    col(Holding.repository) == repository,
                    col(Holding.digest) == digest,
                    col(Holding.state) == "warm",
                )
                .values(state="superseded")
            )
            s.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    def manifest_holdings(self, mirrors: Iterable[str]) -> list[Holding]:
        """Manifest rows of the given mirrors in any state, expired or not."""
        with self.session() as s:
            return list(
                s.exec(
                    select(Holding).where(
                        col(Holding.mirror).in_(list(mirrors)), Holding.kind == "manifest"
                    )
                ).all()
            )

    def holding_rows(self, mirror: str, repository: str, digest: str) -> list[Holding]:
        """Rows for one object at one mirror, in any state, expired or not."""
        with self.session() as s:
            return list(
                s.exec(
                    select(Holding).where(
                        Holding.mirror == mirror,
                        Holding.repository == repository,
                        Holding.digest == digest,
                    )
                ).all()
            )

    def record_drift(
        self, *, image: str, tag: str, upstream: str, old_digest: str, new_digest: str,
        detected_at: datetime, moved_after: datetime | None, stale_tiers: list[dict[str, Any]],
    ) -> int:  # fmt: skip
        with self.session() as s:
            row = Drift(
                image=image,
                tag=tag,
                upstream=upstream,
                old_digest=old_digest,
                new_digest=new_digest,
                detected_at=detected_at,
                moved_after=moved_after,
                stale_tiers=json.dumps(stale_tiers, default=str),
            )
            s.add(row)
            s.commit()
            assert row.id is not None
            return row.id

    def drifts(self, since: datetime | None = None, image: str | None = None) -> list[Drift]:
        """Drift events, newest first."""
        with self.session() as s:
            q = select(Drift).order_by(col(Drift.detected_at).desc(), col(Drift.id).desc())
            if since is not None:
                q = q.where(Drift.detected_at >= since)
            if image is not None:
                q = q.where(Drift.image == image)
            return list(s.exec(q).all())

    # runs -----------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        region: str,
        items: Sequence[dict[str, Any]],
        images: Sequence[str],
        skipped: Sequence[dict[str, str]],
        now: datetime,
        deadline: datetime | None,
        owner: str,
    ) -> int:
        with self.session() as s:
            run = Run(
                region=region,
                started_at=now,
                deadline=deadline,
                images=json.dumps(list(images)),
                skipped=json.dumps(list(skipped)),
                owner=owner,
            )
            s.add(run)
            s.flush()
            assert run.id is not None
            for item in items:
                s.add(RunItem(run_id=run.id, **item))
            s.commit()
            return run.id

    def add_items(
        self,
        run_id: int,
        *,
        items: Sequence[dict[str, Any]],
        images: Sequence[str],
        skipped: Sequence[dict[str, str]],
    ) -> list[RunItem]:
        """Append a continuation of the run's plan; returns the new items (with their ids).

        ``skipped`` replaces the run's earlier entry for an image listed again (an image
        left out first may be planned later, or left out for another reason).
        """
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id}")
            planned = [*json.loads(run.images), *images]
            again = {e["image"] for e in skipped} | set(images)
            left = [e for e in json.loads(run.skipped) if e["image"] not in again]
            run.images = json.dumps(planned)
            run.skipped = json.dumps([*left, *skipped])
            rows = [RunItem(run_id=run_id, **item) for item in items]
            s.add_all(rows)
            s.commit()
            for row in rows:
                s.refresh(row)
            return rows

    def run(self, run_id: int) -> Run | None:
        with self.session() as s:
            return s.get(Run, run_id)

    def items(self, run_id: int) -> list[RunItem]:
        with self.session() as s:
            return list(
                s.exec(
                    select(RunItem).where(RunItem.run_id == run_id).order_by(col(RunItem.seq))
                ).all()
            )

    def unfinished_run(self, region: str) -> Run | None:
        """The newest run of ``region`` that did not finish (killed, or cut by a deadline)."""
        with self.session() as s:
            return s.exec(
                select(Run)
                .where(Run.region == region, col(Run.state).in_(["running", "aborted"]))
                .order_by(col(Run.id).desc())
            ).first()

    def update_item(self, item_id: int, **values: Any) -> None:
        with self.session() as s:
            s.execute(sa.update(RunItem).where(col(RunItem.id) == item_id).values(**values))
            s.commit()

    def reset_inflight(self, run_id: int) -> int:
        """Items left 'running' by a killed process go back to pending."""
        with self.session() as s:
            result = s.execute(
                sa.update(RunItem)
                .where(col(RunItem.run_id) == run_id, col(RunItem.state) == "running")
                .values(state="pending")
            )
            s.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    def finish_run(self, run_id: int, state: str, summary: dict[str, Any], now: datetime) -> None:
        with self.session() as s:
            s.execute(
                sa.update(Run)
                .where(col(Run.id) == run_id)
                .values(state=state, finished_at=now, summary=json.dumps(summary))
            )
            s.commit()

    def set_run_state(self, run_id: int, state: str, owner: str | None = None) -> None:
        values: dict[str, Any] = {"state": state}
        if owner is not None:
            values["owner"] = owner
        with self.session() as s:
            s.execute(sa.update(Run).where(col(Run.id) == run_id).values(**values))
            s.commit()

    def recent_runs(self, limit: int = 10, region: str | None = None) -> list[Run]:
        with self.session() as s:
            q = select(Run).order_by(col(Run.id).desc()).limit(limit)
            if region:
                q = q.where(Run.region == region)
            return list(s.exec(q).all())

    # incidents ------------------------------------------------------------------------------

    def record_incident(
        self,
        *,
        mirror: str,
        repository: str,
        digest: str,
        kind: str,
        detail: str,
        now: datetime,
        run_id: int | None,
    ) -> None:
        record = IncidentRecord(
            mirror=mirror, repository=repository, digest=digest, kind=kind, detail=detail,
            now=now, run_id=run_id,
        )  # fmt: skip
        self.apply([record])

    def record_lost(self, lost: Sequence[tuple[Holding, str]], now: datetime) -> None:
        """Holdings a mirror was found not to hold any more: each becomes a ``lost``
        incident with its evidence, and its row goes (the next plan fetches it again)."""
        with self.session() as s:
            for h, evidence in lost:
                s.add(
                    Incident(
                        at=now, run_id=None, mirror=h.mirror, repository=h.repository,
                        digest=h.digest, kind="lost", detail=evidence,
                    )
                )  # fmt: skip
                s.execute(sa.delete(Holding).where(col(Holding.id) == h.id))
            s.commit()

    def incidents(self, since: datetime | None = None) -> list[Incident]:
        with self.session() as s:
            q = select(Incident).order_by(col(Incident.at).desc())
            if since is not None:
                q = q.where(Incident.at >= since)
            return list(s.exec(q).all())

    def holdings_summary(self) -> list[dict[str, Any]]:
        """Per mirror: warm items, bytes, and how many are expired or in incident."""
        with self.session() as s:
            rows = s.execute(
                sa.select(
                    col(Holding.mirror),
                    col(Holding.state),
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(col(Holding.size)), 0),
                ).group_by(col(Holding.mirror), col(Holding.state))
            ).all()
        return [
            {"mirror": m, "state": st, "items": int(n), "bytes": int(b)} for m, st, n, b in rows
        ]

    def artifact_tags(self, mirrors: Iterable[str]) -> list[tuple[str, str, str, str]]:
        """(mirror, repository, tag, digest) of the artifact manifests warmed by tag
        at ``mirrors`` (cosign ``sha256-<hex>.sig/.att/.sbom``, fallback ``sha256-<hex>``),
        the latest run's digest per tag, only where the mirror still holds it warm."""
        latest: dict[tuple[str, str, str], tuple[int, str]] = {}
        with self.session() as s:
            rows = s.execute(
                sa.select(col(RunItem.mirror), col(RunItem.upstream_repository),
                          col(RunItem.reference), col(RunItem.digest), col(RunItem.run_id))
                .join(Holding, sa.and_(col(Holding.mirror) == col(RunItem.mirror),
                                       col(Holding.repository) == col(RunItem.upstream_repository),
                                       col(Holding.digest) == col(RunItem.digest)))
                .where(col(RunItem.mirror).in_(list(mirrors)), col(RunItem.kind) == "manifest",
                       col(RunItem.state) == "done", col(RunItem.reference).like("sha256-%"),
                       col(Holding.state) == "warm")
            ).all()  # fmt: skip
        for m, repo, tag, digest, run_id in rows:
            key = (str(m), str(repo), str(tag))
            if key not in latest or latest[key][0] < int(run_id):
                latest[key] = (int(run_id), str(digest))
        return sorted((*k, d) for k, (_, d) in latest.items())

    # batched writes ---------------------------------------------------------------------------

    def apply(self, ops: Sequence[LedgerOp]) -> None:
        """Commit ``ops`` in order, in one transaction: all of them or none.

        Each op is what the method of the same meaning does (``update_item``,
        ``record_holding``, ``record_incident``, ``reset_inflight``). Core statements, not
        the ORM: ``warmer.store.writer`` applies a run's whole bookkeeping here, in a
        thread that shares the interpreter with the event loop moving the bytes.
        """
        if not ops:
            return
        with self.engine.begin() as conn:
            for op in ops:
                apply_one(conn, op)
