"""``warmer probe MIRROR``: measure how a mirror behaves, with a canary image.

A thin shell over :mod:`warmer.upkeep.probe`: runs the probe, prints each finding with how
it was learned and the config key it implies, the recommendations, and stores the result
(``.warmer-probes/probe-MIRROR.json`` beside the config file) for ``warmer config check
--probed``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, WorkFailed, emit_json, json_option
from warmer.config import Config, ConfigError, load
from warmer.oci.auth import CredentialsError
from warmer.upkeep.probe import ProbeError, ProbeReport, probe, save

PROBE_DIR = ".warmer-probes"


def probe_dir(ctx: click.Context) -> Path:
    """Where probe results are stored: beside the config file."""
    return Path(ctx.find_root().obj["config_path"]).resolve().parent / PROBE_DIR


def load_config(ctx: click.Context) -> Config:
    """As ``warmer.cli.config.load_config`` (not imported: that module imports this one)."""
    try:
        return load(Path(ctx.find_root().obj["config_path"]))
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


def run_probe(cfg: Config, mirror: str, repository: str | None) -> ProbeReport:
    """The probe of ``mirror``, or WorkFailed naming why it could not run."""
    if mirror not in cfg.mirrors:
        known = ", ".join(sorted(cfg.mirrors)) or "none"
        raise BadInput(f"no mirror named {mirror!r} in the config (mirrors: {known})")
    try:
        return asyncio.run(probe(cfg, mirror, repository))
    except (ProbeError, CredentialsError) as exc:
        raise WorkFailed(str(exc)) from None


def print_report(report: ProbeReport) -> None:
    view = "counted at the parent" if report.parent_view else "seen from this host only"
    rtt = f"{report.rtt_ms:.0f} ms" if report.rtt_ms is not None else "?"
    prtt = f"{report.parent_rtt_ms:.0f} ms" if report.parent_rtt_ms is not None else "?"
    click.echo(
        f"mirror {report.mirror} (parent {report.parent}, upstream {report.upstream}); "
        f"canary {report.repository}; {view}; round trip {rtt}, to the parent {prtt}"
    )
    for f in report.findings:
        value = "?" if f.value is None else str(f.value)
        line = f"  {f.name}: {value} [{f.how}] {f.evidence}"
        if f.key is not None:
            mark = "not measured" if f.how == "unknown" else "differs" if f.disagrees else "agrees"
            line += f"\n      {f.key} = {f.configured!r} ({mark})"
        click.echo(line)
    for r in report.recommendations:
        click.echo(f"  recommend: {r}")


@click.command("probe", context_settings=CONTEXT_SETTINGS)
@click.argument("mirror")
@click.option(
    "--repository",
    help="Scratch repository of the upstream to push the canary to "
    "(default warmer-probe/canary-<random>).",
)
@json_option
@click.pass_context
def probe_command(ctx: click.Context, mirror: str, repository: str | None, as_json: bool) -> None:
    """Measure how MIRROR behaves, with a canary image pushed to its upstream.

    Pushes a small generated image (a few random blobs) to a scratch repository of the
    mirror's upstream (push access needed) and asks for it through the mirror: cache scope,
    bytes pulled per cold byte, whether HEAD fetches, whether tags go to the parent, whether
    it re-pings its parent per request, whether stored and relayed answers differ. Each
    finding is measured, inferred or unknown, with the config key it implies. The result
    is stored for `warmer config check --probed`. Exit 1 when the probe cannot run.
    """
    cfg = load_config(ctx)
    report = run_probe(cfg, mirror, repository)
    save(report, probe_dir(ctx))
    if as_json:
        emit_json(report.as_dict())
    else:
        print_report(report)


commands = [probe_command]
