"""Stored rankings for the planner: the ``rankings`` table, its writer and reader.

The I/O edge of ``analytics.rank`` (the table is declared in ``warmer.store.schema``).
Each ``save_ranking`` call stores one computed ranking (all its rows share ``computed_at``);
``latest_ranking`` returns a region's newest. A row keeps the model's ``stay`` (the share of
the tag's pulls before its expected move), which the planner's value uses.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from warmer.store import db
from warmer.store.schema import rankings

COLUMNS = ["region", "image", "tag", "digest", "score", "window_score", "rank", "reasons", "stay"]


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
            "stay": _stay(getattr(r, "stay", 1.0)),
        }
        for r in ranking.itertuples(index=False)
    ]
    if rows:
        with db.engine_for(url).begin() as conn:
            conn.execute(rankings.insert(), rows)
    return len(rows)


def _stay(value: object) -> float:
    """A row's ``stay``; 1 (no expected move) when the frame has none or it is missing."""
    try:
        stay = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1.0
    return 1.0 if math.isnan(stay) else min(max(stay, 0.0), 1.0)


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
    with db.engine_for(url).connect() as conn:
        rows = conn.execute(q).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=[*COLUMNS, "computed_at"])
    frame["computed_at"] = pd.to_datetime(frame["computed_at"], utc=True)
    return frame
