"""``warmer plan``, ``warmer run`` and ``warmer status``: the warm job from the command line.

A thin shell over :mod:`warmer.warm.run`: ``warmer plan`` and ``warmer run --dry-run`` show
``plan_region``'s plan, ``warmer run`` (``--resume`` too) is one call of ``warm``, the entry
point refresh and the service use as well. What is here is parsing options, the deadline,
the progress bar and printing.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
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
from warmer.warm.artifacts import per_image as artifacts_per_image
from warmer.warm.execute import RunStats
from warmer.warm.plan import ALREADY_WARM
from warmer.warm.prepared import Prepared, skipped_rows
from warmer.warm.resolve import Want, wants_from_args, wants_from_ranking
from warmer.warm.run import (
    NothingToResume,
    RegionBusy,
    Resume,
    WarmError,
    WarmOutcome,
    current_window_deadline,
    plan_region,
    warm,
)
from warmer.warm.stats import nest_requests


def _parse_opts(budget: str | None, window: str | None) -> tuple[int | None, timedelta | None]:
    """``--budget`` and ``--window`` as bytes and a length (exit 2 naming a bad unit)."""
    try:
        budget_bytes = parse_size(budget) if budget else None
        window_length = parse_duration(window) if window else None
    except UnitError as exc:
        raise BadInput(str(exc)) from None
    return budget_bytes, window_length


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


def plan_options(command: Any) -> Any:
    """The options ``warmer plan`` and ``warmer run`` share (they plan the same way)."""
    options = [
        click.argument("images", nargs=-1),
        click.option(
            "--top", type=click.IntRange(1, 100_000), help="Take the N best-ranked images."
        ),
        click.option("--window", help="Window length, e.g. 2h: caps time x link rate."),
        click.option("--budget", help="Byte budget, e.g. 20GiB (default: the region's)."),
        click.option("--region", "-r", required=True, help="Region to warm (from the config)."),
    ]
    for option in options:
        command = option(command)
    return command


def _plan_json(prepared: Prepared) -> dict[str, Any]:
    plan = prepared.plan
    return {
        "region": prepared.region,
        "images": list(plan.images),
        "items": [
            {
                "order": item.order,
                "mirror": item.mirror,
                "instance": item.instance,
                "tier": item.tier,
                "kind": item.kind,
                "repository": item.repository,
                "reference": item.reference,
                "digest": item.digest,
                "size": item.size,
                "parent_cost": item.parent_cost,
                "depends_on": list(item.depends_on),
                "image": item.image,
                "artifact": item.artifact,
            }
            for item in plan.items
        ],
        "artifacts_per_image": artifacts_per_image(plan),
        "skipped": skipped_rows(plan.skipped, prepared.unresolved),
        "bytes_by_mirror": dict(plan.bytes_by_mirror),
        "parent_bytes_by_mirror": dict(plan.parent_bytes_by_mirror),
        "estimated_seconds": plan.estimated_seconds,
        "budget": prepared.budget,
    }


def _print_plan(prepared: Prepared, console: Console) -> None:
    plan = prepared.plan
    per_image: dict[str, Counter[str]] = {}
    for item in plan.items:
        counts = per_image.setdefault(item.image, Counter())
        counts["items"] += 1
        counts["bytes"] += item.size
        counts["wan"] += item.parent_cost if item.tier == 0 else 0
    artifacts = artifacts_per_image(plan)
    table = Table(title=f"plan for region {prepared.region}", show_lines=False)
    columns = ("#", "image", "items", "bytes read", "top-tier parent bytes", "artifacts")
    for column in columns:
        table.add_column(column, justify="right" if column != "image" else "left")
    for n, image in enumerate(plan.images, 1):
        counts = per_image.get(image, Counter())
        attached = artifacts.get(image)
        table.add_row(
            str(n),
            image,
            str(counts["items"]),
            format_size(counts["bytes"]),
            format_size(counts["wan"]),
            f"{attached['count']} ({format_size(attached['bytes'])})" if attached else "-",
        )
    console.print(table)
    for mirror, read in sorted(plan.bytes_by_mirror.items()):
        parent = plan.parent_bytes_by_mirror.get(mirror, 0)
        console.print(
            f"  {mirror}: read {format_size(read)}, "
            f"pulls {format_size(parent)} over its parent link"
        )
    eta = format_duration(timedelta(seconds=plan.estimated_seconds))
    console.print(
        f"  {len(plan.items)} items; estimated {eta} at the link caps; budget "
        f"{format_size(prepared.budget) if prepared.budget is not None else 'unlimited'}"
    )
    for left_out in [*plan.skipped, *prepared.unresolved]:
        console.print(f"  left out {left_out.image}: {left_out.reason}")


def _show_plan(prepared: Prepared, as_json: bool) -> None:
    if as_json:
        emit_json(_plan_json(prepared))
    else:
        _print_plan(prepared, Console())


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
    budget_bytes, window_length = _parse_opts(budget, window)
    wants = _wants(cfg, region, images, top)
    ledger = Ledger(cfg.database.url)
    prepared = asyncio.run(
        plan_region(
            cfg, ledger, region, wants, now=utcnow(), budget=budget_bytes, window=window_length
        )
    )
    _show_plan(prepared, as_json)


class _Progress:
    """A rich progress bar on a terminal; nothing (logs only) otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None

    def start(self) -> _Progress:
        """An empty bar: each run, or part of a run's plan, adds its bytes as it is recorded."""
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
            self.bytes_task = self.progress.add_task("bytes", total=0)
        return self

    def add(self, total_bytes: int) -> None:
        """A run (a further pass, a resumed run) or a part of its plan adds its bytes."""
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


