"""Stored rankings for the planner: the ``rankings`` table, its writer and reader.

The I/O edge of ``analytics.rank``. Each ``save_ranking`` call stores one computed
ranking (all its rows share ``computed_at``); ``latest_ranking`` returns a region's newest.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from warmer import db

_meta = sa.MetaData()
rankings = sa.Table(
    "rankings",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("computed_at", sa.DateTime, nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("image", sa.String(512), nullable=False),
    sa.Column("tag", sa.String(128), nullable=False),
    sa.Column("digest", sa.String(160), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("window_score", sa.Float, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Index("ix_rankings_region_computed", "region", "computed_at"),
)
COLUMNS = ["region", "image", "tag", "digest", "score", "window_score", "rank", "reasons"]


def _migration_1(conn: Connection) -> None:
    # Frozen copy of the table as first shipped; later changes get their own migration.
    rankings.create(conn, checkfirst=True)


db.register("analytics_rank", [_migration_1])


def _engine(url: str) -> Engine:
    engine = db.engine_for(url)
    db.migrate(engine)  # idempotent: creates this component's table if the engine predates it
    return engine


def save_ranking(url: str, ranking: pd.DataFrame, computed_at: datetime | None = None) -> int:
    """Store ``ranking`` (the frame ``analytics.rank.rank`` returns); returns rows written."""
    when = (computed_at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    rows = [
        {
            "computed_at": when,
            "region": str(r.region),
            "image": str(r.image),
            "tag": str(r.tag),
            "digest": str(r.digest or ""),
            "score": float(r.score),
            "window_score": float(r.window_score),
            "rank": int(r.rank),
            "reasons": str(r.reasons),
        }
        for r in ranking.itertuples(index=False)
    ]
    if rows:
        with _engine(url).begin() as conn:
            conn.execute(rankings.insert(), rows)
    return len(rows)


def latest_ranking(url: str, region: str) -> pd.DataFrame:
    """The region's most recently stored ranking, best first (empty when none)."""
    newest = (
        sa.select(sa.func.max(rankings.c.computed_at))
        .where(rankings.c.region == region)
        .scalar_subquery()
    )
    q = (
        sa.select(*[rankings.c[c] for c in COLUMNS], rankings.c.computed_at)
        .where(rankings.c.region == region, rankings.c.computed_at == newest)
        .order_by(rankings.c.rank)
    )
    with _engine(url).connect() as conn:
        rows = conn.execute(q).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[*COLUMNS, "computed_at"])
    frame["computed_at"] = pd.to_datetime(frame["computed_at"], utc=True)
    return frame
