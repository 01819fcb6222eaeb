"""The database: one engine per URL, migrated to the newest schema on first use.

SQLite (WAL, one file) by default, PostgreSQL by URL. Migrations are numbered per
component (``ledger``, ``analytics`` ...; all in ``warmer.store.schema``) and recorded in
``schema_migrations``; each is a function over a connection, run once, in order, inside a
transaction. A tiny runner is
used instead of Alembic because the schema ships inside the package and must migrate
itself at start-up without a separate tool or script directory.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from warmer.store import dburl
from warmer.store.schema import MIGRATIONS

DEFAULT_URL = "sqlite:///warmer.db"

_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # Switching a new file to WAL needs it to itself, and SQLite answers "locked" at once
    # instead of waiting while another process creates the schema: retry, bounded.
    for attempt in range(300):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 299:
                raise
            time.sleep(0.1)
    cur.execute("PRAGMA synchronous=NORMAL")
    # A 32 MiB page cache instead of 2 MiB: an ingest updates usage rows all over the table
    # (the pipelines trigger), and with the default it wrote 100k buckets half again slower.
    cur.execute("PRAGMA cache_size=-32768")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and pick the psycopg 3 driver for it."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def engine_for(url: str = DEFAULT_URL) -> Engine:
    """One engine per URL per process, migrated to the newest schema on first use."""
    given, url = url, dburl.check_url(url)  # DatabaseURLError (bad input), password masked
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is not None:
            return engine
        engine = None
        try:
            if url.startswith("sqlite"):
                path = dburl.sqlite_path(url)
                if path:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            migrate(engine)
        except (OSError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            if engine is not None:
                engine.dispose()
            raise dburl.unavailable(given, exc) from None  # failed work, one line
        _ENGINES[url] = engine
        return engine


def dispose_all() -> None:
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()


def migrate(engine: Engine) -> dict[str, int]:
    """Bring every component of ``schema.MIGRATIONS`` to its newest schema; returns the
    versions."""
    versions: dict[str, int] = {}
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several replicas may start at once: serialise migrations.
            conn.execute(text("SELECT pg_advisory_xact_lock(74657201)"))
        elif engine.dialect.name == "sqlite":
            # Several processes may start at once on a new file: take the write lock before
            # reading what is done (Python's sqlite3 runs DDL outside any transaction, so
            # two first runs both found nothing done and both created the tables).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component VARCHAR(64) NOT NULL, version INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
        )
        for component, steps in MIGRATIONS.items():
            done = {
                row[0]
                for row in conn.execute(
                    text("SELECT version FROM schema_migrations WHERE component = :c"),
                    {"c": component},
                )
            }
            for number, step in enumerate(steps, start=1):
                if number in done:
                    continue
                step(conn)
                conn.execute(
                    text("INSERT INTO schema_migrations (component, version) VALUES (:c, :v)"),
                    {"c": component, "v": number},
                )
            versions[component] = len(steps)
    return versions


@contextmanager
def session(url: str = DEFAULT_URL) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine_for(url), expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
