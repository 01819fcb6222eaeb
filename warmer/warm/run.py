"""The warm job's shell: resolve what is wanted (``warmer.warm.resolve``), plan it, record the
run, execute it.

This is the imperative shell around the pure planner: every piece of I/O of a warm run
(reading the ranking, resolving manifests through the top tier, the ledger, the clock)
happens here, and ``warmer.warm.plan.plan`` gets plain values.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from warmer.config import Config
from warmer.store.ledger import Ledger, RunItem, utcnow
from warmer.warm import plan as planner
from warmer.warm.execute import SETTLE, Executor, ProgressHook, RunStats
from warmer.warm.reserve import RateReserve
from warmer.warm.resolve import (
    RESERVE_REASON,
    Ready,
    Want,
    mirror_client,
    resolve,
    upstream_client,
)

FIRST_BATCH = 16  # images planned before a run starts; the rest join it as they resolve


class WarmError(RuntimeError):
    """A warm run that could not start (bad region, nothing reachable ...)."""


@dataclass
class Prepared:
    """A plan ready to run, with what could not be resolved."""

    region: str
    plan: planner.Plan
    unresolved: list[planner.Skipped] = field(default_factory=list)
    window: timedelta | None = None
    budget: int | None = None


def mirror_nodes(config: Config) -> list[planner.MirrorNode]:
    nodes = []
    for name, m in config.mirrors.items():
        instances = tuple(m.instances()) if (m.replicas and not m.shared_storage) else ()
        nodes.append(
            planner.MirrorNode(
                name=name,
                parent=m.parent if m.parent in config.mirrors else None,
                path_prefix=m.path_prefix.strip("/") if m.naming == "prefix" else "",
                cache_scope=m.cache_scope,
                fetch_multiplicity=m.fetch_multiplicity,
                link_rate=m.link.bandwidth,
                instances=instances,
                upstreams=(config.upstream_of(name),),
            )
        )
    return nodes


def region_targets(config: Config, region: str) -> list[str]:
    return list(config.region(region).mirrors)


def holdings(
    config: Config, ledger: Ledger, now: datetime, renew_within: timedelta | None = None
) -> list[planner.Held]:
    """What the planner may count as held; with ``renew_within``, content whose ledger
    entry expires within that margin counts as not held (it is re-warmed before it expires)."""
    rows = ledger.holdings(config.mirrors.keys(), now + (renew_within or timedelta(0)))
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
    deadline: float | None = None,
    renew_within: timedelta | None = None,
) -> Prepared:
    reg = config.region(region)
    wanted, unresolved = await resolve(
        config, ledger, region, wants, now, reserve=reserve, deadline=deadline
    )
    the_budget = budget if budget is not None else reg.budget
    result = planner.plan(
        wanted,
        mirror_nodes(config),
        region_targets(config, region),
        holdings(config, ledger, now, renew_within),
        planner.Budget(bytes=the_budget, window=window),
        now,
    )
    return Prepared(region, result, unresolved, window, the_budget)


def item_rows(p: planner.Plan) -> list[dict[str, Any]]:
    return [
        {
            "seq": i.order,
            "mirror": i.mirror,
            "instance": i.instance or "",
            "tier": i.tier,
            "repository": i.repository,
            "upstream_repository": i.upstream_repository,
            "kind": i.kind,
            "digest": i.digest,
            "size": i.size,
            "media_type": i.media_type,
            "image": i.image,
            "reference": i.reference,
            "depends_on": "[" + ",".join(str(d) for d in i.depends_on) + "]",
            "parent_cost": i.parent_cost,
        }
        for i in p.items
    ]


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def skipped_rows(*groups: Iterable[planner.Skipped]) -> list[dict[str, str]]:
    """Images left out, as the ledger stores them on a run."""
    return [{"image": s.image, "reason": s.reason} for group in groups for s in group]


def start_run(ledger: Ledger, prepared: Prepared, now: datetime, deadline: datetime | None) -> int:
    skipped = skipped_rows(prepared.plan.skipped, prepared.unresolved)
    return ledger.create_run(
        region=prepared.region,
        items=item_rows(prepared.plan),
        images=prepared.plan.images,
        skipped=skipped,
        now=now,
        deadline=deadline,
        owner=owner(),
    )


def rate_reserve(config: Config, region: str, probe: Want | None) -> RateReserve | None:
    """A reserve keeper for the upstream of the region's top tier, probed by HEAD."""
    reg = config.region(region)
    upstreams = {config.upstream_of(m) for m in reg.mirrors}
    if len(upstreams) != 1 or probe is None:
        return None
    name = upstreams.pop()
    client = upstream_client(config, name)
    return RateReserve(
        client,
        (probe.ref.repository, probe.ref.reference),
        config.upstreams[name].ratelimit_reserve,
        poll=config.run.ratelimit_poll.total_seconds(),
    )


