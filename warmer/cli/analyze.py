"""``warmer rank``, ``warmer backtest`` and ``warmer generate``: the usage model's commands."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pandas as pd

from analytics.rank import RankParams
from warmer.cli.common import CONTEXT_SETTINGS, BadInput, emit_json, json_option, parse_time
from warmer.cli.config import database_url, load_config
from warmer.units import UnitError, parse_size

_db = click.option(
    "--db",
    "db_url",
    default=None,
    help="Database URL (default: the config's [database] url, else warmer.db).",
)


MAX_TOP = 1_000_000  # rows: more than any ranking, small enough for every database's LIMIT


def _time(value: str | None, option: str) -> datetime:
    return datetime.now(UTC) if value is None else parse_time(value, option)


def known_regions(ctx: click.Context, url: str) -> set[str]:
    """Regions of the config file (when there is one) and of the stored usage."""
    from sqlalchemy import select
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from warmer.store import db
    from warmer.store.schema import usage

    found: set[str] = set()
    path = Path(ctx.find_root().obj.get("config_path") or "warmer.toml")
    if path.is_file():
        found |= set(load_config(ctx).regions)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInput(f"database URL {url!r}: not a database URL") from None
    database = parsed.database or ""
    sqlite_file = parsed.drivername.startswith("sqlite") and database not in ("", ":memory:")
    if sqlite_file and not Path(database).is_file():
        return found  # no database yet: do not create one to find no regions in it
    with db.engine_for(url).connect() as conn:
        found |= {str(r) for (r,) in conn.execute(select(usage.c.region).distinct()) if r}
    return found


def check_region(ctx: click.Context, url: str, region: str) -> None:
    """Exit 2 naming ``region`` and the known ones unless the config or the usage has it."""
    known = known_regions(ctx, url)
    if region not in known:
        listed = ", ".join(sorted(known)) or "none (configure [regions] or run `warmer ingest`)"
        raise BadInput(f"--region {region!r}: unknown region; known regions: {listed}")


@click.command("rank", context_settings=CONTEXT_SETTINGS)
@click.option("--region", required=True, help="Region to rank.")
@click.option(
    "--top", default=20, show_default=True, type=click.IntRange(1, MAX_TOP), help="Rows shown."
)
@json_option
@_db
@click.option("--at", "at", default=None, help="Rank as of this time (ISO 8601; default now).")
@click.option("--window", nargs=2, default=None, metavar="START END", help="Window to predict.")
@click.option(
    "--half-life",
    default=RankParams.half_life_days,
    show_default=True,
    type=click.FloatRange(0.1, 3650),
    help="Days.",
)
@click.option("--no-store", is_flag=True, help="Do not record the ranking for the planner.")
@click.option(
    "--model-only",
    is_flag=True,
    help="Rank with the model alone, not the ensemble that weighs it against the baselines.",
)
@click.pass_context
def rank_command(
    ctx: click.Context,
    region: str,
    top: int,
    as_json: bool,
    db_url: str | None,
    at: str | None,
    window: tuple[str, str] | None,
    half_life: float,
    no_store: bool,
    model_only: bool,
) -> None:
    """Predicted pulls per image tag for the next day and window, with the reasons.

    Reads the usage aggregates and static references from the store (fill it with
    `warmer ingest` and `warmer refs`), stores the full ranking for the planner and prints
    the top rows. The ranking is an ensemble: the model, yesterday, frequency, a decayed
    mean, the same weekday last week and static references, each weighted by how well it
    did on the region's last 14 days; each row's reasons name the predictors behind it.
    """
    from analytics import store
    from analytics.ensemble import LABELS, rank_ensemble, ranking_since
    from analytics.rank import RankParams, rank
    from warmer.store.rankings import save_ranking

    if not math.isfinite(half_life):
        raise BadInput(f"--half-life {half_life}: not a number of days")
    url = database_url(ctx, db_url)
    check_region(ctx, url, region)
    now = _time(at, "--at")
    win: tuple[datetime, datetime] | None = None
    if window:
        win = (_time(window[0], "--window"), _time(window[1], "--window"))
        if win[1] <= win[0]:
            raise BadInput(f"--window {window[0]} {window[1]}: the end must be after the start")
    usage = store.usage_frame(url, region=region, since=ranking_since(now))
    params = RankParams(half_life_days=half_life)
    ranker = rank if model_only else rank_ensemble
    ranking = ranker(usage, store.static_frame(url), now, window=win, region=region, params=params)
    weights = ranking.attrs.get("weights", {}).get(region, {})
    if not no_store:
        save_ranking(url, ranking, computed_at=now)
    shown = ranking.head(top)
    if as_json:
        for row in shown.to_dict("records"):
            row["last_seen"] = None if pd.isna(row["last_seen"]) else str(row["last_seen"])
            emit_json(row)
        return
    if shown.empty:
        click.echo(f"no usage or static references for region {region!r} in {url}")
        return
    if weights:
        learned = ", ".join(
            f"{LABELS[n]} {w:.0%}" for n, w in sorted(weights.items(), key=lambda x: -x[1])
        )
        click.echo(f"ensemble weights for {region} (last 14 days): {learned}")
    for row in shown.itertuples(index=False):
        ref = f"{row.image}:{row.tag}" if row.tag else f"{row.image}@{row.digest}"
        click.echo(f"{row.rank:>3}  {row.score:9.1f}  {row.window_score:9.1f}  {ref}")
        click.echo(f"     {row.reasons}")


def _budget(value: str) -> int:
    try:
        size = parse_size(value)
    except UnitError as exc:
        raise BadInput(f"--budget: {exc}") from None
    if size <= 0:
        raise BadInput(f"--budget {value!r}: must be more than 0 bytes")
    return size


@click.command("backtest", context_settings=CONTEXT_SETTINGS)
@click.option("--region", required=True)
@click.option("--budget", default="5GiB", show_default=True, help="Bytes warmed per day.")
@json_option
@_db
@click.option(
    "--catalogue",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="catalogue.json with image layers (from `warmer generate`); else a default size.",
)
@click.option("--warmup", default=7, show_default=True, type=click.IntRange(1, 365), help="Days.")
@click.pass_context
def backtest_command(
    ctx: click.Context,
    region: str,
    budget: str,
    as_json: bool,
    db_url: str | None,
    catalogue: Path | None,
    warmup: int,
) -> None:
    """Rolling-origin backtest: the ensemble and the model vs each baseline and the oracle.

    Also the ensemble (the ranking `warmer rank` stores) and the baselines seasonal (the
    same weekday last week) and decayed (a decayed mean).

    Image sizes come from --catalogue (layers, shared ones counted once); without it every
    image is priced at 250 MB. A labels.json beside the catalogue adds the generator's day
    kinds (release trains, adoptions, migrations, tag moves).
    """
    from analytics import store
    from analytics.backtest import backtest, margins, summarise
    from analytics.generate.catalogue import Catalogue
    from analytics.generate.write import load_labels

    limit = _budget(budget)
    url = database_url(ctx, db_url)
    check_region(ctx, url, region)
    layers = labels = None
    if catalogue is not None:
        if not catalogue.is_file():  # a FIFO would block the read forever
            raise BadInput(f"{catalogue}: not a regular file")
        try:
            layers = Catalogue.load(catalogue)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Any JSON of another shape: the loader walks it as a catalogue and trips.
            raise BadInput(f"{catalogue}: not a catalogue: {type(exc).__name__}: {exc}") from None
        beside = catalogue.parent / "labels.json"
        labels = load_labels(beside) if beside.is_file() else None
    usage = store.usage_frame(url, region=region)
    if usage.empty:
        raise BadInput(f"no usage for region {region!r} in {url}: run `warmer ingest` first")
    days = backtest(usage, store.static_frame(url), region, limit, layers, warmup, labels)
    if days.empty:
        raise BadInput(f"region {region!r}: history shorter than the {warmup}-day warm-up")
    summary = summarise(days)
    table = margins(summary)
    ensemble = margins(summary, "ensemble")
    if as_json:
        emit_json(_result(region, limit, summary, table, ensemble))
        return
    pivot = summary.pivot(index="kind", columns="strategy", values="byte_hit_rate")
    click.echo(f"byte hit rate, region {region}, budget {budget}, {days['day'].nunique()} days")
    click.echo(pivot.round(3).to_string())
    click.echo("\nensemble margins")
    click.echo(ensemble.round(3).to_string(index=False))
    click.echo("\nmodel margins")
    click.echo(table.round(3).to_string(index=False))


def _result(
    region: str, budget: int, summary: pd.DataFrame, table: pd.DataFrame, ensemble: pd.DataFrame
) -> dict[str, Any]:
    return {
        "region": region,
        "budget": budget,
        "rates": json.loads(summary.to_json(orient="records")),
        "margins": json.loads(table.to_json(orient="records")),
        "ensemble_margins": json.loads(ensemble.to_json(orient="records")),
    }


@click.command("generate", context_settings=CONTEXT_SETTINGS)
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--weeks", default=8, show_default=True, type=click.IntRange(min=1, max=104))
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option(
    "--pipelines",
    default=40,
    show_default=True,
    type=click.IntRange(2, 10_000),
    help="Per region.",
)
@click.option(
    "--noise", default=12, show_default=True, type=click.IntRange(0, 1000), help="Lines per pull."
)
@click.option(
    "--variants",
    is_flag=True,
    help="Write a third of GitHub, Jenkins and docker pipelines as a CircleCI, Cloud Build, "
    "CodeBuild or Buildkite log instead (the same pulls).",
)
@json_option
def generate_command(
    out: Path, weeks: int, seed: int, pipelines: int, noise: int, variants: bool, as_json: bool
) -> None:
    """Write a synthetic CI workload: logs in every format, repositories, catalogue.json.

    Deterministic by seed. Ingest it with region rules on the path, e.g.
    `warmer ingest OUT/logs --rule 'path:*/logs/eu/*=eu' --rule 'path:*/logs/us/*=us'`,
    and `warmer refs OUT/repos`.
    """
    from analytics.generate.workload import Params, generate
    from analytics.generate.write import write_logs, write_meta, write_repos

    work = generate(Params(weeks=weeks, seed=seed, pipelines_per_region=pipelines))
    written = write_logs(work, out, noise=noise, variants=variants)
    files = write_repos(work, out)
    write_meta(work, out)
    result = {
        "out": str(out),
        "pulls": len(work.pulls),
        "log_files": written.files,
        "log_bytes": written.bytes,
        "repo_files": files,
        "bytes_per_source": written.per_source,
        "pulls_per_format": written.pulls,
    }
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{out}: {result['pulls']} pulls in {written.files} log files "
            f"({written.bytes / 1e6:.1f} MB), {files} repository files, catalogue.json"
        )


commands = [rank_command, backtest_command, generate_command]
