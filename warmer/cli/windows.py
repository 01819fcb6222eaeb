"""``warmer windows``: the coming maintenance windows of a region, in local time and UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from warmer.cli.common import CONTEXT_SETTINGS, BadInput, emit_json, json_option, parse_time
from warmer.units import format_duration
from warmer.windows import InvalidWindow, Window, WindowSpec, next_windows, remaining


def _parse_window_option(text: str) -> WindowSpec:
    parts = text.split("|")
    if len(parts) not in (2, 3):
        raise BadInput(f"--window {text!r}: expected 'CRON|DURATION|TIMEZONE'")
    data = {"cron": parts[0].strip(), "duration": parts[1].strip()}
    if len(parts) == 3:
        data["timezone"] = parts[2].strip()
    try:
        return WindowSpec.from_mapping(data)
    except InvalidWindow as exc:
        raise BadInput(f"--window {text!r}: {exc}") from None


def _region_specs(config_path: str, region: str) -> list[WindowSpec]:
    from warmer.config import ConfigError, load

    try:
        items = load(config_path).region(region).windows
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(WindowSpec.coerce(item))
        except InvalidWindow as exc:
            raise BadInput(f"{config_path}: regions.{region}.windows[{i}]: {exc}") from None
    return specs


def _parse_at(text: str | None) -> datetime:
    # The shell reads the clock; windows.py never does.
    return datetime.now(UTC) if text is None else parse_time(text, "--at", naive_is_utc=False)


def _stamp(dt: datetime) -> str:
    return dt.strftime("%a %Y-%m-%d %H:%M %Z")


def _as_json(region: str | None, window: Window, now: datetime) -> dict[str, Any]:
    return {
        "region": region,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        "local_start": window.local_start.isoformat(),
        "local_end": window.local_end.isoformat(),
        "timezone": window.spec.timezone,
        "cron": window.spec.cron,
        "seconds": int(window.length.total_seconds()),
        "open": window.contains(now),
        "remaining_seconds": int(remaining(window, now).total_seconds()),
    }


@click.command("windows", context_settings=CONTEXT_SETTINGS)
@click.option("--region", "region", help="Region whose configured windows to show.")
@click.option("--next", "count", type=click.IntRange(min=1, max=1000), default=5, show_default=True)
@click.option("--at", "at", metavar="ISO", help="Pretend it is this time (default: now).")
@click.option(
    "--window",
    "window_opts",
    multiple=True,
    metavar="'CRON|DURATION|TZ'",
    help="A window given directly instead of the config; repeatable.",
)
@json_option
@click.pass_context
def windows_command(
    ctx: click.Context,
    region: str | None,
    count: int,
    at: str | None,
    window_opts: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show the coming maintenance windows in local time and UTC.

    \b
      warmer windows --region eu --next 5
      warmer windows --window '0 1 * * 1-5|3h|Europe/Berlin' --at 2024-03-29T12:00Z
    A window already open at --at is listed first, with what is left of it.
    """
    now = _parse_at(at)
    if window_opts:
        specs = [_parse_window_option(text) for text in window_opts]
    elif region:
        specs = _region_specs(ctx.obj["config_path"], region)
    else:
        raise BadInput("give --region R (windows from the config) or --window 'CRON|DURATION|TZ'")
    windows = next_windows(specs, now, count)
    if as_json:
        for window in windows:
            emit_json(_as_json(region, window, now))
        return
    label = f"region {region}" if region else "given windows"
    if not windows:
        click.echo(f"{label}: no windows")
        return
    click.echo(f"{label}: next {len(windows)} window(s) after {_stamp(now)}")
    for window in windows:
        state = (
            f"open, {format_duration(remaining(window, now))} left" if window.contains(now) else ""
        )
        click.echo(
            f"  {_stamp(window.local_start)} -> {_stamp(window.local_end)}"
            f"  ({_stamp(window.start)} -> {_stamp(window.end)})"
            f"  {format_duration(window.length)}  {state}".rstrip()
        )


commands = [windows_command]
