"""A region's warm run, the one way (:func:`warm`), and the plan it starts from (``plan_region``).

``warmer run`` (``--resume`` too), ``warmer refresh`` and the service's warm job call
:func:`warm`; ``warmer plan`` and ``warmer run --dry-run`` call :func:`plan_region`. So the
policy of a warm run is written once, here: which unfinished run is resumed, with which
deadline and which probe image for the rate reserve; the pipelined start (fetching begins on
the first ``FIRST_BATCH`` images resolved); and the rate-reserve passes (images held back
for CI are warmed in a further run once the upstream's limit window resets).

Resolving, planning and recording a run are in :mod:`warmer.warm.prepared`, carrying it out
in :mod:`warmer.warm.execute`: an imperative shell around the pure planner, which gets
plain values.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from warmer.config import Config
from warmer.oci.reference import try_parse
from warmer.store.ledger import Ledger, Run, RunItem, as_utc, utcnow
from warmer.warm import plan as planner
from warmer.warm.execute import SETTLE, Executor, ProgressHook, RunStats
from warmer.warm.lease import RegionBusy, region_lease
from warmer.warm.moves import confirm_moves
from warmer.warm.prepared import (
    Prepared,
    holdings,
    item_rows,
    mirror_nodes,
    owner,
    prepare,
    region_targets,
    skipped_rows,
    start_run,
)
from warmer.warm.reserve import RateReserve
from warmer.warm.resolve import (
    RESERVE_REASON,
    Learned,
    Ready,
    Want,
    mirror_client,
    resolve,
    upstream_client,
)
from warmer.warm.stats import MovedTag

__all__ = [
    "FIRST_BATCH",
    "NothingToResume",
    "Prepared",
    "RegionBusy",
    "Resume",
    "RunHook",
    "WarmError",
    "WarmOutcome",
    "current_window_deadline",
    "execute",
    "monotonic_deadline",
    "plan_region",
    "prepare",
    "rate_reserve",
    "start_run",
    "warm",
]

log = logging.getLogger("warmer.warm.run")

FIRST_BATCH = 16  # images planned before a run starts; the rest join it as they resolve

# Called with the run and each part of its plan as it is recorded; None for a resumed run,
# whose plan an earlier process made (what is left of it is in the ledger).
RunHook = Callable[[int, Prepared | None], None]


class WarmError(RuntimeError):
    """A warm run that could not start (bad region, nothing reachable ...)."""


class NothingToResume(WarmError):
    """Asked to resume (``Resume.ONLY``) a region that has no unfinished run."""


class Resume(enum.Enum):
    """What :func:`warm` does with the region's unfinished run (killed, or cut by a deadline)."""

    NEVER = "never"  # plan a new run (``warmer run``, refresh)
    ONLY = "only"  # continue it, NothingToResume without one (``warmer run --resume``)
    FIRST = "first"  # continue it if there is one, else plan a new run (the service)


@dataclass
class WarmOutcome:
    """What :func:`warm` did: one run per pass (or the run resumed), and what was left out."""

    runs: list[tuple[int, RunStats]] = field(default_factory=list)
    passes: list[Prepared] = field(default_factory=list)  # none for a resumed run
    resumed: int | None = None  # the run continued, when one was
    upstream: str | None = None  # whose rate limit was kept (one upstream per region)
    ratelimit_remaining: int | None = None  # its manifest requests left at the end
    upstream_requests: int = 0  # manifest requests that may have counted upstream
    moved: list[MovedTag] = field(default_factory=list)  # tags that moved during the warm

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


def _upstream(config: Config, region: str) -> str | None:
    """The one upstream the region's top tier proxies (None with several: no reserve kept)."""
    upstreams = {config.upstream_of(m) for m in config.region(region).mirrors}
    return upstreams.pop() if len(upstreams) == 1 else None


def rate_reserve(config: Config, region: str, probe: Want | None) -> RateReserve | None:
    """A reserve keeper for the upstream of the region's top tier, probed by HEAD."""
    name = _upstream(config, region)
    if name is None or probe is None:
        return None
    return RateReserve(
        upstream_client(config, name),
        (probe.ref.repository, probe.ref.reference),
        config.upstreams[name].ratelimit_reserve,
        poll=config.run.ratelimit_poll.total_seconds(),
    )


