"""``warmer config check``: validate a config file and show the topology it describes, and
(``--probe``, ``--probed``) compare what it says about each mirror with what ``warmer probe``
measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option
from warmer.config import Config, ConfigError, load
from warmer.units import format_size


def load_config(ctx: click.Context) -> Config:
    """The config named by --config / $WARMER_CONFIG, or exit 2 with one clear line."""
    path = Path(ctx.find_root().obj["config_path"])
    try:
        return load(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


@click.group("config", context_settings=CONTEXT_SETTINGS)
def config_group() -> None:
    """Inspect and validate the configuration."""


@config_group.command("check", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--probe",
    "run_probes",
    is_flag=True,
    help="Probe every mirror now (`warmer probe`: pushes a canary upstream) and compare.",
)
@click.option("--probed", is_flag=True, help="Compare with the last stored `warmer probe` results.")
@json_option
@click.pass_context
def check(ctx: click.Context, run_probes: bool, probed: bool, as_json: bool) -> None:
    """Validate the config file: unknown keys, bad units, broken parent chains.

    Exits 2 naming the file, the key and the problem. With --probe (run the probes now) or
    --probed (their stored results), also lists each mirror key that disagrees with what
    was measured, and the probes' recommendations; exit 1 when any key disagrees.
    """
    cfg = load_config(ctx)
    chains = {name: cfg.chain(name) for name in cfg.mirrors}
    if run_probes or probed:
        _compare_probes(ctx, cfg, run_probes, as_json)
        return
    if as_json:
        emit_json(
            {
                "ok": True,
                "database": cfg.database.url.split("@")[-1],
                "upstreams": sorted(cfg.upstreams),
                "mirrors": {n: {"tier": cfg.tier(n), "chain": c} for n, c in chains.items()},
                "regions": sorted(cfg.regions),
            }
        )
        return
    click.echo(f"ok: {ctx.find_root().obj['config_path']}")
    for name, chain in sorted(chains.items(), key=lambda kv: (len(kv[1]), kv[0])):
        m = cfg.mirrors[name]
        cap = format_size(m.link.bandwidth) + "/s" if m.link.bandwidth else "uncapped"
        path = " -> ".join([cfg.upstream_of(name), *chain])
        click.echo(f"  mirror {name} (tier {cfg.tier(name)}): {path}; link {cap}")
    for name, reg in sorted(cfg.regions.items()):
        budget = format_size(reg.budget) if reg.budget else "unlimited"
        click.echo(
            f"  region {name}: mirrors {', '.join(reg.mirrors)}; budget {budget}; "
            f"{len(reg.windows)} window(s); platforms {', '.join(reg.platforms)}"
        )


def _compare_probes(ctx: click.Context, cfg: Config, run: bool, as_json: bool) -> None:
    """Each mirror's keys against its probe (run now, or the stored one); exit 1 on any
    disagreement."""
    from warmer.cli.probe import probe_dir, run_probe
    from warmer.upkeep.probe import disagreements, load_saved, recommendations, save

    where = probe_dir(ctx)
    out: dict[str, dict[str, Any]] = {}
    differ = 0
    for name in sorted(cfg.mirrors):
        report = run_probe(cfg, name, None) if run else load_saved(where, name)
        if report is None:
            out[name] = {"probed": False}
            continue
        if run:
            save(report, where)
        found = disagreements(report, cfg)
        differ += len(found)
        out[name] = {
            "probed": True,
            "probed_at": report.probed_at,
            "disagreements": found,
            "recommendations": recommendations(report, cfg),
        }
    if as_json:
        emit_json({"ok": differ == 0, "mirrors": out})
    else:
        for name, v in out.items():
            if not v["probed"]:
                click.echo(f"  mirror {name}: not probed (`warmer probe {name}`)")
                continue
            click.echo(f"  mirror {name}: {len(v['disagreements'])} disagreement(s)")
            for line in [*v["disagreements"], *v["recommendations"]]:
                click.echo(f"    {line}")
    if differ:
        raise WorkFailed(f"{differ} mirror key(s) disagree with what the probes measured")


commands = [config_group]


def database_url(ctx: click.Context, override: str | None) -> str:
    """``--db`` when given, else the config file's ``[database] url`` when the file exists,
    else the default SQLite file."""
    if override:
        return override
    path = Path(ctx.find_root().obj.get("config_path") or "warmer.toml")
    if path.is_file():
        return load_config(ctx).database.url
    from warmer.store.db import DEFAULT_URL

    return DEFAULT_URL
