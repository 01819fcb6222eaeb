"""Every table of the warmer's database and the numbered migrations that create them.

One place for the whole schema: the ledger (resolutions, holdings, runs, run items,
incidents, drift), the analytics store (usage aggregates, pipelines, static references,
ingested files), the stored rankings and the service's job leases. ``warmer.store.db``
applies ``MIGRATIONS`` in order; each component's list is append-only: a shipped
migration is never edited, a change to a table is a new function at the end of its list.

The analytics, rankings and lease tables are SQLAlchemy Core tables declared here and used
by their modules (``analytics.store``, ``warmer.store.rankings``, ``warmer.store.leases``); the
ledger's tables are SQLModel classes in ``warmer.store.ledger``, and its migrations carry
frozen copies of their first definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, Date, DateTime, Integer, MetaData, String, Table
from sqlalchemy.engine import Connection

Migration = Callable[[Connection], None]

# -- the ledger --------------------------------------------------------------------------------


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


def _v3(conn: Connection) -> None:
    """When each mirror first fetched a held object from its parent: the clock of a
    ``first-fetch`` expiry (``warmed_at`` is the last time the warmer touched it)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("holding")}
    if "first_fetched_at" not in columns:
        kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
        conn.execute(sa.text(f"ALTER TABLE holding ADD COLUMN first_fetched_at {kind}"))
        conn.execute(sa.text("UPDATE holding SET first_fetched_at = warmed_at"))


# -- the analytics store -----------------------------------------------------------------------

metadata = MetaData()  # the analytics tables
USAGE_KEY = ("day", "hour", "region", "image", "tag", "digest", "source")


def _key_columns() -> list[Column[Any]]:
    return [
        Column("day", Date, primary_key=True),
        Column("hour", Integer, primary_key=True),
        Column("region", String(128), primary_key=True),
        Column("image", String(512), primary_key=True),
        Column("tag", String(128), primary_key=True),
        Column("digest", String(160), primary_key=True),
        Column("source", String(32), primary_key=True),
    ]


usage = Table(
    "analytics_usage",
    metadata,
    *_key_columns(),
    Column("pulls", BigInteger, nullable=False),
    Column("present", BigInteger, nullable=False),
    # The bucket's rows in analytics_usage_pipelines, counted by a trigger on that table
    # (``_analytics_v2``).
    Column("pipelines", BigInteger, nullable=False, server_default="0"),
)
usage_pipelines = Table(
    "analytics_usage_pipelines",
    metadata,
    *_key_columns(),
    Column("pipeline", String(16), primary_key=True),
)
static_refs = Table(
    "analytics_static_refs",
    metadata,
    Column("file", String(1024), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("reference", String(700), primary_key=True),
    Column("image", String(512), nullable=False),
    Column("tag", String(128), nullable=False),
    Column("digest", String(160), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)
ingested_files = Table(
    "analytics_ingested_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("head_fp", String(64), nullable=False, index=True),
    Column("path", String(1024), nullable=False),
    Column("tail_fp", String(64), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("format", String(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def _analytics_v1(conn: Connection) -> None:
    # The first schema. Later changes are new migrations (ALTER ...), never edits here.
    metadata.create_all(conn, tables=[usage, usage_pipelines, static_refs, ingested_files])


def _analytics_v2(conn: Connection) -> None:
    """Each bucket's distinct pipelines kept on its usage row, by a trigger on the pipelines
    table: counting them at read time (joining the grouped pipelines table, or a count per
    row) took SQLite four times as long as reading the usage rows alone. The writer inserts
    a bucket's usage row before its pipelines and skips a pipeline already there (``ON
    CONFLICT DO NOTHING`` fires no insert trigger), so each stored pipeline counts once, on
    PostgreSQL under concurrent writers too (the update takes the row's lock). A database
    created since has the column from ``_analytics_v1`` (it builds the tables as declared);
    either way the existing rows are counted here."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("analytics_usage")}
    if "pipelines" not in columns:
        conn.execute(
            sa.text("ALTER TABLE analytics_usage ADD COLUMN pipelines BIGINT NOT NULL DEFAULT 0")
        )
    match = " AND ".join(f"{k} = NEW.{k}" for k in USAGE_KEY)
    bump = f"UPDATE analytics_usage SET pipelines = pipelines + 1 WHERE {match};"
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION analytics_count_pipeline() RETURNS trigger"
                f" LANGUAGE plpgsql AS $$ BEGIN {bump} RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER analytics_usage_pipelines_count"
                " AFTER INSERT ON analytics_usage_pipelines"
                " FOR EACH ROW EXECUTE FUNCTION analytics_count_pipeline()"
            )
        )
    else:
        conn.execute(
            sa.text(
                "CREATE TRIGGER IF NOT EXISTS analytics_usage_pipelines_count"
                f" AFTER INSERT ON analytics_usage_pipelines BEGIN {bump} END"
            )
        )
    match = " AND ".join(f"p.{k} = analytics_usage.{k}" for k in USAGE_KEY)
    conn.execute(
        sa.text(
            "UPDATE analytics_usage SET pipelines ="
            f" (SELECT count(*) FROM analytics_usage_pipelines p WHERE {match})"
        )
    )


# -- stored rankings ---------------------------------------------------------------------------

metadata_rankings = sa.MetaData()
rankings = sa.Table(
    "rankings",
    metadata_rankings,
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
    # Share of the pulls before the tag's expected move; the planner values by it.
    sa.Column("stay", sa.Float, nullable=False, server_default=sa.text("1.0")),
    sa.Index("ix_rankings_region_computed", "region", "computed_at"),
)


def _rankings_v1(conn: Connection) -> None:
    # Frozen copy of the table as first shipped; later changes get their own migration.
    rankings.create(conn, checkfirst=True)


def _rankings_v2(conn: Connection) -> None:
    # _rankings_v1 creates the table from its current declaration, so a database created
    # since this column was declared has it already; only an older table gains it.
    columns = {c["name"] for c in sa.inspect(conn).get_columns("rankings")}
    if "stay" not in columns:
        conn.execute(sa.text("ALTER TABLE rankings ADD COLUMN stay FLOAT NOT NULL DEFAULT 1.0"))


# -- the service's job leases --------------------------------------------------------------

LEASE_TABLE = "job_lease"


def _jobs_v1(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        LEASE_TABLE,
        md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),  # seconds since the epoch (DB clock)
        sa.Column("renewed_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    md.create_all(conn)


# Component -> its migrations, oldest first. The names and the numbering are recorded in each
# database's ``schema_migrations``: never rename a component or reorder its list.
MIGRATIONS: dict[str, list[Migration]] = {
    "ledger": [_v1, _v2, _v3],
    "analytics": [_analytics_v1, _analytics_v2],
    "analytics_rank": [_rankings_v1, _rankings_v2],
    "jobs": [_jobs_v1],
}
