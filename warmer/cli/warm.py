"""``warmer plan``, ``warmer run`` and ``warmer status``: the warm job from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from warmer.cli.common import (
    CONTEXT_SETTINGS,
    BadInput,
    WorkFailed,
    emit_json,
    json_option,
    parse_time,
)
from warmer.cli.config import load_config
from warmer.config import Config, ConfigError
from warmer.store.ledger import Ledger, RunItem, as_utc, utcnow
from warmer.units import UnitError, format_duration, format_size, parse_duration, parse_size
from warmer.warm.execute import RunStats
from warmer.warm.reserve import RateReserve
from warmer.warm.resolve import Want, wants_from_args, wants_from_ranking
from warmer.warm.run import (
    Prepared,
    WarmError,
    current_window_deadline,
    execute,
    prepare,
    rate_reserve,
    skipped_rows,
    warm,
)


def _parse_opts(budget: str | None, window: str | None) -> tuple[int | None, timedelta | None]:
    try:
        b = parse_size(budget) if budget else None
        w = parse_duration(window) if window else None
    except UnitError as exc:
        raise BadInput(str(exc)) from None
    return b, w


def _wants(cfg: Config, region: str, images: tuple[str, ...], top: int | None) -> list[Want]:
    try:
        cfg.region(region)
        if images:
            return wants_from_args(images)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    wants = wants_from_ranking(cfg, region, top)
    if not wants:
        raise BadInput(
            f"nothing to warm for region {region!r}: name images on the command line "
            "or run `warmer ingest` and `warmer rank` first"
        )
    return wants


def plan_options(f: Any) -> Any:
    f = click.argument("images", nargs=-1)(f)
    f = click.option("--top", type=int, help="Take the N best-ranked images.")(f)
    f = click.option("--window", help="Window length, e.g. 2h: caps time x link rate.")(f)
    f = click.option("--budget", help="Byte budget, e.g. 20GiB (default: the region's).")(f)
    f = click.option("--region", "-r", required=True, help="Region to warm (from the config).")(f)
    return f


def _plan_json(prepared: Prepared) -> dict[str, Any]:
    p = prepared.plan
    return {
        "region": prepared.region,
        "images": list(p.images),
        "items": [
            {
                "order": i.order,
                "mirror": i.mirror,
                "instance": i.instance,
                "tier": i.tier,
                "kind": i.kind,
                "repository": i.repository,
                "reference": i.reference,
                "digest": i.digest,
                "size": i.size,
                "parent_cost": i.parent_cost,
                "depends_on": list(i.depends_on),
                "image": i.image,
            }
            for i in p.items
        ],
        "skipped": skipped_rows(p.skipped, prepared.unresolved),
        "bytes_by_mirror": dict(p.bytes_by_mirror),
        "parent_bytes_by_mirror": dict(p.parent_bytes_by_mirror),
        "estimated_seconds": p.estimated_seconds,
        "budget": prepared.budget,
    }


def _print_plan(prepared: Prepared, console: Console) -> None:
    p = prepared.plan
    per_image: dict[str, Counter[str]] = {}
    for i in p.items:
        c = per_image.setdefault(i.image, Counter())
        c["items"] += 1
        c["bytes"] += i.size
        c["wan"] += i.parent_cost if i.tier == 0 else 0
        c[i.mirror] += 1
    table = Table(title=f"plan for region {prepared.region}", show_lines=False)
    for col in ("#", "image", "items", "bytes read", "top-tier parent bytes"):
        table.add_column(col, justify="right" if col != "image" else "left")
    for n, image in enumerate(p.images, 1):
        c = per_image.get(image, Counter())
        table.add_row(
            str(n), image, str(c["items"]), format_size(c["bytes"]), format_size(c["wan"])
        )
    console.print(table)
    for mirror, b in sorted(p.bytes_by_mirror.items()):
        parent = p.parent_bytes_by_mirror.get(mirror, 0)
        console.print(
            f"  {mirror}: read {format_size(b)}, pulls {format_size(parent)} over its parent link"
        )
    eta = format_duration(timedelta(seconds=p.estimated_seconds))
    console.print(
        f"  {len(p.items)} items; estimated {eta} at the link caps; budget "
        f"{format_size(prepared.budget) if prepared.budget else 'unlimited'}"
    )
    for s in list(p.skipped) + prepared.unresolved:
        console.print(f"  left out {s.image}: {s.reason}")


@click.command("plan", context_settings=CONTEXT_SETTINGS)
@plan_options
@json_option
@click.pass_context
def plan_command(
    ctx: click.Context,
    region: str,
    budget: str | None,
    window: str | None,
    top: int | None,
    images: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show what a warm run would fetch, mirror by mirror, without fetching it.

    Only manifests are fetched (through the region's top-tier mirror) to size the plan.
    Images come from the stored ranking (`warmer rank`) unless named:

    \b
      warmer plan --region eu --budget 20GiB --window 2h
      warmer plan --region eu python:3.12 node:20 --json
    """
    cfg = load_config(ctx)
    b, w = _parse_opts(budget, window)
    wants = _wants(cfg, region, images, top)
    ledger = Ledger(cfg.database.url)

    async def go() -> Prepared:
        # Planning never waits at the rate-limit reserve: what would not fit is listed.
        reserve = rate_reserve(cfg, region, wants[0] if wants else None)
        try:
            return await prepare(
                cfg, ledger, region, wants, now=utcnow(), budget=b, window=w,
                reserve=reserve, deadline=time.monotonic(),
            )  # fmt: skip
        finally:
            await _close(reserve)

    prepared = asyncio.run(go())
    if as_json:
        emit_json(_plan_json(prepared))
    else:
        _print_plan(prepared, Console())


