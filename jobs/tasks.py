"""The service's job functions: ingest, rank, warm in a window, refresh, verify, prune.

Each is a coroutine taking the :class:`Context` and returning a JSON-able summary with an
``outcome`` ("ok", or why nothing was done: "outside-window", "served", ...). None of them
takes a lease or schedules anything: that is ``jobs.service``. Blocking work (log parsing,
pandas, bulk deletes) runs in a thread so the event loop stays free for the warm engine,
the metrics server and signals.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from jobs.metrics import Metrics
from jobs.schedule import Clock
from warmer.config import Config, ConfigError
from warmer.store import db
from warmer.store.ledger import Ledger, Run, RunItem, as_utc, utcnow
from warmer.warm.plan import ALREADY_WARM
from warmer.warm.resolve import Want, wants_from_args, wants_from_ranking
from warmer.warm.run import Resume, WarmOutcome
from warmer.warm.run import warm as warm_region
from warmer.windows import Window, WindowSpec, current_window

log = logging.getLogger("jobs.tasks")
Summary = dict[str, Any]


class Stopping(Exception):
    """Raised inside a blocking job (between files) when the service is shutting down."""


@dataclass
class Context:
    """What every job needs; one per service process."""

    config: Config
    ledger: Ledger
    clock: Clock
    regions: list[str]
    metrics: Metrics | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    window_busy: dict[tuple[str, datetime], float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.config.database.url


def window_of(ctx: Context, region: str, real_now: datetime) -> Window | None:
    """The region's window open at ``real_now`` (in schedule time), or None."""
    reg = ctx.config.region(region)
    if not reg.windows:
        return None
    specs = [WindowSpec.coerce(w) for w in reg.windows]
    return current_window(specs, ctx.clock.sim(real_now))


# -- warm -----------------------------------------------------------------------------------


def wanted(ctx: Context, region: str) -> list[Want]:
    """The region's stored ranking (``[serve.warm] top``) plus ``[serve.warm] images``."""
    wants = wants_from_ranking(ctx.config, region, ctx.config.serve.warm.top)
    seen = {str(w.ref) for w in wants}
    try:
        extra = wants_from_args(ctx.config.serve.warm.images)
    except ConfigError as exc:
        log.error("serve.warm.images: %s", exc)
        extra = []
    return wants + [w for w in extra if str(w.ref) not in seen]


def served_demand(
    ledger: Ledger, run_ids: Sequence[int], wants: Sequence[Want]
) -> tuple[float, float]:
    """(predicted, served) pulls: a wanted image is served when the last of ``run_ids`` (in
    order) that names it left nothing of it undone, or found it already warm.

    An image held back at the rate-limit reserve is left out of one pass's run and planned
    in the next one: the later run has the last word.
    """
    served_images: dict[str, bool] = {}
    for run_id in run_ids:
        run = ledger.run(run_id)
        if run is None:
            continue
        for left_out in json.loads(run.skipped or "[]"):
            served_images[left_out.get("image", "")] = left_out.get("reason") == ALREADY_WARM
        undone = {item.image for item in ledger.items(run_id) if item.state != "done"}
        for image in json.loads(run.images or "[]"):
            served_images[image] = image not in undone
    predicted = sum(w.score for w in wants)
    served = sum(w.score for w in wants if served_images.get(str(w.ref), False))
    return predicted, served


async def warm(ctx: Context, region: str) -> Summary:
    """Warm ``region`` in its open window, the window's end as the deadline.

    Decides only *whether* to warm: never outside a window, and once a run started in this
    window and finished, not again in it. The run itself is ``warmer run``'s
    (:func:`warmer.warm.run.warm`): the region's unfinished run (a killed replica's, one a
    window cut) is resumed first, else a new run starts on its first images while the rest
    resolve and warms what the upstream's rate-limit reserve held back in further passes.
    """
    now = utcnow()
    window = window_of(ctx, region, now)
    if window is None:
        return {"outcome": "outside-window"}
    deadline = ctx.clock.real(window.end)
    ledger = ctx.ledger
    wants = wanted(ctx, region)
    # A run to resume always goes on (a killed replica's, in this window or an earlier one);
    # only with none is a run that started in this window "served".
    if ledger.unfinished_run(region) is None:
        recent = ledger.recent_runs(1, region)
        started = as_utc(recent[0].started_at) if recent else None
        if started is not None and started >= ctx.clock.real(window.start) - timedelta(seconds=1):
            return {"outcome": "served", "run": recent[0].id}
        if not wants:
            return {"outcome": "nothing-to-warm"}
    began = time.monotonic()
    try:
        outcome = await warm_region(
            ctx.config, ledger, region, wants, now=now, resume=Resume.FIRST,
            deadline=deadline, on_progress=_progress_hook(ctx), wait=True,
        )  # fmt: skip
    finally:
        _account_window(ctx, region, window, time.monotonic() - began)
    _record_metrics(ctx, region, outcome, wants)
    return _summary(outcome, deadline)