async def execute(
    config: Config,
    ledger: Ledger,
    run_id: int,
    *,
    deadline: datetime | None,
    reserve: RateReserve | None = None,
    on_progress: ProgressHook | None = None,
    settle: float = SETTLE,
    more: AsyncIterator[Sequence[RunItem]] | None = None,
) -> RunStats:
    """Run (or resume) ``run_id`` and close it in the ledger with its summary.

    The caller owns ``reserve`` (it may have served planning in the same event loop) and
    closes its client. ``more`` yields items added to the run while it runs.
    """
    ledger.set_run_state(run_id, "running", owner=owner())
    executor = Executor(
        config,
        ledger,
        run_id,
        deadline=deadline,
        reserve=reserve,
        on_progress=on_progress,
        settle=settle,
        client_factory=lambda m, url: mirror_client(config, m, url),
    )
    stats = await executor.run(more)
    state = "done"
    if stats.pending:
        state = "aborted"
    elif stats.failed:
        state = "failed"
    ledger.finish_run(run_id, state, stats.as_dict(), utcnow())
    return stats


@dataclass
class WarmOutcome:
    """What ``warm`` did: one run per pass, and what was left out."""

    runs: list[tuple[int, RunStats]] = field(default_factory=list)
    passes: list[Prepared] = field(default_factory=list)

    @property
    def unresolved(self) -> list[planner.Skipped]:
        """Images that could not be resolved (not those held back for the reserve)."""
        return [
            s for p in self.passes for s in p.unresolved if not s.reason.startswith(RESERVE_REASON)
        ]

    @property
    def held_back(self) -> list[planner.Skipped]:
        """Images still held back by the rate-limit reserve at the end."""
        if not self.passes:
            return []
        return [s for s in self.passes[-1].unresolved if s.reason.startswith(RESERVE_REASON)]


async def warm(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    *,
    now: datetime,
    budget: int | None = None,
    window: timedelta | None = None,
    deadline: datetime | None = None,
    on_progress: ProgressHook | None = None,
    on_run: Callable[[int, Prepared], None] | None = None,
    renew_within: timedelta | None = None,
) -> WarmOutcome:
    """Plan and run a region's warm, in passes around the upstream's rate limit.

    When nothing can be cut (no byte budget, no window), the run starts as soon as the first
    ``FIRST_BATCH`` images are resolved and planned, and the rest of the plan is added to it
    when the others are (see ``_pipelined``). ``on_run`` is called with the run and each
    part of its plan.

    Resolving is where upstream manifest GETs are spent. An image that would dip into the
    reserve is not waited for up front (that would hold back everything else): what fits is
    planned and warmed first; then, while time is left before ``deadline``, the warm waits
    (one log line) for the limit window to reset and plans the held-back images in a
    further pass, within what is left of the budget.
    """
    outcome = WarmOutcome()
    reserve = rate_reserve(config, region, wants[0] if wants else None)
    left = budget if budget is not None else config.region(region).budget
    todo = list(wants)
    try:
        while True:
            pass_now = now if not outcome.runs else utcnow()
            if left is None and window is None and len(todo) > FIRST_BATCH:
                run_id, prepared, stats = await _pipelined(
                    config, ledger, region, todo, now=pass_now, deadline=deadline,
                    reserve=reserve, on_progress=on_progress, on_run=on_run,
                    renew_within=renew_within,
                )  # fmt: skip
                outcome.passes.append(prepared)
            else:
                prepared = await prepare(
                    config, ledger, region, todo, now=pass_now, budget=left, window=window,
                    reserve=reserve, deadline=time.monotonic(), renew_within=renew_within,
                )  # fmt: skip
                outcome.passes.append(prepared)
                run_id = start_run(ledger, prepared, pass_now, deadline)
                if on_run is not None:
                    on_run(run_id, prepared)
                stats = await execute(
                    config, ledger, run_id, deadline=deadline, reserve=reserve,
                    on_progress=on_progress,
                )  # fmt: skip
            outcome.runs.append((run_id, stats))
            held = {s.image for s in outcome.held_back}
            stalled = len(outcome.runs) > 1 and len(held) == len(todo)  # waited, got nowhere
            if not held or stats.deadline_hit or reserve is None or stalled:
                break
            if not await reserve.wait_available(monotonic_deadline(deadline)):
                break
            todo = [w for w in todo if str(w.ref) in held]
            if left is not None:
                left = max(0, left - sum(stats.parent_bytes_by_mirror.values()))
    finally:
        if reserve is not None and reserve.client is not None:
            await reserve.client.aclose()
    return outcome