class _Progress:
    """A rich progress bar on a terminal; nothing (logs only) otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None

    def start(self, total_bytes: int) -> _Progress:
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]warming"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bytes_task = self.progress.add_task("bytes", total=total_bytes)
        return self

    def add(self, total_bytes: int) -> None:
        """A further pass, or a part of the plan added to the run, adds its bytes."""
        if self.progress is not None:
            task = self.progress.tasks[0]
            self.progress.update(self.bytes_task, total=(task.total or 0) + total_bytes)

    def __enter__(self) -> _Progress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def hook(self, what: str, item: RunItem, n: int) -> None:
        if self.progress is None:
            return
        if what == "bytes" or (what == "done" and item.kind == "manifest"):
            self.progress.advance(self.bytes_task, n)
        elif what in ("failed", "skipped"):
            self.progress.advance(self.bytes_task, item.size)


def _summary(stats: RunStats, run_id: int, console: Console) -> None:
    console.print(
        f"run {run_id}: {stats.done} done, {stats.failed} failed, "
        f"{stats.skipped} skipped, {stats.pending} pending "
        f"in {stats.seconds:.1f}s"
    )
    for tier, b in sorted(stats.bytes_by_tier.items()):
        console.print(f"  tier {tier}: {format_size(b)} read through the mirrors")
    for m, b in sorted(stats.bytes_by_mirror.items()):
        console.print(f"  {m}: {format_size(b)} read")
    for m, b in sorted(stats.parent_bytes_by_mirror.items()):
        console.print(f"  {m}: about {format_size(b)} over its parent link")
    console.print(f"  upstream manifest requests spent: {stats.upstream_manifest_gets}")
    if stats.incidents:
        console.print(f"  [red]{stats.incidents} incident(s): see `warmer status`[/red]")
    if stats.restored:
        console.print(
            f"  {stats.restored} blob(s) a mirror had not kept were asked for again (see the log)"
        )
    if stats.deadline_hit:
        console.print("  the deadline cut the run: `warmer run --resume` continues it")


@click.command("run", context_settings=CONTEXT_SETTINGS)
@plan_options
@click.option("--resume", is_flag=True, help="Continue the region's unfinished run.")
@click.option("--dry-run", is_flag=True, help="Plan and record nothing; print the plan.")
@click.option(
    "--in-window",
    is_flag=True,
    help="Use the region's maintenance window in progress as the deadline (fail outside one).",
)
@click.option("--deadline", help="Absolute deadline (ISO 8601, UTC if no offset).")
@json_option
@click.pass_context
def run_command(
    ctx: click.Context,
    region: str,
    budget: str | None,
    window: str | None,
    top: int | None,
    images: tuple[str, ...],
    resume: bool,
    dry_run: bool,
    in_window: bool,
    deadline: str | None,
    as_json: bool,
) -> None:
    """Warm the region's mirrors: plan, then fetch through each tier, top down.

    Every blob is streamed through the mirror and hashed against its digest; nothing is
    written to disk. Progress is recorded in the database: after a crash or a deadline,
    `warmer run --region R --resume` continues without fetching again what is done.
    Exit 1 when items failed or an incident (content not matching its digest) was found.
    """
    cfg = load_config(ctx)
    b, w = _parse_opts(budget, window)
    ledger = Ledger(cfg.database.url)
    now = utcnow()
    try:
        the_deadline = _deadline(cfg, region, now, w, in_window, deadline)
    except (ConfigError, WarmError) as exc:
        raise BadInput(str(exc)) from None
    if resume:
        run = ledger.unfinished_run(region)
        if run is None or run.id is None:
            raise BadInput(f"no unfinished run for region {region!r} to resume")
        run_id: int | None = run.id
        if the_deadline is None and run.deadline is not None and not window:
            old = as_utc(run.deadline)
            the_deadline = old if old and old > now else None
        probe = _first_image(ledger, run.id)
        wants: list[Want] = [Want(probe)] if probe is not None else []
    else:
        run_id = None
        wants = _wants(cfg, region, images, top)
    bar = _Progress(sys.stderr.isatty() and not as_json)

    if dry_run and not resume:
        prepared = asyncio.run(
            prepare(cfg, ledger, region, wants, now=now, budget=b, window=w, renew_within=None)
        )
        if as_json:
            emit_json(_plan_json(prepared))
        else:
            _print_plan(prepared, Console())
        return

    def pending_bytes(rid: int) -> int:
        return sum(i.size for i in ledger.items(rid) if i.state == "pending")

    async def go() -> list[tuple[int, RunStats]]:
        if run_id is not None:  # --resume: carry the recorded run on
            reserve = rate_reserve(cfg, region, wants[0] if wants else None)
            try:
                with bar.start(pending_bytes(run_id)):
                    stats = await execute(
                        cfg, ledger, run_id, deadline=the_deadline, reserve=reserve,
                        on_progress=bar.hook,
                    )  # fmt: skip
            finally:
                await _close(reserve)
            return [(run_id, stats)]
        with bar.start(0):
            outcome = await warm(
                cfg, ledger, region, wants, now=now, budget=b, window=w,
                deadline=the_deadline, on_progress=bar.hook,
                on_run=lambda _rid, part: bar.add(sum(i.size for i in part.plan.items)),
            )  # fmt: skip
        unresolved.extend(outcome.unresolved)
        return outcome.runs

    unresolved: list[Any] = []
    runs = asyncio.run(go())
    failed = incidents = 0
    for rid, stats in runs:
        if as_json:
            emit_json({"run": rid, "region": region, **stats.as_dict()})
        else:
            _summary(stats, rid, Console())
        failed += stats.failed
        incidents += stats.incidents
    # Images held back by the rate-limit reserve are expected, like items a deadline cut.
    if failed or incidents or unresolved:
        last = runs[-1][0]
        raise WorkFailed(
            f"run {last}: {failed} item(s) failed, {incidents} incident(s)"
            + (f", {len(unresolved)} image(s) could not be resolved" if unresolved else "")
        )


async def _close(reserve: RateReserve | None) -> None:
    if reserve is not None and reserve.client is not None:
        await reserve.client.aclose()


def _first_image(ledger: Ledger, run_id: int) -> Any:
    from warmer.oci.reference import try_parse

    for item in ledger.items(run_id):
        ref = try_parse(item.image)
        if ref is not None:
            return ref
    return None


def _deadline(
    cfg: Config,
    region: str,
    now: datetime,
    window: timedelta | None,
    in_window: bool,
    deadline: str | None,
) -> datetime | None:
    cfg.region(region)
    if deadline:
        return parse_time(deadline, "--deadline")
    if in_window:
        return current_window_deadline(cfg, region, now)
    if window:
        return now + window
    return None


@click.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--region", "-r", help="Only this region's runs.")
@click.option("--limit", default=10, show_default=True, help="How many recent runs.")
@json_option
@click.pass_context
def status_command(ctx: click.Context, region: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, what each mirror holds, and incidents."""
    cfg = load_config(ctx)
    ledger = Ledger(cfg.database.url)
    runs = ledger.recent_runs(limit, region)
    holdings = ledger.holdings_summary()
    incidents = ledger.incidents()[:20]
    if as_json:
        emit_json(
            {
                "runs": [
                    {
                        "id": r.id,
                        "region": r.region,
                        "state": r.state,
                        "started_at": as_utc(r.started_at),
                        "finished_at": as_utc(r.finished_at),
                        "summary": json.loads(r.summary or "{}"),
                    }
                    for r in runs
                ],
                "holdings": holdings,
                "incidents": [
                    {
                        "at": as_utc(i.at),
                        "mirror": i.mirror,
                        "repository": i.repository,
                        "digest": i.digest,
                        "kind": i.kind,
                        "detail": i.detail,
                    }
                    for i in incidents
                ],
            }
        )
        return
    console = Console()
    table = Table(title="recent runs")
    for col in ("run", "region", "state", "started", "done", "failed", "pending", "bytes"):
        table.add_column(col)
    for r in runs:
        s = json.loads(r.summary or "{}")
        started = as_utc(r.started_at)
        table.add_row(
            str(r.id),
            r.region,
            r.state,
            f"{started:%F %T}" if started else "",
            str(s.get("done", "")),
            str(s.get("failed", "")),
            str(s.get("pending", "")),
            format_size(sum(s.get("bytes_by_mirror", {}).values())) if s else "",
        )
    console.print(table)
    table = Table(title="what each mirror holds (per the ledger)")
    for col in ("mirror", "state", "items", "bytes"):
        table.add_column(col)
    for h in holdings:
        table.add_row(h["mirror"], h["state"], str(h["items"]), format_size(h["bytes"]))
    console.print(table)
    for i in incidents:
        console.print(
            f"[red]incident[/red] {as_utc(i.at):%F %T} {i.mirror} "
            f"{i.repository}@{i.digest}: {i.kind}: {i.detail}"
        )


commands = [plan_command, run_command, status_command]