def _summary(outcome: WarmOutcome, deadline: datetime) -> Summary:
    """The warm job's summary: the runs' figures added up, and each run's own (one run per
    pass: more than one when the rate-limit reserve held images back)."""
    runs = [{"run": run_id, **stats.as_dict()} for run_id, stats in outcome.runs]
    totals = {
        key: sum(row[key] for row in runs)
        for key in ("done", "failed", "skipped", "pending", "incidents")
    }
    bytes_by_mirror: Counter[str] = Counter()
    for _, stats in outcome.runs:
        bytes_by_mirror.update(stats.bytes_by_mirror)
    return {
        "outcome": "failed" if totals["failed"] or totals["incidents"] else "ok",
        "run": outcome.runs[-1][0] if outcome.runs else None,
        "resumed": outcome.resumed is not None,
        "deadline": deadline.isoformat(),
        **totals,
        "bytes_by_mirror": dict(bytes_by_mirror),
        "deadline_hit": any(stats.deadline_hit for _, stats in outcome.runs),
        "held_back": len(outcome.held_back),
        "unresolved": len(outcome.unresolved),
        "runs": runs,
    }


def _progress_hook(ctx: Context) -> Any:
    metrics = ctx.metrics
    if metrics is None:
        return None

    def hook(what: str, item: RunItem, n: int) -> None:
        if what == "bytes" or (what == "done" and item.kind == "manifest"):
            metrics.bytes_warmed.labels(item.mirror, str(item.tier)).inc(n)

    return hook


def _account_window(ctx: Context, region: str, window: Window, seconds: float) -> None:
    key = (region, window.start)
    ctx.window_busy[key] = ctx.window_busy.get(key, 0.0) + seconds
    if len(ctx.window_busy) > 64:  # keep the newest windows only
        for old in sorted(ctx.window_busy, key=lambda k: k[1])[:-32]:
            del ctx.window_busy[old]
    if ctx.metrics is not None:
        length = ctx.clock.real_span(window.length).total_seconds()
        ctx.metrics.window_utilisation.labels(region).set(
            min(1.0, ctx.window_busy[key] / length) if length > 0 else 0.0
        )
        ctx.metrics.window_seconds.labels(region).inc(seconds)


def _record_metrics(ctx: Context, region: str, outcome: WarmOutcome, wants: Sequence[Want]) -> None:
    """Demand served, and what the warm left and spent of the upstream's rate limit."""
    metrics = ctx.metrics
    if metrics is None:
        return
    if wants:
        predicted, served = served_demand(ctx.ledger, [r for r, _ in outcome.runs], wants)
        metrics.demand.labels(region, "predicted").set(predicted)
        metrics.demand.labels(region, "served").set(served)
    if outcome.upstream is not None:
        if outcome.ratelimit_remaining is not None:
            metrics.ratelimit_remaining.labels(outcome.upstream).set(outcome.ratelimit_remaining)
        metrics.upstream_requests.labels(outcome.upstream).inc(outcome.upstream_requests)


# -- analytics ------------------------------------------------------------------------------


