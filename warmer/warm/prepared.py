"""A region's plan ready to run, and its record in the ledger as a run.

The planning half of a warm run's shell (:mod:`warmer.warm.run` holds the whole run):
``prepare`` resolves what is wanted through the top tier and hands the pure planner
(:func:`warmer.warm.plan.plan`) plain values (the mirror chains, what the ledger says each
mirror holds, the budget, ``now``); ``start_run`` records the plan as a run whose items
the executor carries out and a later process can resume. Kept apart from the run so that
the pipelined start and the rate-reserve passes there read as the policy they are.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from warmer.config import Config
from warmer.store.ledger import Ledger, as_utc
from warmer.warm import plan as planner
from warmer.warm.reserve import RateReserve
from warmer.warm.resolve import Learned, Want, resolve
from warmer.warm.topology import stored_from


@dataclass
class Prepared:
    """A plan ready to run, with what could not be resolved."""

    region: str
    plan: planner.Plan
    unresolved: list[planner.Skipped] = field(default_factory=list)
    window: timedelta | None = None
    budget: int | None = None
    # Manifest GETs made through the top tier to resolve the planned images (index and
    # platform manifests): each reached the upstream unless the top mirror held it.
    manifest_requests: int = 0


def mirror_nodes(config: Config) -> list[planner.MirrorNode]:
    """Every configured mirror as the planner sees it (its parent, naming, cache, link)."""
    nodes = []
    for name, mirror in config.mirrors.items():
        separate = mirror.replicas and not mirror.shared_storage  # each replica has a cache
        nodes.append(
            planner.MirrorNode(
                name=name,
                parent=mirror.parent if mirror.parent in config.mirrors else None,
                path_prefix=mirror.path_prefix.strip("/") if mirror.naming == "prefix" else "",
                cache_scope=mirror.cache_scope,
                fetch_multiplicity=mirror.fetch_multiplicity,
                stored_from=stored_from(mirror.cold_blobs, mirror.fetch_multiplicity),
                link_rate=mirror.link.bandwidth,
                instances=tuple(mirror.instances()) if separate else (),
                upstreams=(config.upstream_of(name),),
            )
        )
    return nodes


def region_targets(config: Config, region: str) -> list[str]:
    return list(config.region(region).mirrors)


def holdings(
    config: Config, ledger: Ledger, now: datetime, renew_within: timedelta | None = None
) -> list[planner.Held]:
    """What the planner may count as held: unexpired content. With ``renew_within``, content
    of a mirror whose hits renew it (``expiry = "last-access"``) expiring within that margin
    counts as not held, so it is re-warmed before it expires; on a ``first-fetch`` mirror a
    warm before expiry is a cache hit that renews nothing, so its content is re-warmed in
    the first run after it expired."""
    renewing = {n for n, m in config.mirrors.items() if m.expiry == "last-access"}
    margin = renew_within or timedelta(0)

    def lasts(expires: datetime | None) -> bool:
        return expires is None or expires > now + margin

    rows = [
        h
        for h in ledger.holdings(config.mirrors.keys(), now)
        if h.mirror not in renewing or lasts(as_utc(h.expires_at))
    ]
    return [
        planner.Held(
            mirror=h.mirror, repository=h.repository, digest=h.digest, instance=h.instance or None
        )
        for h in rows
    ]


async def prepare(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    *,
    now: datetime,
    budget: int | None = None,
    window: timedelta | None = None,
    reserve: RateReserve | None = None,
    until: float | None = None,
    renew_within: timedelta | None = None,
    learned: Learned | None = None,
) -> Prepared:
    """Resolve ``wants`` and plan them all at once (``budget`` None: the region's).

    With a ``reserve``, resolving waits at it until ``until`` (a ``time.monotonic()``
    value; None waits for the limit window to reset); an image it could not wait for is
    left out with the reason. With ``learned`` (a run about to start), what resolving
    learned is noted there, so the run does not ask the top tier for it again.
    """
    wanted, unresolved = await resolve(
        config, ledger, region, wants, now, reserve=reserve, until=until, learned=learned
    )
    budget_bytes = budget if budget is not None else config.region(region).budget
    result = planner.plan(
        wanted,
        mirror_nodes(config),
        region_targets(config, region),
        holdings(config, ledger, now, renew_within),
        planner.Budget(bytes=budget_bytes, window=window),
        now,
    )
    requests = sum(len(w.manifests) for w in wanted)
    return Prepared(region, result, unresolved, window, budget_bytes, requests)


def item_rows(plan: planner.Plan) -> list[dict[str, Any]]:
    """A plan's items as the ledger stores them on a run."""
    return [
        {
            "seq": item.order,
            "mirror": item.mirror,
            "instance": item.instance or "",
            "tier": item.tier,
            "repository": item.repository,
            "upstream_repository": item.upstream_repository,
            "kind": item.kind,
            "digest": item.digest,
            "size": item.size,
            "media_type": item.media_type,
            "image": item.image,
            "reference": item.reference,
            "depends_on": "[" + ",".join(str(d) for d in item.depends_on) + "]",
            "parent_cost": item.parent_cost,
        }
        for item in plan.items
    ]


def skipped_rows(*groups: Iterable[planner.Skipped]) -> list[dict[str, str]]:
    """Images left out, as the ledger stores them on a run."""
    return [{"image": s.image, "reason": s.reason} for group in groups for s in group]


def owner() -> str:
    """Who runs a run (host:pid): the ledger keeps it so that a takeover can say whose it was."""
    return f"{socket.gethostname()}:{os.getpid()}"


def start_run(ledger: Ledger, prepared: Prepared, now: datetime, deadline: datetime | None) -> int:
    """Record ``prepared`` as a new run of its region; returns the run's id."""
    return ledger.create_run(
        region=prepared.region,
        items=item_rows(prepared.plan),
        images=prepared.plan.images,
        skipped=skipped_rows(prepared.plan.skipped, prepared.unresolved),
        now=now,
        deadline=deadline,
        owner=owner(),
    )