ARTIFACT_TAG = re.compile(r"^sha256-[0-9a-f]{64}(\.sig|\.att|\.sbom)?$")


def _artifact_share(ledger: Ledger, run_id: int, outcome: WarmOutcome) -> dict[str, int]:
    """A run's artifact items (signatures, SBOMs... as planned, or by their cosign or
    fallback tag for a resumed run): items, done, bytes read, requests to the mirrors
    (one per item done) and manifest requests at the top tier (upstream GETs when missing)."""
    marked = {(i.mirror, i.digest) for p in outcome.passes for i in p.plan.items if i.artifact}
    items = [
        i for i in ledger.items(run_id)
        if (i.mirror, i.digest) in marked or ARTIFACT_TAG.match(i.reference)
    ]  # fmt: skip
    done = [i for i in items if i.state == "done"]
    return {
        "items": len(items),
        "done": len(done),
        "bytes": sum(i.bytes for i in done),
        "requests": len(done),
        "top_tier_manifest_requests": sum(1 for i in done if i.kind == "manifest" and not i.tier),
    }


def _summary(stats: RunStats, run_id: int, console: Console) -> None:
    console.print(
        f"run {run_id}: {stats.done} done, {stats.failed} failed, "
        f"{stats.skipped} skipped, {stats.pending} pending "
        f"in {stats.seconds:.1f}s"
    )
    for tier, read in sorted(stats.bytes_by_tier.items()):
        console.print(f"  tier {tier}: {format_size(read)} read through the mirrors")
    for mirror, read in sorted(stats.bytes_by_mirror.items()):
        console.print(f"  {mirror}: {format_size(read)} read")
    for mirror, pulled in sorted(stats.parent_bytes_by_mirror.items()):
        console.print(f"  {mirror}: about {format_size(pulled)} over its parent link")
    console.print(
        f"  manifest requests made to resolve: {stats.manifest_requests} (the rate reserve "
        f"admitted up to {stats.upstream_requests_reserved} in this warm)"
    )
    for level, kinds in nest_requests(stats.requests_by_tier).items():
        where = level if level == "upstream" else f"tier {level}"
        total = sum(n for methods in kinds.values() for n in methods.values())
        parts = ", ".join(
            f"{kind} {method} {n}" for kind, by in kinds.items() for method, n in by.items()
        )
        console.print(f"  requests to {where}: {total} ({parts})")
    if stats.manifests_from_resolve:
        console.print(
            f"  {stats.manifests_from_resolve} manifest(s) answered while resolving, "
            "not asked for again"
        )
    if stats.incidents:
        console.print(f"  [red]{stats.incidents} incident(s): see `warmer status`[/red]")
    if stats.stored_reads or stats.stored_fallbacks:
        console.print(
            f"  {stats.stored_reads} large blob(s) read from the mirrors' storage "
            f"({stats.stored_asks} ask(s)); {stats.stored_fallbacks} read as relayed instead"
        )
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
    "--wait",
    is_flag=True,
    help="If another process is warming the region, wait for it (default: exit 1 naming it).",
)
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
    wait: bool,
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
    budget_bytes, window_length = _parse_opts(budget, window)
    if window_length is not None and window_length <= timedelta(0) and not dry_run:
        raise WorkFailed(f"--window {window}: a window of no length has no time to warm anything")
    if dry_run and resume:
        # A resumed run keeps the plan it was started with: there is nothing new to show.
        raise BadInput("--dry-run shows a new plan; it cannot be combined with --resume")
    ledger = Ledger(cfg.database.url)
    now = utcnow()
    try:
        deadline_at = _deadline(cfg, region, now, window_length, in_window, deadline)
    except (ConfigError, WarmError) as exc:
        raise BadInput(str(exc)) from None
    # A resumed run continues its recorded plan: the images and --top are not asked for.
    wants = [] if resume else _wants(cfg, region, images, top)
    if dry_run:
        _show_plan(
            asyncio.run(
                plan_region(
                    cfg, ledger, region, wants, now=now, budget=budget_bytes, window=window_length
                )
            ),
            as_json,
        )
        return
    bar = _Progress(sys.stderr.isatty() and not as_json)

    def grow_bar(run_id: int, part: Prepared | None) -> None:
        if part is None:  # a resumed run: what is left of it is in the ledger
            left = [i for i in ledger.items(run_id) if i.state in ("pending", "running")]
            bar.add(sum(i.size for i in left))
        else:
            bar.add(sum(i.size for i in part.plan.items))

    async def go() -> WarmOutcome:
        with bar.start():
            return await warm(
                cfg, ledger, region, wants, now=now,
                resume=Resume.ONLY if resume else Resume.NEVER,
                budget=budget_bytes, window=window_length, deadline=deadline_at,
                on_progress=bar.hook, on_run=grow_bar, wait=wait,
            )  # fmt: skip

    try:
        outcome = asyncio.run(go())
    except NothingToResume as exc:
        raise BadInput(str(exc)) from None
    except RegionBusy as exc:
        raise WorkFailed(f"{exc} (`warmer run --wait` waits for it)") from None
    failed = incidents = 0
    for run_id, stats in outcome.runs:
        share = _artifact_share(ledger, run_id, outcome)
        if as_json:
            emit_json({"run": run_id, "region": region, **stats.as_dict(), "artifacts": share})
        else:
            _summary(stats, run_id, Console())
            if share["items"]:
                Console().print(
                    f"  artifacts: {share['done']} of {share['items']} item(s), "
                    f"{format_size(share['bytes'])} ({share['top_tier_manifest_requests']} "
                    "manifest request(s) at the top tier)"
                )
        failed += stats.failed
        incidents += stats.incidents
    left_out = [s for p in outcome.passes for s in p.plan.skipped]
    if not as_json:
        console = Console()
        for skipped in [*left_out, *outcome.unresolved]:
            console.print(f"  left out {skipped.image}: {skipped.reason}")
    # Images held back by the rate-limit reserve are expected, like items a deadline cut:
    # only what failed, an incident, an image that could not be resolved, or a run that
    # left out every image it was given is exit 1.
    unresolved = outcome.unresolved
    done = sum(stats.done for _, stats in outcome.runs)
    cut = [s for s in left_out if s.reason != ALREADY_WARM]
    if not done and cut and len(cut) == len(left_out) and not failed and not unresolved:
        raise WorkFailed(
            f"nothing warmed: all {len(cut)} image(s) were left out "
            f"(first: {cut[0].image}: {cut[0].reason})"
        )
    if failed or incidents or unresolved:
        last = outcome.runs[-1][0]
        raise WorkFailed(
            f"run {last}: {failed} item(s) failed, {incidents} incident(s)"
            + (f", {len(unresolved)} image(s) could not be resolved" if unresolved else "")
        )


