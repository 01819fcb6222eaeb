"""``warmer serve``: one APScheduler 3 scheduler per replica, every job behind a lease.

Jobs (ids):

- ``ingest``: every ``[serve.ingest] every`` when ``paths`` are set; wakes ``rank`` after.
- ``rank``: ranks the served regions (after each ingest, and on the ingest interval).
- ``warm:<region>``: a region with windows; fires at each window start and every
  ``[serve] poll`` while it is open (:class:`jobs.schedule.WindowTrigger`), with the
  window's end as the deadline.
- ``refresh:<region>`` and ``verify:<region>``: on their crons.
- ``prune``: on its cron.

Global jobs (ingest, rank, prune) run on replicas started without ``--region``; a regional
agent (``--region eu``) schedules only that region's jobs. Every replica that schedules a
job competes for its lease when it fires; the loser skips (``standby``) and, for a warm,
tries again at the next poll, so a dead holder's run is taken over once its lease expires.

All jobs are coroutines on one asyncio loop (AsyncIOScheduler): misfire grace, coalescing
and ``max_instances=1``. SIGTERM/SIGINT cancel running jobs (the executor puts in-flight
items back to pending; the run stays ``running``, so it is resumable), wait at most
``[serve] shutdown_grace`` for them, give the leases back and exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from jobs import tasks
from jobs.metrics import Metrics, start_server
from jobs.schedule import Clock, CronStartTrigger, EveryTrigger, WindowTrigger
from jobs.tasks import Context, Summary
from warmer.config import Config
from warmer.store.leases import Held, Leases
from warmer.store.ledger import Ledger, utcnow
from warmer.warm.prepared import owner
from warmer.windows import WindowSpec

log = logging.getLogger("jobs.service")
JobFn = Callable[[Context], Awaitable[Summary]]


@dataclass(frozen=True)
class JobSpec:
    """A job as scheduled: its id (also its lease name), what it runs and when."""

    id: str
    kind: str
    region: str | None
    trigger: BaseTrigger
    run: JobFn


def job_specs(config: Config, regions: list[str], global_jobs: bool, clock: Clock) -> list[JobSpec]:
    """The jobs a replica serving ``regions`` schedules (pure: no I/O)."""
    s = config.serve
    out: list[JobSpec] = []
    if global_jobs and s.ingest.paths:
        out.append(
            JobSpec("ingest", "ingest", None, EveryTrigger(s.ingest.every, clock), tasks.ingest)
        )
    if global_jobs:
        out.append(JobSpec("rank", "rank", None, EveryTrigger(s.ingest.every, clock), tasks.rank))
    for region in regions:
        reg = config.region(region)
        if reg.windows:
            specs = [WindowSpec.coerce(w) for w in reg.windows]
            out.append(
                JobSpec(
                    f"warm:{region}", "warm", region, WindowTrigger(specs, clock, s.poll),
                    _bind(tasks.warm, region),
                )
            )  # fmt: skip
        else:
            log.warning("region %s has no windows: it is never warmed by the service", region)
        out.append(
            JobSpec(
                f"refresh:{region}", "refresh", region,
                CronStartTrigger(s.refresh.cron, s.refresh.timezone, clock),
                _bind(tasks.refresh, region),
            )
        )  # fmt: skip
        out.append(
            JobSpec(
                f"verify:{region}", "verify", region,
                CronStartTrigger(s.verify.cron, s.verify.timezone, clock),
                _bind(tasks.verify, region),
            )
        )  # fmt: skip
    if global_jobs:
        out.append(
            JobSpec(
                "prune", "prune", None, CronStartTrigger(s.prune.cron, s.prune.timezone, clock),
                tasks.prune,
            )
        )  # fmt: skip
    return out


def _bind(fn: Callable[[Context, str], Awaitable[Summary]], region: str) -> JobFn:
    async def run(ctx: Context) -> Summary:
        return await fn(ctx, region)

    return run


def next_runs(specs: list[JobSpec], now: datetime) -> list[tuple[JobSpec, datetime | None]]:
    return [(j, j.trigger.get_next_fire_time(None, now)) for j in specs]


class Service:
    """One replica: a scheduler, its leases, its metrics server."""

    def __init__(
        self,
        config: Config,
        regions: list[str],
        *,
        global_jobs: bool,
        metrics_port: int | None = None,
    ) -> None:
        self.config = config
        self.regions = regions
        self.owner = owner()
        clock = Clock.make(
            utcnow(), config.serve.time_scale, config.serve.time_origin, config.serve.time_anchor
        )
        self.metrics = Metrics(config.database.url, regions)
        self.ctx = Context(config, Ledger(config.database.url), clock, regions, self.metrics)
        self.leases = Leases(config.database.url)
        self.specs = job_specs(config, regions, global_jobs, clock)
        self.metrics_port = config.serve.metrics_port if metrics_port is None else metrics_port
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.scheduler: AsyncIOScheduler | None = None
        self._stop = asyncio.Event()

    # -- one job execution ------------------------------------------------------------------

    async def run_job(self, spec: JobSpec) -> Summary:
        """Take the job's lease, run it while renewing the lease, record the outcome."""
        if self.ctx.stopping.is_set():
            return {"outcome": "stopping"}
        region = spec.region
        if spec.kind == "warm" and region and tasks.window_of(self.ctx, region, utcnow()) is None:
            return {"outcome": "outside-window"}
        ttl = self.config.serve.lease_ttl
        token = await asyncio.to_thread(self.leases.try_acquire, spec.id, self.owner, ttl)
        if not token:
            log.debug("%s: another replica holds the lease", spec.id)
            return {"outcome": "standby"}
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def lost(why: str) -> None:
            self.metrics.leases_lost.inc()
            loop.call_soon_threadsafe(task.cancel)

        held = Held(self.leases, spec.id, token, ttl, on_lost=lost)
        self.running[spec.id] = task
        self.metrics.job_running.labels(spec.id).set(1)
        began = time.monotonic()
        fields: dict[str, Any] = {"job": spec.id, "replica": self.owner, "t0": time.time()}
        log.info("job %s started", spec.id, extra={"fields": {**fields, "event": "start"}})
        summary: Summary = {"outcome": "error"}
        try:
            summary = await spec.run(self.ctx)
        except asyncio.CancelledError:
            summary = {"outcome": "lease-lost" if held.lost.is_set() else "cancelled"}
            if not held.lost.is_set() and not self.ctx.stopping.is_set():
                raise
        except Exception as exc:  # a job's failure is logged; the service goes on
            summary = {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"}
            log.exception("job %s failed", spec.id, extra={"fields": fields})
        finally:
            ended = time.time()  # before the release: [t0, t1] is inside the lease
            self.running.pop(spec.id, None)
            self.metrics.job_running.labels(spec.id).set(0)
            await asyncio.to_thread(held.release)
            seconds = round(time.monotonic() - began, 3)
            outcome = str(summary.get("outcome"))
            self.metrics.job_runs.labels(spec.id, outcome).inc()
            if outcome in ("ok", "served", "nothing-to-warm"):
                self.metrics.last_success.labels(spec.id).set_to_current_time()
            log.info(
                "job %s finished: %s in %.1fs", spec.id, outcome, seconds,
                extra={
                    "fields": {
                        **fields, "event": "finish", "t1": ended, "seconds": seconds,
                        **summary,
                    }
                },
            )  # fmt: skip
        if spec.kind == "ingest" and summary.get("outcome") == "ok" and self.scheduler:
            job = self.scheduler.get_job("rank")
            if job is not None:
                job.modify(next_run_time=utcnow())
        return summary

    # -- the process ------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.scheduler is not None and self.scheduler.running
        detail: dict[str, Any] = {"replica": self.owner, "running": sorted(self.running)}
        try:
            with self.leases.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            detail["database"] = "ok"
        except sa.exc.SQLAlchemyError as exc:
            ok = False
            detail["database"] = f"unreachable: {type(exc).__name__}"
        return ok, detail

    def request_stop(self, signame: str) -> None:
        if not self.ctx.stopping.is_set():
            log.warning("%s received: stopping", signame, extra={"fields": {"signal": signame}})
        self.ctx.stopping.set()
        self._stop.set()

    async def serve(self, ready: Callable[[int], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        runner = None
        port = 0
        if self.metrics_port:
            runner, port = await start_server(
                self.metrics, self.health, self.config.serve.metrics_host, self.metrics_port
            )
        grace = int(self.config.serve.misfire_grace.total_seconds())
        scheduler = AsyncIOScheduler(
            event_loop=loop,
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
        )
        for spec in self.specs:
            scheduler.add_job(self.run_job, spec.trigger, args=[spec], id=spec.id, name=spec.id)
        self.scheduler = scheduler
        scheduler.start()
        log.info(
            "serving %d jobs for %s; metrics on port %s", len(self.specs),
            ", ".join(self.regions) or "no region", port or "off",
            extra={"fields": {"replica": self.owner, "jobs": [s.id for s in self.specs],
                              "metrics_port": port}},
        )  # fmt: skip
        if ready is not None:
            ready(port)
        try:
            await self._stop.wait()
        finally:
            await self._shutdown(scheduler, runner)

    async def _shutdown(self, scheduler: AsyncIOScheduler, runner: Any) -> None:
        began = time.monotonic()
        scheduler.pause()
        tasks_ = list(self.running.values())
        for task in tasks_:
            task.cancel()
        if tasks_:
            timeout = self.config.serve.shutdown_grace.total_seconds()
            _, pending = await asyncio.wait(tasks_, timeout=timeout)
            if pending:
                log.error("%d job(s) did not stop within %.0fs", len(pending), timeout)
        scheduler.shutdown(wait=False)
        if runner is not None:
            await runner.cleanup()
        log.warning(
            "stopped in %.1fs; %d job(s) checkpointed", time.monotonic() - began, len(tasks_),
            extra={"fields": {"event": "stopped", "jobs": len(tasks_)}},
        )  # fmt: skip