async def _release(
    reserve: RateReserve | None, outcome: WarmOutcome | None, config: Config, region: str
) -> None:
    """Note on ``outcome`` what the run left and spent upstream; close the reserve's client."""
    if reserve is None:
        return
    if outcome is not None:
        outcome.upstream = _upstream(config, region)
        outcome.ratelimit_remaining = reserve.remaining
        outcome.upstream_requests = reserve.spent
    if reserve.client is not None:
        await reserve.client.aclose()


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
    learned: Learned | None = None,
) -> RunStats:
    """Run (or resume) ``run_id`` and close it in the ledger with its summary.

    A run with nothing pending (everything warm, or done before it was resumed) is closed
    the same way: the executor starts nothing and reports what the ledger holds.
    The caller owns ``reserve`` (it may have served planning in the same event loop) and
    closes its client. ``more`` yields items added to the run while it runs. ``learned``:
    what resolving the run's images learned (the executor does not ask the top tier again
    for what it answered then) and the requests it sent, counted in the run's summary with
    the executor's and the reserve's (upstream) requests.
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
        learned=learned,
    )
    stats = await executor.run(more)
    _count_requests(config, stats, learned, reserve)
    state = "done"
    if stats.pending:
        state = "aborted"
    elif stats.failed:
        state = "failed"
    ledger.finish_run(run_id, state, stats.as_dict(), utcnow())
    return stats


def _count_requests(
    config: Config, stats: RunStats, learned: Learned | None, reserve: RateReserve | None
) -> None:
    """Add to ``stats`` the requests resolving sent to the top tiers and those the reserve
    sent to the upstream since it was last counted (a warm's passes share the reserve)."""
    if learned is not None:
        for (mirror, kind, method), n in learned.requests.items():
            stats.add_requests(config.tier(mirror), mirror, {(kind, method): n})
        learned.requests.clear()  # counted once, with the run resolving them fed
    if reserve is not None and reserve.client is not None:
        url = reserve.client.url
        name = next((n for n, u in config.upstreams.items() if u.url.rstrip("/") == url), url)
        stats.add_requests("upstream", name, reserve.client.requests)
        reserve.client.requests.clear()


async def plan_region(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    *,
    now: datetime,
    budget: int | None = None,
    window: timedelta | None = None,
) -> Prepared:
    """The plan a warm run of ``wants`` starts from, fetching only manifests.

    Planned as a run plans its first pass: resolving never waits at the upstream's
    rate-limit reserve, so an image that would dip into it is listed with that reason (a
    run holds it back for a later pass).
    """
    reserve = rate_reserve(config, region, wants[0] if wants else None)
    try:
        return await prepare(
            config, ledger, region, wants, now=now, budget=budget, window=window,
            reserve=reserve, until=time.monotonic(),
        )  # fmt: skip
    finally:
        await _release(reserve, None, config, region)


async def warm(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want] = (),
    *,
    now: datetime,
    resume: Resume = Resume.NEVER,
    budget: int | None = None,
    window: timedelta | None = None,
    deadline: datetime | None = None,
    on_progress: ProgressHook | None = None,
    on_run: RunHook | None = None,
    renew_within: timedelta | None = None,
    wait: bool = False,
) -> WarmOutcome:
    """Warm ``region``: resume its unfinished run (see ``resume``), or plan and run ``wants``.

    Only one warm per region runs at a time (``warmer.warm.lease``): with another live
    one, RegionBusy naming it, or with ``wait`` the warm waits for it (until ``deadline``).

    A new run is planned and run in passes around the upstream's rate limit. When nothing
    can be cut (no byte budget, no ``window`` length), it starts as soon as the first
    ``FIRST_BATCH`` images are resolved and planned, and the rest of the plan is added to it
    when the others are (see ``_pipelined``). ``on_run`` is called with the run and each
    part of its plan (see ``RunHook``); ``on_progress`` with each item's progress.

    Resolving is where upstream manifest GETs are spent. An image that would dip into the
    reserve is not waited for up front (that would hold back everything else): what fits is
    planned and warmed first; then, while time is left before ``deadline``, the warm waits
    (one log line) for the limit window to reset and plans the held-back images in a
    further pass, within what is left of the budget.
    """
    until = monotonic_deadline(deadline)
    async with region_lease(config, ledger, region, owner(), wait=wait, until=until):
        return await _warm(
            config, ledger, region, wants, now=now, resume=resume, budget=budget,
            window=window, deadline=deadline, on_progress=on_progress, on_run=on_run,
            renew_within=renew_within,
        )  # fmt: skip