def _expand(patterns: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            out += [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
        else:
            out.append(Path(pattern))
    return out


async def ingest(ctx: Context) -> Summary:
    """Read ``[serve.ingest] paths`` into the usage store (idempotent, resumes grown logs)."""
    from analytics.ingest import Options
    from analytics.ingest import ingest as run_ingest
    from analytics.regions import RegionRules, RuleError

    try:
        rules = RegionRules.from_mapping(ctx.config.analytics.region_rules())
    except RuleError as exc:
        return {"outcome": "failed", "error": str(exc)}
    paths = _expand(ctx.config.serve.ingest.paths)
    missing = [str(p) for p in paths if not p.exists()]
    for p in missing:
        log.warning("ingest: %s does not exist", p)

    def stop_between_files(result: Any) -> None:
        if result.warning:
            log.warning("ingest: %s", result.warning)
        if ctx.stopping.is_set():
            raise Stopping

    def work() -> dict[str, object]:
        report = run_ingest(
            [p for p in paths if p.exists()], Options(rules=rules), url=ctx.url,
            on_file=stop_between_files,
        )  # fmt: skip
        summary = report.as_dict()
        if ctx.metrics is not None:
            ctx.metrics.observe_ingest(summary)
        return summary

    try:
        report = await asyncio.to_thread(work)
    except Stopping:
        return {"outcome": "stopped"}
    return {"outcome": "ok", "missing": missing, **report}


async def rank(ctx: Context) -> Summary:
    """Rank each served region from the store (the ensemble, ``analytics.ensemble``) and save
    it for the planner."""

    def work() -> dict[str, int]:

        from analytics import store
        from analytics.ensemble import rank_ensemble as rank_frame
        from analytics.ensemble import ranking_since
        from warmer.store.rankings import save_ranking

        now = utcnow()
        since = ranking_since(now)
        static = store.static_frame(ctx.url)
        rows: dict[str, int] = {}
        for region in ctx.regions:
            if ctx.stopping.is_set():
                break
            usage = store.usage_frame(ctx.url, region=region, since=since)
            ranking = rank_frame(usage, static, now, region=region)
            rows[region] = save_ranking(ctx.url, ranking, computed_at=now)
        return rows

    rows = await asyncio.to_thread(work)
    return {"outcome": "ok", "rows": rows}


# -- freshness ------------------------------------------------------------------------------


def _as_dict(report: Any) -> dict[str, Any]:
    as_dict = getattr(report, "as_dict", None)
    return dict(as_dict()) if callable(as_dict) else {"report": str(report)}


async def refresh(ctx: Context, region: str) -> Summary:
    """Re-resolve the region's tracked tags (HEAD only); see ``warmer.upkeep.refresh``."""
    from warmer.upkeep.refresh import refresh as run_refresh

    now = utcnow()
    # Inside a window, its end bounds the refresh's warm of moved tags. Outside one, the
    # refresh only checks and records; the next window's warm plans the new digests.
    window = window_of(ctx, region, now)
    deadline = ctx.clock.real(window.end) if window is not None else None
    report = await run_refresh(
        ctx.config, ctx.ledger, region=region, now=now, deadline=deadline,
        warm_moved=window is not None,
    )  # fmt: skip
    return {"outcome": "ok", **_as_dict(report)}


async def verify(ctx: Context, region: str) -> Summary:
    """Reconcile the ledger with the mirrors, then re-fetch a sample of what is still held;
    see ``warmer.upkeep.verify``. The reconcile's parent-link cost is bounded by the
    region's byte budget."""
    from warmer.upkeep.verify import verify as run_verify

    sample = ctx.config.serve.verify.sample
    budget = ctx.config.region(region).budget
    report = await run_verify(
        ctx.config, ctx.ledger, region=region, sample=sample, now=utcnow(), budget=budget
    )
    return {"outcome": "ok" if report.ok else "failed", **_as_dict(report)}


# -- prune ----------------------------------------------------------------------------------


def prune_before(url: str, cutoff: datetime) -> dict[str, int]:
    """Delete usage aggregates of days before ``cutoff`` and finished runs (with their items)
    that finished before it. Runs still running are kept (they may be resumed)."""
    from analytics.store import usage, usage_pipelines

    engine = db.engine_for(url)
    deleted: dict[str, int] = {}
    with engine.begin() as conn:
        for table in (usage_pipelines, usage):
            result = conn.execute(sa.delete(table).where(table.c.day < cutoff.date()))
            deleted[table.name] = int(result.rowcount or 0)
        old = sa.select(col(Run.id)).where(
            col(Run.state) != "running", col(Run.finished_at).is_not(None),
            col(Run.finished_at) < cutoff,
        )  # fmt: skip
        ids = [int(r[0]) for r in conn.execute(old).all() if r[0] is not None]
        deleted["run_item"] = deleted["run"] = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            result = conn.execute(sa.delete(RunItem).where(col(RunItem.run_id).in_(chunk)))
            deleted["run_item"] += int(result.rowcount or 0)
            result = conn.execute(sa.delete(Run).where(col(Run.id).in_(chunk)))
            deleted["run"] += int(result.rowcount or 0)
    return deleted


async def prune(ctx: Context) -> Summary:
    cutoff = utcnow() - ctx.config.serve.retention
    deleted = await asyncio.to_thread(prune_before, ctx.url, cutoff)
    return {"outcome": "ok", "before": cutoff.isoformat(), "deleted": deleted}
