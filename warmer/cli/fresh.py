"""``warmer refresh``, ``warmer drift``, ``warmer pins`` and ``warmer verify``: freshness and
integrity of what the mirrors hold."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from warmer.cli.common import (
    CONTEXT_SETTINGS,
    BadInput,
    WorkFailed,
    emit_json,
    json_option,
    parse_time,
)
from warmer.cli.config import load_config
from warmer.config import ConfigError
from warmer.store.ledger import Ledger, as_utc, utcnow
from warmer.units import UnitError, format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from warmer.upkeep.reconcile import ReconcileReport


def _short(digest: str | None) -> str:
    from warmer.upkeep.freshness import short

    return short(digest)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return format_duration(timedelta(seconds=max(0, round(seconds))))


@click.command("refresh", context_settings=CONTEXT_SETTINGS)
@click.option("--region", "-r", help="Only this region's tags (default: every region).")
@click.option("--deadline", help="Start nothing after this time (ISO 8601, UTC if no offset).")
@json_option
@click.pass_context
def refresh_command(
    ctx: click.Context, region: str | None, deadline: str | None, as_json: bool
) -> None:
    """Re-resolve tracked tags (HEAD only) and warm what moved or expired.

    Every mutable tag of the stored ranking and of the ledger is HEADed at the upstream and
    at each tier serving it. A tag that moved is warmed through the tiers (inside the
    bandwidth caps and the rate-limit reserve), the old digest is marked superseded and a
    drift event recorded; a tier serving an old digest from a metadata cache is reported
    and its invalidation hook called. Exit 1 when a tag could not be checked or warmed.
    """

    from warmer.upkeep.refresh import refresh

    cfg = load_config(ctx)
    try:
        if region is not None:
            cfg.region(region)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    the_deadline = parse_time(deadline, "--deadline") if deadline else None
    ledger = Ledger(cfg.database.url)
    report = asyncio.run(refresh(cfg, ledger, region=region, now=utcnow(), deadline=the_deadline))
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(
            f"checked {report.checked} tag(s): {report.moved} moved, "
            f"{report.stale_tiers} stale tier answer(s), {report.renewed} renewed; "
            f"{report.warmed_items} item(s) warmed, "
            f"{report.upstream_counted_requests} counted upstream request(s)"
            + (
                f"; artifacts: {report.artifacts_new} new, {report.artifacts_resigned} "
                f"re-signed ({report.artifact_heads} HEADs)"
                if report.artifact_heads
                else ""
            )
        )
        for t in report.tags:
            if t.moved:
                click.echo(
                    f"  moved {t.image}:{t.tag} {_short(t.old_digest)} -> {_short(t.digest)}"
                )
            for a in t.artifacts:
                click.echo(f"  {t.image}:{t.tag}: {a['reason']}")
            for s in t.stale:
                fixed = "fresh after invalidation" if s.get("fresh_after") else "still stale"
                click.echo(
                    f"  stale {s['mirror']} serves {t.image}:{t.tag} as {_short(s['served'])} "
                    f"for {_ago(s['seconds'])} ({fixed})"
                )
        for e in report.errors:
            click.echo(f"  error: {e}", err=True)
        for u in report.untracked:
            click.echo(f"  not checked: {u}", err=True)
        if report.deadline_hit:
            click.echo("  the deadline stopped the refresh before the end", err=True)
    if not report.ok:
        raise WorkFailed(f"refresh: {len(report.errors)} problem(s)")


@click.command("drift", context_settings=CONTEXT_SETTINGS)
@click.option("--since", default="7d", show_default=True, help="How far back, e.g. 24h, 7d.")
@json_option
@click.pass_context
def drift_command(ctx: click.Context, since: str, as_json: bool) -> None:
    """The drift history: tags that moved upstream and tiers that served them stale."""
    cfg = load_config(ctx)
    try:
        window = parse_duration(since)
    except UnitError as exc:
        raise BadInput(f"--since: {exc}") from None
    now = utcnow()
    events = Ledger(cfg.database.url).drifts(since=now - window)
    rows = [
        {
            "image": e.image,
            "tag": e.tag,
            "upstream": e.upstream,
            "old": e.old_digest,
            "new": e.new_digest,
            "detected_at": (as_utc(e.detected_at) or now).isoformat(),
            "moved_after": m.isoformat() if (m := as_utc(e.moved_after)) else None,
            "stale_tiers": json.loads(e.stale_tiers),
        }
        for e in events
    ]
    if as_json:
        emit_json({"since": (now - window).isoformat(), "events": rows})
        return
    if not rows:
        click.echo(f"no drift in the last {since}")
        return
    for r in rows:
        click.echo(
            f"{r['detected_at'][:19]}Z  {r['image']}:{r['tag']}  "
            f"{r['old'] or '(new)'} -> {r['new']}"
        )
        for s in r["stale_tiers"]:
            state = "fresh after invalidation" if s.get("fresh_after") else "not invalidated"
            click.echo(
                f"    stale at {s['mirror']} (tier {s['tier']}) for {_ago(s.get('seconds'))}, "
                f"{state}"
            )


@click.command(
    "pins",
    context_settings=CONTEXT_SETTINGS,
    short_help="Stale digest pins in Dockerfiles and manifests, and what to pin to.",
)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@click.pass_context
def pins_command(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Each tag's current digest for the references in Dockerfiles, compose, Kubernetes and
    CI files; references pinned to a digest their tag has moved away from; the exact
    `image:tag@sha256:...` to pin to. Exit 1 when a tag could not be resolved."""
    from warmer.upkeep.pins import pins

    cfg = load_config(ctx)
    missing = [str(p) for p in paths if not p.exists()]
    if missing and len(missing) == len(paths):
        raise BadInput(f"{missing[0]}: no such file or directory")
    report = asyncio.run(pins(cfg, Ledger(cfg.database.url), list(paths), now=utcnow()))
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        emit_json(report.as_dict())
    else:
        for a in report.advice:
            where = f"{a.file}:{a.line}"
            if a.status == "moved":
                click.echo(
                    f"{where}: {a.name}@{_short(a.pinned)} MOVED {_ago(a.ago_seconds)} ago; "
                    f"pin to {a.pin}"
                )
            elif a.status == "current":
                click.echo(f"{where}: {a.name} pinned to its current digest")
            elif a.status == "unpinned":
                click.echo(f"{where}: {a.name} is not pinned; pin to {a.pin}")
            elif a.status == "digest-only":
                click.echo(f"{where}: {a.reference} (by digest, no tag to follow)")
            else:
                click.echo(f"{where}: {a.name}: cannot resolve: {a.error}", err=True)
    unknown = [a for a in report.advice if a.status == "unknown"]
    if unknown:
        raise WorkFailed(f"{len(unknown)} reference(s) could not be resolved")


