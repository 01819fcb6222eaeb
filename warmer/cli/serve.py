"""``warmer serve`` (the scheduler service) and ``warmer jobs`` (what it would run, when)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import click

from warmer.cli.common import (
    CONTEXT_SETTINGS,
    BadInput,
    WorkFailed,
    configure_logging,
    emit_json,
    json_option,
)
from warmer.cli.config import load_config
from warmer.config import Config, ConfigError
from warmer.store.ledger import utcnow

_regions = click.option(
    "--region",
    "-r",
    "regions",
    multiple=True,
    help="Serve only this region's jobs (repeatable): a regional agent. Default: all regions.",
)
_global = click.option(
    "--global-jobs/--no-global-jobs",
    default=None,
    help="Run ingest, rank and prune here (default: only without --region).",
)


def _scope(
    cfg: Config, regions: tuple[str, ...], global_jobs: bool | None
) -> tuple[list[str], bool]:
    try:
        for r in regions:
            cfg.region(r)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    chosen = list(dict.fromkeys(regions)) or sorted(cfg.regions)
    return chosen, (not regions) if global_jobs is None else global_jobs


def _check_credentials(cfg: Config, regions: list[str]) -> None:
    """Read every credential source the served regions' chains use, once, before serving: a
    source that cannot be used is exit 2 now (one line naming the registry and the source),
    not a failure of every job for as long as the service runs."""
    from warmer.warm.resolve import credentials

    mirrors = {m for r in regions for top in cfg.regions[r].mirrors for m in cfg.chain(top)}
    for name in sorted(mirrors):
        credentials(cfg.mirrors[name].credentials, cfg.mirrors[name].url, f"mirrors.{name}")
    for name in sorted({cfg.upstream_of(m) for m in mirrors}):
        up = cfg.upstreams[name]
        credentials(up.credentials, up.url, f"upstreams.{name}")


@click.command("serve", context_settings=CONTEXT_SETTINGS)
@_regions
@_global
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of /metrics and /healthz (default: [serve] metrics_port; 0 = off).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log line format (overrides the global option).",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    regions: tuple[str, ...],
    global_jobs: bool | None,
    metrics_port: int | None,
    log_format: str | None,
) -> None:
    """Run the scheduler service: ingest, rank, warm in windows, refresh, verify, prune.

    Several replicas may share one PostgreSQL database: each job runs on one replica at a
    time (a lease in the database), and a killed replica's warm run is resumed by another
    once its lease expires. SIGTERM stops within seconds, in-flight work checkpointed.

    \b
      warmer serve                       every region and the global jobs
      warmer serve --region eu           a regional agent: only eu's jobs
      warmer --log-format json serve --metrics-port 9464
    """
    cfg = load_config(ctx)
    chosen, run_global = _scope(cfg, regions, global_jobs)
    _check_credentials(cfg, chosen)
    root = ctx.find_root().params
    configure_logging(
        log_format or root.get("log_format") or "text", max(1, root.get("verbose", 0))
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    from jobs.metrics import MetricsServerError
    from jobs.service import Service

    service = Service(cfg, chosen, global_jobs=run_global, metrics_port=metrics_port)
    try:
        asyncio.run(service.serve())
    except MetricsServerError as exc:
        raise (BadInput if exc.bad_config else WorkFailed)(str(exc)) from None


@click.command("jobs", context_settings=CONTEXT_SETTINGS)
@_regions
@_global
@json_option
@click.pass_context
def jobs_command(
    ctx: click.Context, regions: tuple[str, ...], global_jobs: bool | None, as_json: bool
) -> None:
    """List the service's jobs, their next run times and who holds their lease now."""
    cfg = load_config(ctx)
    chosen, run_global = _scope(cfg, regions, global_jobs)
    from jobs.schedule import Clock
    from jobs.service import job_specs, next_runs
    from warmer.store.leases import Leases

    now = utcnow()
    clock = Clock.make(now, cfg.serve.time_scale, cfg.serve.time_origin, cfg.serve.time_anchor)
    specs = job_specs(cfg, chosen, run_global, clock)
    holders = {h.name: h for h in Leases(cfg.database.url).holders()}
    rows: list[dict[str, Any]] = []
    for spec, at in next_runs(specs, now):
        h = holders.get(spec.id)
        rows.append(
            {
                "id": spec.id,
                "kind": spec.kind,
                "region": spec.region,
                "trigger": str(spec.trigger),
                "next_run": at.isoformat() if at else None,
                "lease": None
                if h is None or h.expired
                else {"owner": h.owner, "expires_at": h.expires_at.isoformat()},
            }
        )
    if as_json:
        emit_json({"jobs": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="jobs")
    for c in ("job", "next run (UTC)", "schedule", "running on"):
        table.add_column(c)
    for row in rows:
        nxt = row["next_run"][:19].replace("T", " ") if row["next_run"] else "never"
        lease = row["lease"]["owner"] if row["lease"] else ""
        table.add_row(row["id"], nxt, row["trigger"], lease)
    Console().print(table)


commands = [serve_command, jobs_command]