async def _warm(
    config: Config,
    ledger: Ledger,
    region: str,
    wants: Sequence[Want],
    *,
    now: datetime,
    resume: Resume,
    budget: int | None,
    window: timedelta | None,
    deadline: datetime | None,
    on_progress: ProgressHook | None,
    on_run: RunHook | None,
    renew_within: timedelta | None,
) -> WarmOutcome:
    if resume is not Resume.NEVER:
        unfinished = ledger.unfinished_run(region)
        if unfinished is not None and unfinished.id is not None:
            return await _resume(
                config, ledger, unfinished, now=now, deadline=deadline,
                on_progress=on_progress, on_run=on_run,
            )  # fmt: skip
        if resume is Resume.ONLY:
            raise NothingToResume(f"no unfinished run for region {region!r} to resume")
    outcome = WarmOutcome()
    reserve = rate_reserve(config, region, wants[0] if wants else None)
    budget_left = budget if budget is not None else config.region(region).budget
    todo = list(wants)
    try:
        while True:
            pass_now = now if not outcome.runs else utcnow()
            if budget_left is None and window is None and len(todo) > FIRST_BATCH:
                run_id, prepared, stats = await _pipelined(
                    config, ledger, region, todo, now=pass_now, deadline=deadline,
                    reserve=reserve, on_progress=on_progress, on_run=on_run,
                    renew_within=renew_within,
                )  # fmt: skip
                outcome.passes.append(prepared)
            else:
                learned = Learned()
                prepared = await prepare(
                    config, ledger, region, todo, now=pass_now, budget=budget_left,
                    window=window, reserve=reserve, until=time.monotonic(),
                    renew_within=renew_within, learned=learned,
                )  # fmt: skip
                outcome.passes.append(prepared)
                run_id = start_run(ledger, prepared, pass_now, deadline)
                if on_run is not None:
                    on_run(run_id, prepared)
                stats = await execute(
                    config, ledger, run_id, deadline=deadline, reserve=reserve,
                    on_progress=on_progress, learned=learned,
                )  # fmt: skip
            stats.manifest_requests = prepared.manifest_requests
            outcome.runs.append((run_id, stats))
            moved: list[Want] = []
            if stats.moved and not outcome.moved and not stats.deadline_hit:
                # Once: a tag that moves again meanwhile is the next run's.
                moved = await confirm_moves(config, ledger, stats.moved, utcnow(), stats)
                outcome.moved.extend(stats.moved)
            held = {s.image for s in outcome.held_back}
            stalled = len(outcome.runs) > 1 and len(held) == len(todo)  # waited, got nowhere
            if moved and (not held or reserve is None or stalled):
                todo = moved  # plan the tags' new images now
                continue
            if not held or stats.deadline_hit or reserve is None or stalled:
                break
            # Until one held-back image fits: its top manifest and one per platform (what
            # resolving it spends at once; with room for one request only, the next pass
            # would hold it back again and stop as stalled).
            per_image = 1 + len(config.region(region).platforms)
            if not await reserve.wait_available(monotonic_deadline(deadline), per_image):
                break
            todo = [w for w in todo if str(w.ref) in held] + moved
            if budget_left is not None:
                budget_left = max(0, budget_left - sum(stats.parent_bytes_by_mirror.values()))
    finally:
        await _release(reserve, outcome, config, region)
    return outcome


async def _resume(
    config: Config,
    ledger: Ledger,
    run: Run,
    *,
    now: datetime,
    deadline: datetime | None,
    on_progress: ProgressHook | None,
    on_run: RunHook | None,
) -> WarmOutcome:
    """Continue ``run`` from what the ledger says is left of it.

    Its deadline is the caller's, else the one it was started with while that is still
    ahead (one past was a window that ended: the run then continues without one). Its plan
    is kept as recorded, so nothing is resolved again and the reserve is probed (HEAD, not
    counted) with the first image the run holds.
    """
    run_id = run.id
    assert run_id is not None
    if deadline is None:
        recorded = as_utc(run.deadline)
        deadline = recorded if recorded is not None and recorded > now else None
    log.info(
        "resuming run %s of %s (left by %s)", run_id, run.region, run.owner or "?",
        extra={"fields": {"region": run.region, "run": run_id, "previous_owner": run.owner}},
    )  # fmt: skip
    refs = (try_parse(item.image) for item in ledger.items(run_id))
    probe = next((Want(ref) for ref in refs if ref is not None), None)
    reserve = rate_reserve(config, run.region, probe)
    outcome = WarmOutcome(resumed=run_id)
    try:
        if on_run is not None:
            on_run(run_id, None)
        stats = await execute(
            config, ledger, run_id, deadline=deadline, reserve=reserve, on_progress=on_progress
        )
        outcome.runs.append((run_id, stats))
    finally:
        await _release(reserve, outcome, config, run.region)
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
    on_run: RunHook | None,
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
    learned = Learned()
    resolution = resolve(
        config, ledger, region, wants, now, reserve=reserve, until=time.monotonic(),
        ready=ready, learned=learned,
    )  # fmt: skip
    resolving = asyncio.create_task(resolution)
    nodes, targets = mirror_nodes(config), region_targets(config, region)
    held = holdings(config, ledger, now, renew_within)
    unlimited = planner.Budget(bytes=None, window=None)
    try:
        images, unresolved, more_left = await _take(ready, FIRST_BATCH)
        whole = planner.plan(images, nodes, targets, held, unlimited, now)
        prepared = Prepared(region, whole, unresolved)  # the whole plan once all is in
        prepared.manifest_requests = sum(len(w.manifests) for w in images)
        run_id = start_run(ledger, prepared, now, deadline)
        if on_run is not None:
            on_run(run_id, Prepared(region, whole, list(unresolved)))

        async def rest() -> AsyncIterator[list[RunItem]]:
            nonlocal whole
            if not more_left:
                return
            images, skipped, _ = await _take(ready, None)
            prepared.manifest_requests += sum(len(w.manifests) for w in images)
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
            on_progress=on_progress, more=rest(), learned=learned,
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