@click.command(
    "verify",
    context_settings=CONTEXT_SETTINGS,
    short_help="Find what the mirrors lost, re-read and hash the rest, compare tags upstream.",
)
@click.option("--region", "-r", help="Only this region's chains (default: every region).")
@click.option(
    "--sample",
    type=float,
    default=1.0,
    show_default=True,
    help="Fraction of the warm objects to re-read (0 < FRACTION <= 1).",
)
@click.option("--seed", type=int, help="Seed of the sample (reproducible runs).")
@json_option
@click.pass_context
def verify_command(
    ctx: click.Context, region: str | None, sample: float, seed: int | None, as_json: bool
) -> None:
    """First reconcile (see `warmer reconcile`): what a mirror no longer holds is found with
    the cheapest evidence and is not read again. Then GET and hash the warmed blobs and
    manifests still held at each tier (served from the mirror's storage: nothing is warmed);
    compare each tier's answer for a tag with the upstream's. Anything lost or any mismatch
    is an incident: recorded, printed with what differs and where, exit 1; the item stops
    counting as warm and is planned again."""
    from warmer.upkeep.verify import verify

    cfg = load_config(ctx)
    if not 0 < sample <= 1:
        raise BadInput(f"--sample {sample}: a fraction in (0, 1]")
    try:
        if region is not None:
            cfg.region(region)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    report = asyncio.run(
        verify(cfg, Ledger(cfg.database.url), region=region, sample=sample, now=utcnow(), seed=seed)
    )
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_reconcile(report.lost)
        click.echo(
            f"verified {report.objects} object(s) ({report.bytes} bytes) and {report.tags} tag(s)"
            + (f", {report.artifact_tags} artifact tag(s)" if report.artifact_tags else "")
        )
        for f in report.incidents:
            click.echo(f"INCIDENT {f.kind} at {f.mirror} ({f.url}): {f.detail}")
        for f in report.stale:
            click.echo(f"stale: {f.detail}")
        for e in report.errors + report.lost.errors:
            click.echo(f"error: {e}", err=True)
    errors = len(report.errors) + len(report.lost.errors)
    if report.incidents or report.lost.lost or errors:
        raise WorkFailed(
            f"verify: {len(report.lost.lost)} lost, {len(report.incidents)} incident(s), "
            f"{errors} error(s)"
        )


