"""Cross-replica mutual exclusion: a lease per job in the database, renewed while it runs.

APScheduler 3 cannot share one job store between schedulers, so every replica runs its own
scheduler with the same jobs and, before a job does anything, takes that job's lease. The
lease is a row in ``job_lease`` (name, owner, token, expiry) rather than a PostgreSQL
advisory lock because:

- it works on SQLite too (one machine, several processes) with the same code;
- its expiry is explicit: a replica that stops renewing (SIGKILL, frozen, cut off) loses
  the lease ``ttl`` after its last renewal, whatever its TCP connection does, and the
  holder and expiry are visible (``warmer jobs`` shows them);
- times come from the *database's* clock (``clock_timestamp()`` on PostgreSQL, SQLite's
  ``julianday('now')``), so the replicas' clocks need not agree.

Taking a lease is one ``INSERT .. ON CONFLICT DO UPDATE .. WHERE expired OR mine``, atomic
on both databases. Each acquisition gets a fresh token; renewals and the release name the
token, so a replica that lost its lease (another took it after expiry) cannot renew or
delete the new holder's row: the heartbeat sees zero rows and reports the loss, and the
job is cancelled (its run stays resumable for the new holder).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from warmer.store import db
from warmer.store.schema import LEASE_TABLE

log = logging.getLogger("warmer.store.leases")

TABLE = LEASE_TABLE


def _now_sql(engine: Engine) -> str:
    if engine.dialect.name == "postgresql":
        return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str
    acquired_at: datetime
    expires_at: datetime
    expired: bool


class Leases:
    """Lease operations on one database (the config's ``[database] url``)."""

    def __init__(self, url: str) -> None:
        self.engine = db.engine_for(url)
        now = _now_sql(self.engine)
        self._acquire = sa.text(
            f"INSERT INTO {TABLE} (name, owner, token, acquired_at, renewed_at, expires_at) "
            f"VALUES (:name, :owner, :token, {now}, {now}, {now} + :ttl) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
            "acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, "
            "expires_at = excluded.expires_at "
            f"WHERE {TABLE}.expires_at < {now} OR {TABLE}.token = :token"
        )
        self._renew = sa.text(
            f"UPDATE {TABLE} SET renewed_at = {now}, expires_at = {now} + :ttl "
            "WHERE name = :name AND token = :token"
        )
        self._release = sa.text(f"DELETE FROM {TABLE} WHERE name = :name AND token = :token")
        self._holder = sa.text(f"SELECT token FROM {TABLE} WHERE name = :name")
        self._list = sa.text(
            f"SELECT name, owner, acquired_at, expires_at, {now} FROM {TABLE} ORDER BY name"
        )

    def try_acquire(self, name: str, owner: str, ttl: timedelta, token: str | None = None) -> str:
        """The new lease's token, or "" when another holder's lease has not expired."""
        token = token or uuid.uuid4().hex
        params = {"name": name, "owner": owner, "token": token, "ttl": ttl.total_seconds()}
        with self.engine.begin() as conn:
            conn.execute(self._acquire, params)
            got = conn.execute(self._holder, {"name": name}).scalar()
        return token if got == token else ""

    def holder(self, name: str) -> tuple[LeaseInfo, str] | None:
        """The lease's holder and token, or None when nobody ever took it (or it was given
        back)."""
        now = _now_sql(self.engine)
        query = sa.text(
            f"SELECT owner, token, acquired_at, expires_at, {now} FROM {TABLE} WHERE name = :name"
        )
        with self.engine.connect() as conn:
            row = conn.execute(query, {"name": name}).first()
        if row is None:
            return None
        owner, token, acquired, expires, at = row
        info = LeaseInfo(name, str(owner), _at(acquired), _at(expires), float(expires) < float(at))
        return info, str(token)

    def take_over(self, name: str, owner: str, ttl: timedelta, dead_token: str) -> str:
        """Take a lease whose holder is known dead (its process is gone) before it expires:
        atomic on the dead holder's token, so only one taker wins. The new token, or ""."""
        token = uuid.uuid4().hex
        now = _now_sql(self.engine)
        update = sa.text(
            f"UPDATE {TABLE} SET owner = :owner, token = :token, acquired_at = {now}, "
            f"renewed_at = {now}, expires_at = {now} + :ttl WHERE name = :name AND token = :dead"
        )
        params = {
            "name": name, "owner": owner, "token": token, "ttl": ttl.total_seconds(),
            "dead": dead_token,
        }  # fmt: skip
        with self.engine.begin() as conn:
            taken = conn.execute(update, params)
        return token if getattr(taken, "rowcount", 0) else ""

    def renew(self, name: str, token: str, ttl: timedelta) -> bool:
        """Extend a lease still held with ``token``; False when it was taken over."""
        params = {"name": name, "token": token, "ttl": ttl.total_seconds()}
        with self.engine.begin() as conn:
            result = conn.execute(self._renew, params)
        return bool(getattr(result, "rowcount", 0))

    def release(self, name: str, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._release, {"name": name, "token": token})

    def holders(self) -> list[LeaseInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(self._list).all()

        return [
            LeaseInfo(str(n), str(o), _at(a), _at(e), float(e) < float(now))
            for n, o, a, e, now in rows
        ]


def _at(t: float) -> datetime:
    return datetime.fromtimestamp(float(t), UTC)


class Held:
    """A lease being held: a daemon thread renews it every third of ``ttl``.

    ``on_lost`` is called (from the heartbeat thread) once when the lease is found taken
    over, or when renewals have failed for a whole ``ttl`` (the database unreachable: by
    then another replica may hold it).
    """

    def __init__(
        self,
        leases: Leases,
        name: str,
        token: str,
        ttl: timedelta,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.leases = leases
        self.name = name
        self.token = token
        self.ttl = ttl
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease:{name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        period = self.ttl.total_seconds() / 3
        failing_since: float | None = None
        while not self._stop.wait(period):
            try:
                ok = self.leases.renew(self.name, self.token, self.ttl)
                failing_since = None
            except sa.exc.SQLAlchemyError as exc:
                log.warning("lease %s: renewal failed: %s", self.name, exc)
                failing_since = failing_since or time.monotonic()
                ok = time.monotonic() - failing_since < self.ttl.total_seconds()
            if not ok:
                self._lose("taken over by another replica or not renewable")
                return

    def _lose(self, why: str) -> None:
        if self.lost.is_set():
            return
        log.error("lease %s lost: %s", self.name, why)
        if self.on_lost is not None:
            self.on_lost(why)
        # Last: whoever waits on ``lost`` then also sees what on_lost did (only the
        # heartbeat thread calls this, so the check above still makes it once).
        self.lost.set()

    def release(self) -> None:
        """Stop renewing and give the lease back (unless it was lost)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.lost.is_set():
            try:
                self.leases.release(self.name, self.token)
            except sa.exc.SQLAlchemyError as exc:  # it expires on its own
                log.warning("lease %s: release failed (it will expire): %s", self.name, exc)
