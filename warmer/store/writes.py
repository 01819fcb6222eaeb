"""The writes a warm run makes, as values, and how one is executed.

Item updates, holdings, incidents and the reset of a killed run's items: ``Ledger.apply``
commits a sequence of them in one transaction, which is how ``warmer.store.writer`` keeps
the executor's bookkeeping off its event loop. Core statements, not the ORM: the writer
thread shares the interpreter with the event loop moving the bytes, and the ORM cost 2.5 x
the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """Set ``values`` (column -> value) on run item ``item_id``."""

    item_id: int
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HoldingRecord:
    """A mirror (instance) now holds this object, warmed and verified at ``now``."""

    mirror: str
    instance: str
    repository: str
    kind: str
    digest: str
    size: int
    now: datetime
    ttl: timedelta | None
    run_id: int | None
    # The mirror's expiry policy (see MirrorConfig.expiry) and whether this fetch was seen to
    # make the mirror fetch from its parent (True), seen served from its storage (False),
    # or could not tell (None: a manifest; distribution answers both the same).
    expiry: str = "first-fetch"
    fetched: bool | None = None


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """Content that did not match its digest: recorded, and its holdings at the mirror
    marked 'incident' so nothing counts it warm."""

    mirror: str
    repository: str
    digest: str
    kind: str
    detail: str
    now: datetime
    run_id: int | None


@dataclass(frozen=True, slots=True)
class InflightReset:
    """Items of ``run_id`` left 'running' (by a killed process) go back to 'pending'."""

    run_id: int


LedgerOp = ItemUpdate | HoldingRecord | IncidentRecord | InflightReset


# The ledger's tables by name: their SQLModel classes in warmer.store.ledger register them
# in SQLModel's metadata, and every op below runs only through ``Ledger.apply``.
def _table(name: str) -> sa.Table:
    return SQLModel.metadata.tables[name]


_HOLDING_KEY = ("mirror", "instance", "repository", "digest")


def apply_one(conn: sa.Connection, op: LedgerOp) -> None:
    """Execute one op inside the caller's transaction."""
    run_item, holding, incident = _table("run_item"), _table("holding"), _table("incident")
    if isinstance(op, ItemUpdate):
        conn.execute(run_item.update().where(run_item.c.id == op.item_id).values(**op.values))
    elif isinstance(op, HoldingRecord):
        _put_holding(conn, holding, op)
    elif isinstance(op, IncidentRecord):
        conn.execute(
            incident.insert().values(
                at=op.now,
                run_id=op.run_id,
                mirror=op.mirror,
                repository=op.repository,
                digest=op.digest,
                kind=op.kind,
                detail=op.detail,
            )
        )
        conn.execute(
            holding.update()
            .where(holding.c.mirror == op.mirror, holding.c.digest == op.digest)
            .values(state="incident")
        )
    else:
        conn.execute(
            run_item.update()
            .where(run_item.c.run_id == op.run_id, run_item.c.state == "running")
            .values(state="pending")
        )


def _put_holding(conn: sa.Connection, table: sa.Table, op: HoldingRecord) -> None:
    """Insert the row of one object at one mirror instance, or refresh it (its ``kind``
    stays). One upsert: replicas sharing a PostgreSQL ledger may record the same object
    at once.

    The expiry follows the mirror's policy. ``first-fetch``: the clock starts when the mirror
    fetched the object from its parent, so a fetch seen served from storage keeps the
    recorded clock while it has not run out (whatever the row's state), and one that could
    not tell keeps it while the row is warm and unexpired; otherwise (a fetch after the
    recorded expiry: the mirror deleted it then) it starts again. ``last-access``:
    every fetch renews. ``none``: no expiry."""
    ttl = op.ttl if op.expiry != "none" else None
    expires = op.now + ttl if ttl else None
    key = {
        "mirror": op.mirror,
        "instance": op.instance,
        "repository": op.repository,
        "digest": op.digest,
    }
    first = {
        "size": op.size,
        "warmed_at": op.now,
        "verified": True,
        "expires_at": expires,
        "first_fetched_at": op.now,
        "state": "warm",
        "run_id": op.run_id,
    }
    # The row's clock restarts when the mirror cannot still hold the object from before.
    gone = sa.or_(
        table.c.state != "warm",
        table.c.first_fetched_at.is_(None),
        table.c.expires_at.is_(None),
        table.c.expires_at <= op.now,
    )
    if op.fetched is False:  # answered from storage: the mirror's clock runs from before
        gone = sa.or_(
            table.c.first_fetched_at.is_(None),
            table.c.expires_at.is_(None),
            table.c.expires_at <= op.now,
        )
    restart: sa.ColumnElement[bool] = sa.true() if op.fetched else gone
    keep_clock = op.expiry == "first-fetch" and not op.fetched
    fresh: dict[str, Any] = {
        "size": op.size,
        "warmed_at": op.now,
        "verified": True,
        "state": "warm",
        "run_id": op.run_id,
        "first_fetched_at": sa.case((restart, op.now), else_=table.c.first_fetched_at),
        "expires_at": (
            sa.case((gone, expires), else_=table.c.expires_at) if keep_clock else expires
        ),
    }
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(**key, kind=op.kind, **first)
        conn.execute(pg.on_conflict_do_update(index_elements=_HOLDING_KEY, set_=fresh))
    elif conn.dialect.name == "sqlite":
        lite = sqlite.insert(table).values(**key, kind=op.kind, **first)
        conn.execute(lite.on_conflict_do_update(index_elements=_HOLDING_KEY, set_=fresh))
    else:  # no upsert in SQLAlchemy's generic dialect: update, or insert when missing
        where = [table.c[k] == v for k, v in key.items()]
        if not conn.execute(table.update().where(*where).values(**fresh)).rowcount:
            conn.execute(table.insert().values(**key, kind=op.kind, **first))