def _print_reconcile(report: ReconcileReport) -> None:
    click.echo(
        f"reconciled {report.checked} holding(s): {report.held} held, {len(report.lost)} lost, "
        f"{report.unchecked} unchecked; {report.requests} request(s), "
        f"{format_size(report.wan_bytes)} fetched by mirrors from their parents to answer"
    )
    for lost in report.lost:
        click.echo(f"lost: {lost.kind} {lost.repository}@{lost.digest}: {lost.evidence}")


@click.command(
    "reconcile",
    context_settings=CONTEXT_SETTINGS,
    short_help="Correct the ledger with what the mirrors really hold, without warming.",
)
@click.option("--region", "-r", help="Only this region's chains (default: every region).")
@click.option("--budget", help="Parent-link bytes the checks may cost, e.g. 1GiB.")
@click.option("--window", help="Stop asking after this long, e.g. 30m.")
@json_option
@click.pass_context
def reconcile_command(
    ctx: click.Context, region: str | None, budget: str | None, window: str | None, as_json: bool
) -> None:
    """Walk the ledger's holdings and ask each mirror, cheapest evidence first, whether it
    still holds them: a repository missing from its catalog (a wiped or replaced cache) costs
    nothing per object; a blob HEAD answered from its storage means held, one relayed from
    its parent means lost (the mirror then fetches it again: those bytes are reported);
    the rest of a lost blob's batch is not asked. What was lost becomes a `lost` incident
    and is planned again. Exit 1 when anything was lost.

    \b
      warmer reconcile --region eu --budget 200MB --window 10m --json
    """
    from warmer.upkeep.reconcile import reconcile
    from warmer.upkeep.verify import region_mirrors

    cfg = load_config(ctx)
    try:
        budget_bytes = parse_size(budget) if budget is not None else None
        length = parse_duration(window) if window is not None else None
        mirrors = region_mirrors(cfg, region)
    except (ConfigError, UnitError) as exc:
        raise BadInput(str(exc)) from None
    until = time.monotonic() + length.total_seconds() if length is not None else None
    report = asyncio.run(
        reconcile(
            cfg, Ledger(cfg.database.url), mirrors, now=utcnow(), budget=budget_bytes, until=until
        )
    )
    if as_json:
        emit_json(report.as_dict())
    else:
        _print_reconcile(report)
        for e in report.errors:
            click.echo(f"error: {e}", err=True)
    if report.lost or report.errors:
        raise WorkFailed(f"reconcile: {len(report.lost)} lost, {len(report.errors)} error(s)")


commands = [refresh_command, drift_command, pins_command, verify_command, reconcile_command]
