"""``warmer config check``: validate a config file and show the topology it describes."""

from __future__ import annotations

from pathlib import Path

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, emit_json, json_option
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
@json_option
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the config file: unknown keys, bad units, broken parent chains.

    Exits 2 naming the file, the key and the problem.
    """
    cfg = load_config(ctx)
    chains = {name: cfg.chain(name) for name in cfg.mirrors}
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
