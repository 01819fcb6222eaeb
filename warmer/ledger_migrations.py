"""The ledger's schema migrations: frozen table definitions, applied in order by
``warmer.db.migrate``. Never edit a shipped migration; append a new one."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from warmer import db


def _v1(conn: Connection) -> None:
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "resolution",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image", sa.String, nullable=False, index=True),
        sa.Column("tag", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("media_type", sa.String, nullable=False),
        sa.Column("where", sa.String, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("observed_at", ts, nullable=False),
        sa.Column("superseded_at", ts),
    )
    sa.Table(
        "holding",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("mirror", sa.String, nullable=False, index=True),
        sa.Column("instance", sa.String, nullable=False),
        sa.Column("repository", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False, index=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("warmed_at", ts, nullable=False),
        sa.Column("verified", sa.Boolean, nullable=False),
        sa.Column("expires_at", ts),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.UniqueConstraint("mirror", "instance", "repository", "digest"),
    )
    sa.Table(
        "run",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("region", sa.String, nullable=False, index=True),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("finished_at", ts),
        sa.Column("deadline", ts),
        sa.Column("images", sa.Text, nullable=False),
        sa.Column("skipped", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("owner", sa.String, nullable=False),
    )
    sa.Table(
        "run_item",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("run.id"), nullable=False, index=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("mirror", sa.String, nullable=False),
        sa.Column("instance", sa.String, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("repository", sa.String, nullable=False),
        sa.Column("upstream_repository", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("media_type", sa.String, nullable=False),
        sa.Column("image", sa.String, nullable=False),
        sa.Column("reference", sa.String, nullable=False),
        sa.Column("depends_on", sa.Text, nullable=False),
        sa.Column("parent_cost", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("started_at", ts),
        sa.Column("finished_at", ts),
    )
    sa.Table(
        "incident",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", ts, nullable=False),
        sa.Column("run_id", sa.Integer),
        sa.Column("mirror", sa.String, nullable=False),
        sa.Column("repository", sa.String, nullable=False),
        sa.Column("digest", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    md.create_all(conn)


def _v2(conn: Connection) -> None:
    """The drift history (``warmer refresh``, ``warmer drift``) and a resolution lookup index."""
    md = sa.MetaData()
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "drift",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image", sa.String, nullable=False, index=True),
        sa.Column("tag", sa.String, nullable=False),
        sa.Column("upstream", sa.String, nullable=False),
        sa.Column("old_digest", sa.String, nullable=False),
        sa.Column("new_digest", sa.String, nullable=False),
        sa.Column("detected_at", ts, nullable=False),
        sa.Column("moved_after", ts),
        sa.Column("stale_tiers", sa.Text, nullable=False),
    )
    md.create_all(conn)
    conn.execute(
        sa.text(
            "CREATE INDEX IF NOT EXISTS ix_resolution_image_tag_where"
            ' ON resolution (image, tag, "where")'
        )
    )


db.register("ledger", [_v1, _v2])
