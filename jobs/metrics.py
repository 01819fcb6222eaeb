"""The service's Prometheus metrics and its small HTTP server (``/metrics``, ``/healthz``).

Counters and gauges live in a registry of their own (not the process-global one), so tests
and several services in one process do not collide. Items by state are read from the
ledger at scrape time (a collector), so every replica reports the same truth whichever of
them ran the warm.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlmodel import col

from warmer.store import db
from warmer.store.ledger import Run, RunItem

log = logging.getLogger("jobs.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LedgerItems(Collector):
    """``warmer_run_items{region, state}``: the items of each region's latest run by state."""

    def __init__(self, url: str, regions: Sequence[str]) -> None:
        self.url = url
        self.regions = list(regions)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "warmer_run_items",
            "Items of the region's latest warm run, by state (from the ledger).",
            labels=["region", "state"],
        )
        try:
            engine = db.engine_for(self.url)
            with engine.connect() as conn:
                latest = (
                    sa.select(col(Run.region), sa.func.max(col(Run.id)).label("id"))
                    .where(col(Run.region).in_(self.regions))
                    .group_by(col(Run.region))
                    .subquery()
                )
                rows = conn.execute(
                    sa.select(latest.c.region, col(RunItem.state), sa.func.count())
                    .join(latest, latest.c.id == col(RunItem.run_id))
                    .group_by(latest.c.region, col(RunItem.state))
                ).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: cannot read run items: %s", exc)
            rows = []
        seen = {(str(r), str(s)): int(n) for r, s, n in rows}
        for region in self.regions:
            for state in ("pending", "running", "done", "failed", "skipped"):
                family.add_metric([region, state], seen.get((region, state), 0))
        yield family


class LedgerRequests(Collector):
    """``warmer_run_requests{region, tier, kind, method}``: the requests the region's latest
    finished warm run sent, per tier (``upstream``, ``0``, ``1`` ...), kind (``manifest``,
    ``blob``, ``ping`` ...) and method, from its summary in the ledger (every replica
    reports the same)."""

    def __init__(self, url: str, regions: Sequence[str]) -> None:
        self.url = url
        self.regions = list(regions)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "warmer_run_requests",
            "Requests sent by the region's latest finished warm run, by tier, kind and method.",
            labels=["region", "tier", "kind", "method"],
        )
        try:
            engine = db.engine_for(self.url)
            with engine.connect() as conn:
                latest = (
                    sa.select(sa.func.max(col(Run.id)))
                    .where(col(Run.region).in_(self.regions), col(Run.finished_at).is_not(None))
                    .group_by(col(Run.region))
                    .scalar_subquery()
                )
                rows = conn.execute(
                    sa.select(col(Run.region), col(Run.summary)).where(col(Run.id).in_(latest))
                ).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: cannot read run summaries: %s", exc)
            rows = []
        for region, summary in rows:
            try:
                tiers = json.loads(summary or "{}").get("requests_by_tier") or {}
                for tier, kinds in tiers.items():
                    for kind, methods in kinds.items():
                        for method, n in methods.items():
                            family.add_metric([str(region), tier, kind, method], float(n))
            except (ValueError, AttributeError, TypeError):
                continue  # a summary from before these counts, or not JSON
        yield family


class Metrics:
    """Everything the service exports."""

    def __init__(self, url: str, regions: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_warmed = Counter(
            "warmer_bytes_warmed",
            "Bytes read through mirrors by warm runs (verified), per mirror and tier.",
            ["mirror", "tier"],
            registry=r,
        )
        self.ratelimit_remaining = Gauge(
            "warmer_upstream_ratelimit_remaining",
            "Manifest requests the upstream says are left in its rate-limit window.",
            ["upstream"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "warmer_upstream_requests_spent",
            "Counted (manifest GET) upstream requests spent by warm runs.",
            ["upstream"],
            registry=r,
        )
        self.last_success = Gauge(
            "warmer_job_last_success_timestamp_seconds",
            "When each job last finished successfully (Unix time).",
            ["job"],
            registry=r,
        )
        self.job_runs = Counter(
            "warmer_job_runs", "Job executions by outcome.", ["job", "outcome"], registry=r
        )
        self.job_running = Gauge(
            "warmer_job_running", "1 while this replica runs the job.", ["job"], registry=r
        )
        self.window_utilisation = Gauge(
            "warmer_window_utilisation",
            "Share (0-1) of the region's last window spent warming.",
            ["region"],
            registry=r,
        )
        self.window_seconds = Counter(
            "warmer_window_warm_seconds",
            "Seconds spent warming inside windows.",
            ["region"],
            registry=r,
        )
        self.demand = Gauge(
            "warmer_demand_pulls",
            "Predicted pulls of the region's wanted images (kind=predicted) and the part of "
            "them whose images are warm after the last run (kind=served).",
            ["region", "kind"],
            registry=r,
        )
        self.leases_lost = Counter(
            "warmer_leases_lost", "Leases taken over while this replica held them.", registry=r
        )
        self.ingest_coverage = Gauge(
            "warmer_ingest_coverage",
            "Share (0-1) of the image-looking log lines of the last ingest that gave events, "
            "per log format: events / (events + unused lines).",
            ["format"],
            registry=r,
        )
        self.ingest_unused_lines = Gauge(
            "warmer_ingest_unused_lines",
            "Lines of the last ingest that look like an image reference but gave no event.",
            ["format"],
            registry=r,
        )
        r.register(LedgerItems(url, regions))
        r.register(LedgerRequests(url, regions))

    def observe_ingest(self, summary: dict[str, Any]) -> None:
        """Set the ingest coverage gauges from an ingest summary (``IngestReport.as_dict``)."""
        formats = summary.get("formats") or {}
        for fmt, row in formats.items():
            self.ingest_unused_lines.labels(fmt).set(row.get("unused_lines", 0))
            if row.get("coverage") is not None:
                self.ingest_coverage.labels(fmt).set(row["coverage"])

    def scrape(self) -> bytes:
        return generate_latest(self.registry)


Health = Callable[[], tuple[bool, dict[str, Any]]]


class MetricsServerError(Exception):
    """The metrics server cannot listen; ``bad_config`` when the host is the problem (not
    an address of this machine, or no address at all) rather than the port being taken."""

    def __init__(self, message: str, bad_config: bool) -> None:
        super().__init__(message)
        self.bad_config = bad_config


def _bind_error(host: str, port: int, exc: OSError) -> MetricsServerError:
    where = f"metrics server {host}:{port} ([serve] metrics_host, metrics_port)"
    if isinstance(exc, socket.gaierror):
        return MetricsServerError(f"{where}: host {host!r} does not resolve", True)
    if exc.errno == errno.EADDRNOTAVAIL:
        return MetricsServerError(f"{where}: {host} is not an address of this machine", True)
    if exc.errno == errno.EADDRINUSE:
        return MetricsServerError(f"{where}: the port is in use by another process", False)
    reason = exc.strerror or type(exc).__name__
    return MetricsServerError(f"{where}: cannot listen: {reason}", False)


async def start_server(
    metrics: Metrics, health: Health, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve ``/metrics`` and ``/healthz`` on the running loop; returns the bound port."""

    async def scrape(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.scrape)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        ok, detail = await asyncio.to_thread(health)
        return web.json_response({"ok": ok, **detail}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:  # the port taken, a host that is not ours: one line, no traceback
        await runner.cleanup()
        raise _bind_error(host, port, exc) from None
    server = site._server
    bound = port
    sockets = getattr(server, "sockets", None) if server is not None else None
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    return runner, bound
