"""One warm run per region at a time, whoever starts it (``warmer run``, refresh, the service).

A run holds the lease ``run:<region>`` in the database's ``job_lease`` table (the same table,
atomic acquisition, heartbeat and expiry as the service's job leases; see
``warmer.store.leases``) from before it plans or resumes until it ends. A second run for the
region fails at once naming the holder, or waits for it (``wait``). A holder on this host
whose process is gone (killed) is taken over at once; one elsewhere when its lease expires
(``[serve] lease_ttl`` after its last renewal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from warmer.config import Config
from warmer.store.leases import Held, LeaseInfo, Leases
from warmer.store.ledger import Ledger

log = logging.getLogger("warmer.warm.lease")

POLL = 2.0  # seconds between tries while waiting for the holder


class RegionBusy(RuntimeError):
    """Another live process is warming the region (or this one lost its lease)."""


def lease_name(region: str) -> str:
    return f"run:{region}"


def dead_here(owner: str) -> bool:
    """Whether ``owner`` (host:pid, see ``warmer.warm.prepared.owner``) is a process of this
    host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def describe(region: str, info: LeaseInfo, ledger: Ledger) -> str:
    host, _, pid = info.owner.rpartition(":")
    run = ledger.unfinished_run(region)
    which = f", run {run.id}" if run is not None and run.id is not None else ""
    since = info.acquired_at.strftime("%Y-%m-%d %H:%M:%SZ")
    return f"region {region!r} is being warmed by host {host} pid {pid}{which}, since {since}"


@asynccontextmanager
async def region_lease(
    config: Config, ledger: Ledger, region: str, owner: str, *, wait: bool, until: float | None
) -> AsyncIterator[None]:
    """Hold the region's run lease for the body; RegionBusy when another live process holds
    it and ``wait`` is False (or ``until``, a ``time.monotonic()`` value, passes first).
    The body is cancelled, and RegionBusy raised, if the lease is lost meanwhile."""
    leases = Leases(config.database.url)
    name, ttl = lease_name(region), config.serve.lease_ttl
    waiting = False
    while True:
        token = await asyncio.to_thread(leases.try_acquire, name, owner, ttl)
        if token:
            break
        held = await asyncio.to_thread(leases.holder, name)
        if held is None:
            continue  # given back meanwhile
        info, their_token = held
        if dead_here(info.owner):
            token = await asyncio.to_thread(leases.take_over, name, owner, ttl, their_token)
            if token:
                log.warning(
                    "%s: its process is gone; taking the run over", describe(region, info, ledger)
                )
                break
            continue
        busy = describe(region, info, ledger)
        if not wait or (until is not None and time.monotonic() + POLL > until):
            raise RegionBusy(busy)
        if not waiting:
            log.warning("%s; waiting for it", busy)
            waiting = True
        await asyncio.sleep(POLL)
    task, loop = asyncio.current_task(), asyncio.get_running_loop()

    def lost(_why: str) -> None:
        if task is not None:
            loop.call_soon_threadsafe(task.cancel)

    holding = Held(leases, name, token, ttl, on_lost=lost)
    try:
        yield
    except asyncio.CancelledError:
        if holding.lost.is_set():
            raise RegionBusy(
                f"region {region!r}: lost the run lease (the database was unreachable for "
                f"{ttl.total_seconds():.0f}s, or another process took it over); the run is "
                "resumable"
            ) from None
        raise
    finally:
        await asyncio.to_thread(holding.release)