async def _pipelined(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    *,
    now: datetime,
    deadline: datetime | None,
    reserve: RateReserve | None,
    on_progress: ProgressHook | None,
    on_run: Callable[[int, Prepared], None] | None,
    renew_within: timedelta | None,
) -> tuple[int, Prepared, RunStats]:
    """One run that starts fetching while the tail of ``wants`` still resolves.

    Resolving costs round trips, not bandwidth (about a second for 60 images at 50 ms),
    and the link would idle meanwhile. So the first ``FIRST_BATCH`` images resolved are
    planned and the run starts on them; the others are planned as a continuation of that
    plan (``plan(..., after=...)``: shared objects are not planned twice, a child waits for
    its parent's item) and added to the running executor. Only without a budget or window,
    where no image is ever left out for room: with one, a first part planned alone could
    take room that a later image would put to better use, so everything is planned at once.
    A run killed before its continuation was added resumes only its first part; the next
    run plans the rest.
    """
    ready: Ready = asyncio.Queue()
    resolution = resolve(
        config, ledger, region, wants, now, reserve=reserve, deadline=time.monotonic(), ready=ready
    )
    resolving = asyncio.create_task(resolution)
    nodes, targets = mirror_nodes(config), region_targets(config, region)
    held = holdings(config, ledger, now, renew_within)
    unlimited = planner.Budget(bytes=None, window=None)
    try:
        images, unresolved, more_left = await _take(ready, FIRST_BATCH)
        whole = planner.plan(images, nodes, targets, held, unlimited, now)
        prepared = Prepared(region, whole, unresolved)  # the whole plan once all is in
        run_id = start_run(ledger, prepared, now, deadline)
        if on_run is not None:
            on_run(run_id, Prepared(region, whole, list(unresolved)))

        async def rest() -> AsyncIterator[list[RunItem]]:
            nonlocal whole
            if not more_left:
                return
            images, skipped, _ = await _take(ready, None)
            part = planner.plan(images, nodes, targets, held, unlimited, now, after=whole)
            whole = planner.merge(whole, part)
            prepared.unresolved.extend(skipped)
            rows = ledger.add_items(
                run_id,
                items=item_rows(part),
                images=part.images,
                skipped=skipped_rows(part.skipped, skipped),
            )
            if on_run is not None:
                on_run(run_id, Prepared(region, part, skipped))
            yield rows

        stats = await execute(
            config, ledger, run_id, deadline=deadline, reserve=reserve,
            on_progress=on_progress, more=rest(),
        )  # fmt: skip
        await resolving  # done: ``rest`` read its end; raises what resolving raised
    finally:
        if not resolving.done():
            resolving.cancel()
            await asyncio.gather(resolving, return_exceptions=True)
    prepared.plan = whole
    return run_id, prepared, stats


async def _take(
    ready: Ready, n: int | None
) -> tuple[list[planner.WantedImage], list[planner.Skipped], bool]:
    """The next ``n`` resolved images (all the rest with None), the images left out on the
    way, and whether more may follow."""
    images: list[planner.WantedImage] = []
    skipped: list[planner.Skipped] = []
    while n is None or len(images) < n:
        got = await ready.get()
        if got is None:
            return images, skipped, False
        if isinstance(got, planner.Skipped):
            skipped.append(got)
        else:
            images.append(got)
    return images, skipped, True


def monotonic_deadline(deadline: datetime | None) -> float | None:
    """A wall-clock deadline as a ``time.monotonic()`` value (what the waits compare to)."""
    if deadline is None:
        return None
    return time.monotonic() + (deadline - utcnow()).total_seconds()


def current_window_deadline(config: Config, region: str, now: datetime) -> datetime | None:
    """The end of the region's window in progress at ``now`` (None when it has none)."""
    reg = config.region(region)
    if not reg.windows:
        return None
    from warmer.windows import WindowSpec, current_window

    specs = [WindowSpec.coerce(w) for w in reg.windows]
    win = current_window(specs, now)
    if win is None:
        raise WarmError(f"region {region!r} is outside its maintenance windows at {now:%F %T}Z")
    return win.end
