"""Tags that moved while a warm run fetched them: asked at the upstream, recorded as drift.

The executor fails a manifest item whose tag answers another digest at fetch time than at
plan time (``warmer.warm.execute``); :func:`confirm_moves` asks the upstream (HEAD, not
counted by Docker Hub) which happened, records a real move as drift and supersedes the old
top manifest, and hands the warm run (:mod:`warmer.warm.run`) the new images to warm in a
further pass. A tier answering what the upstream does not is a stale metadata cache, which
``warmer refresh`` handles.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from warmer.config import Config
from warmer.oci.reference import InvalidReference, parse
from warmer.oci.registry import RegistryClient, RegistryError
from warmer.store.ledger import Ledger
from warmer.warm.resolve import Want, upstream_client
from warmer.warm.stats import MovedTag, RunStats

log = logging.getLogger("warmer.warm.run")


async def confirm_moves(
    config: Config,
    ledger: Ledger,
    moved: Sequence[MovedTag],
    now: datetime,
    stats: RunStats | None = None,
) -> list[Want]:
    """Ask the upstream (HEAD, not counted by Docker Hub) about each tag that resolved to
    another digest at fetch time than at plan time: the new images of those that moved
    (each recorded as a drift event, the old top manifest superseded) to warm now; a tier
    answering a digest the upstream does not is a stale metadata cache, ``warmer refresh``'s
    business (logged). One client per upstream (one token, one connection); its requests
    are added to ``stats``."""
    out: list[Want] = []
    clients: dict[str, RegistryClient] = {}
    try:
        for m in moved:
            want = await _confirm_move(config, ledger, m, now, clients)
            if want is not None:
                out.append(want)
    finally:
        for name, client in clients.items():
            if stats is not None:
                stats.add_requests("upstream", name, client.requests)
            await client.aclose()
    return out


async def _confirm_move(
    config: Config, ledger: Ledger, m: MovedTag, now: datetime, clients: dict[str, RegistryClient]
) -> Want | None:
    """One moved tag: asked at the upstream, recorded; the Want to warm when it moved."""
    try:
        ref = parse(m.image)
    except InvalidReference:
        return None
    upstream = config.upstream_for_registry(ref.registry)
    if upstream is None:
        return None
    if upstream not in clients:
        clients[upstream] = upstream_client(config, upstream)
    try:
        head = await clients[upstream].head_manifest(ref.repository, m.tag)
    except RegistryError as exc:
        log.warning("%s: could not ask %s whether the tag moved: %s", m.image, upstream, exc)
        return None
    if head.digest == m.got:
        ledger.record_drift(
            image=ref.name, tag=m.tag, upstream=upstream, old_digest=m.planned,
            new_digest=m.got, detected_at=now, moved_after=None, stale_tiers=[],
        )  # fmt: skip
        # The old top manifest a tier fetched before the move (the top tier, while
        # resolving) is no longer what the tag serves: superseded, as refresh does.
        ledger.supersede(
            image=ref.name, tag=m.tag, digest=m.planned, repository=ref.repository,
            mirrors=list(config.mirrors), now=now,
        )  # fmt: skip
        log.warning("%s moved to %s while it was warmed: warming the new image", m.image, m.got)
        return Want(ref)
    log.warning(
        "%s: a tier answered %s where the upstream has %s (a stale metadata cache: "
        "see warmer refresh)", m.image, m.got, head.digest,
    )  # fmt: skip
    return None
