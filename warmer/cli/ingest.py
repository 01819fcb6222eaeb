"""``warmer ingest`` (logs -> usage events -> store) and ``warmer refs`` (static references)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from analytics import store
from analytics.events import Event
from analytics.ingest import FORMATS, FileResult, Options, ingest
from analytics.regions import RegionRules, RuleError
from analytics.staticrefs import ScanTally, StaticRef, scan_paths
from analytics.staticrefs.history import DEFAULT_MAX_REVISIONS, Dated, date_refs
from warmer.cli.common import (
    CONTEXT_SETTINGS,
    BadInput,
    WorkFailed,
    emit_json,
    json_option,
    parse_time,
)
from warmer.cli.config import database_url, load_config

_paths = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True)
)
_db = click.option(
    "--db",
    "db_url",
    default=None,
    help="Database URL (default: the config's [database] url, else warmer.db).",
)


def _config_regions(ctx: click.Context) -> RegionRules:
    """``[analytics.regions]`` from the config file when it exists."""
    path = Path((ctx.find_root().obj or {}).get("config_path") or "warmer.toml")
    if not path.is_file():
        return RegionRules()
    table = load_config(ctx).analytics.region_rules()
    try:
        return RegionRules.from_mapping(table)
    except RuleError as exc:
        raise BadInput(f"{path}: {exc}") from None


def _parse_at(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value, "--at")


@click.command("ingest", context_settings=CONTEXT_SETTINGS)
@_paths
@click.option("--dry-run", is_flag=True, help="Print the events found; store nothing.")
@json_option
@_db
@click.option("--region", default=None, help="Put every event in this region.")
@click.option(
    "--rule",
    "rules",
    multiple=True,
    metavar="[FIELD:]GLOB=REGION",
    help="Region rule (FIELD: runner, pipeline, path, mirror; none = any). Repeatable.",
)
@click.option("--at", default=None, help="Time for lines without one (default: file mtime).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Skip detection.")
@click.option("--upstream", default=None, help="Registry a mirror log's repositories belong to.")
@click.option("--pipeline", default=None, help="Pipeline name for every event.")
@click.pass_context
def ingest_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    dry_run: bool,
    as_json: bool,
    db_url: str | None,
    region: str | None,
    rules: tuple[str, ...],
    at: str | None,
    fmt: str | None,
    upstream: str | None,
    pipeline: str | None,
) -> None:
    """Read CI, kubelet and registry logs into hourly usage counts.

    \b
    Formats are detected per file: CI job logs (github, gitlab, jenkins, buildkite,
    circleci, cloudbuild, codebuild), docker (and nerdctl, ctr, compose), podman (and
    buildah), buildkit, kaniko, jib, kubelet (and containerd, CRI-O, Kubernetes events as
    tables or JSON), distribution (access logs and notification events). Plain, .gz and
    .zst files; directories are walked. Re-ingesting a file adds nothing; a grown log is
    read from where the last ingest stopped. Unreadable lines are skipped and counted.
    Lines that look like an image reference but gave no event are counted per format
    (coverage = events / (events + unused)) and the first are shown with file:line; a file
    of no known format is scanned for them too (format "unknown").
    \b
      warmer ingest logs/ --dry-run --json     one event per line, nothing stored
      warmer ingest ci/ --rule runner:us-*=us  store, counts per format
    """
    try:
        region_rules = _config_regions(ctx).with_cli_rules(list(rules))
    except RuleError as exc:
        raise BadInput(str(exc)) from None
    region_rules.force = region
    opts = Options(
        rules=region_rules,
        default_time=_parse_at(at),
        format=fmt,
        upstream=upstream,
        pipeline=pipeline,
    )

    def show_event(ev: Event) -> None:
        if as_json:
            emit_json(ev.to_json())
        else:
            pulled = {True: "pulled", False: "present", None: "-"}[ev.pulled]
            click.echo(
                f"{ev.timestamp:%Y-%m-%dT%H:%M:%SZ}  {ev.source:<12} {pulled:<8} "
                f"{ev.region or '-':<8} {ev.reference}"
            )

    def warn(result: FileResult) -> None:
        if result.warning and result.problem != "missing":  # missing: one error at the end
            click.echo(f"warning: {result.warning}", err=True)

    url = None if dry_run else database_url(ctx, db_url)
    report = ingest(
        list(paths), opts, url=url, on_event=show_event if dry_run else None, on_file=warn
    )
    if not any(Path(p).exists() for p in paths):
        raise BadInput("none of the given paths exist")
    summary = report.as_dict()
    if dry_run:
        if not as_json:
            click.echo(_summary_text(summary), err=True)
    elif as_json:
        emit_json(summary)
    else:
        click.echo(_summary_text(summary))
    if summary["unused_lines"] and as_json:  # the text summary says it otherwise
        click.echo(f"warning: {_unused_text(summary)}", err=True)
    missing = report.problems("missing")
    if missing:  # a path named on the command line does not exist: bad usage
        raise BadInput(f"no such file or directory: {_names(missing)}")
    if report.failed:  # what unreadable or damaged files held is not all counted
        raise WorkFailed(
            f"{len(report.failed)} file(s) damaged or unreadable: {_names(report.failed)}"
        )


def _names(results: list[FileResult]) -> str:
    return _listed([r.path for r in results])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _unused_text(s: dict[str, Any]) -> str:
    """How many image-looking lines gave no event, the coverage, and where the first are."""
    text = (
        f"{s['unused_lines']} line(s) look like an image reference but gave no event "
        f"(coverage {_percent(s['coverage'])}); pulls may be undercounted"
    )
    for row in s["unused_sample"][:3]:
        text += f"\n  {row['file']}:{row['line']}: {row['text']}"
    return text


def _summary_text(s: dict[str, Any]) -> str:
    lines = [f"{'format':<14}{'files':>7}{'events':>10}{'unused':>8}{'coverage':>10}"]
    for name, row in s["formats"].items():
        lines.append(
            f"{name:<14}{row['files']:>7}{row['events']:>10}{row['unused_lines']:>8}"
            f"{_percent(row['coverage']):>10}"
        )
    skipped = ", ".join(f"{k} {v}" for k, v in s["skipped"].items() if v) or "none"
    lines.append(
        f"{s['files']} file(s), {s['unchanged']} unchanged, {s['events']} event(s), "
        f"{s['lines']} line(s); skipped lines: {s['skipped_lines']} ({skipped})"
    )
    files = s["skipped_files"]
    if any(files.values()):
        lines.append(
            "skipped files: "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in files.items() if v)
        )
    if s["unused_lines"]:
        lines.append("unused: " + _unused_text(s))
    return "\n".join(lines)


@click.command("refs", context_settings=CONTEXT_SETTINGS)
@_paths
@json_option
@_db
@click.option("--no-store", is_flag=True, help="Only list; do not record them in the store.")
@click.option(
    "--max-revisions",
    default=DEFAULT_MAX_REVISIONS,
    show_default=True,
    type=click.IntRange(min=0),
    help="Git revisions read per file, newest first (0: no history, date at scan time).",
)
@click.pass_context
def refs_command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    as_json: bool,
    db_url: str | None,
    no_store: bool,
    max_revisions: int,
) -> None:
    """List image references named in Dockerfiles, compose, Kubernetes and CI files.

    \b
    Dockerfile* / *.Dockerfile / Containerfile: FROM (ARG defaults substituted, stages
    skipped), COPY --from=IMAGE, RUN --mount=from=IMAGE; docker-compose*.y*ml / compose*.y*ml:
    image:; .github/workflows/*.y*ml: container, services, uses: docker://;
    .gitlab-ci.yml: image, services; any other YAML with Kubernetes pod specs.
    In a git work tree each reference is dated by HEAD's first-parent history: first seen
    at the commit that added it, and one no longer named is listed as removed at the
    commit that removed it (dated_by: git); elsewhere, or without git, at the scan time
    (dated_by: scan). The references are also stored unless --no-store.
    One warning per unresolvable or invalid reference, naming file:line.
    """
    found: list[StaticRef] = []
    scanned: list[str] = []
    tally = ScanTally()
    for warning in scan_paths(list(paths), found.append, scanned.append, tally):
        if not warning.endswith(": no such file or directory"):  # one error at the end
            click.echo(f"warning: {warning}", err=True)
    if not any(Path(p).exists() for p in paths):
        raise BadInput("none of the given paths exist")
    now = datetime.now(UTC).replace(microsecond=0)
    history = date_refs(list(paths), found, scanned, now, max_revisions)
    dated = history.dated
    if not no_store:
        kept = store.add_dated_refs(database_url(ctx, db_url), dated, history.files, now)
        dated = [  # a reference dated at scan time keeps the first sighting stored before
            replace(d, first_seen=kept.get((d.ref.file, d.ref.line, str(d.ref.reference)), now))
            if d.dated_by == "scan" and d.present
            else d
            for d in dated
        ]
    _show_refs(dated, as_json)
    for note in history.notes:
        click.echo(f"note: {note}", err=True)
    if history.repos:
        click.echo(history.summary(), err=True)
    skipped = [
        f"{len(names)} {what}"
        for what, names in (("not regular", tally.not_regular), ("too large", tally.too_large))
        if names
    ]
    if skipped:
        click.echo(f"skipped files: {', '.join(skipped)}", err=True)
    if tally.missing:
        raise BadInput(f"no such file or directory: {_listed(tally.missing)}")
    if tally.failed:
        raise WorkFailed(f"{len(tally.failed)} file(s) unreadable: {_listed(tally.failed)}")


def _listed(names: list[str], first: int = 3) -> str:
    more = f" and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(names[:first]) + more


def _show_refs(dated: list[Dated], as_json: bool) -> None:
    if as_json:
        for d in dated:
            emit_json(d.to_json())
        return
    if not dated:
        click.echo("no image references found", err=True)
        return

    def where(d: Dated) -> str:
        return f"{d.ref.file}:{d.ref.line}" if d.present else f"{d.ref.file} (removed)"

    def when(d: Dated) -> str:
        until = "" if d.present else f" to {d.last_seen:%Y-%m-%d}"
        return f"{d.first_seen:%Y-%m-%d}{until} {d.dated_by}"

    width = max(len(where(d)) for d in dated)
    span = max(len(when(d)) for d in dated)
    for d in dated:
        extra = f"  ({d.ref.platform})" if d.ref.platform else ""
        click.echo(
            f"{where(d):<{width}}  {d.ref.kind:<10} {when(d):<{span}}  {d.ref.reference}{extra}"
        )


commands = [ingest_command, refs_command]