def _deadline(
    cfg: Config,
    region: str,
    now: datetime,
    window: timedelta | None,
    in_window: bool,
    deadline: str | None,
) -> datetime | None:
    """``--deadline``, else the end of the window in progress (``--in-window``), else
    ``--window`` from now (the length the plan was sized to at the link caps); None: the run
    goes to its end, or a resumed run keeps the deadline it was started with while ahead."""
    cfg.region(region)  # ConfigError naming the known regions, before anything else
    if deadline:
        at = parse_time(deadline, "--deadline")
        if at <= now:
            raise BadInput(f"--deadline {deadline}: already past ({now:%F %T}Z now)")
        return at
    if in_window:
        return current_window_deadline(cfg, region, now)
    if window is not None:
        return now + window
    return None


@click.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--region", "-r", help="Only this region's runs.")
@click.option(
    "--limit",
    default=10,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many recent runs.",
)
@json_option
@click.pass_context
def status_command(ctx: click.Context, region: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, what each mirror holds, and incidents."""
    cfg = load_config(ctx)
    ledger = Ledger(cfg.database.url)
    from warmer.upkeep.reconcile import expiring_before_next_window

    runs = ledger.recent_runs(limit, region)
    holdings = ledger.holdings_summary()
    artifacts = Counter(m for m, _, _, _ in ledger.artifact_tags(cfg.mirrors))
    incidents = ledger.incidents()[:20]
    expiring = expiring_before_next_window(cfg, ledger, utcnow())
    if as_json:
        emit_json(
            {
                "runs": [
                    {
                        "id": run.id,
                        "region": run.region,
                        "state": run.state,
                        "started_at": as_utc(run.started_at),
                        "finished_at": as_utc(run.finished_at),
                        "summary": json.loads(run.summary or "{}"),
                    }
                    for run in runs
                ],
                "holdings": holdings,
                "artifact_manifests": dict(sorted(artifacts.items())),
                "expiring_before_next_window": [e.as_dict() for e in expiring],
                "incidents": [
                    {
                        "at": as_utc(incident.at),
                        "mirror": incident.mirror,
                        "repository": incident.repository,
                        "digest": incident.digest,
                        "kind": incident.kind,
                        "detail": incident.detail,
                    }
                    for incident in incidents
                ],
            }
        )
        return
    console = Console()
    table = Table(title="recent runs")
    for column in ("run", "region", "state", "started", "done", "failed", "pending", "bytes"):
        table.add_column(column)
    for run in runs:
        summary = json.loads(run.summary or "{}")
        started = as_utc(run.started_at)
        table.add_row(
            str(run.id),
            run.region,
            run.state,
            f"{started:%F %T}" if started else "",
            str(summary.get("done", "")),
            str(summary.get("failed", "")),
            str(summary.get("pending", "")),
            format_size(sum(summary.get("bytes_by_mirror", {}).values())) if summary else "",
        )
    console.print(table)
    table = Table(title="what each mirror holds (per the ledger)")
    for column in ("mirror", "state", "items", "bytes"):
        table.add_column(column)
    for held in holdings:
        table.add_row(held["mirror"], held["state"], str(held["items"]), format_size(held["bytes"]))
    console.print(table)
    for mirror, n in sorted(artifacts.items()):
        console.print(f"  {mirror}: {n} artifact manifest(s) by tag (signatures, SBOMs...)")
    for e in expiring:
        if not e.objects:
            continue  # nothing to say (the JSON lists every mirror)
        console.print(
            f"  {e.mirror}: {e.objects} object(s), {format_size(e.bytes)} expire before the "
            f"next window ({e.next_window:%F %H:%M}Z); on a first-fetch mirror they are warmed "
            "again in the first window after they expire"
        )
    for incident in incidents:
        console.print(
            f"[red]incident[/red] {as_utc(incident.at):%F %T} {incident.mirror} "
            f"{incident.repository}@{incident.digest}: {incident.kind}: {incident.detail}"
        )


commands = [plan_command, run_command, status_command]
