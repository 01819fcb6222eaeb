"""Helpers shared by the CLI command modules: errors, JSON output, logging."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import click

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Usage(Exception):
    """Bad usage or bad input: printed as one line, exit status 2."""


class WorkFailed(click.ClickException):
    """The work itself failed (a registry down, a digest mismatch): exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadInput(click.ClickException):
    """Bad usage or input (a reference, a config key): exit status 2, one line."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def emit_json(obj: Any) -> None:
    """One JSON object per line on stdout."""
    click.echo(json.dumps(obj, sort_keys=False, default=str))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        return json.dumps(out, default=str)


def configure_logging(fmt: str, verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))


def parse_time(value: str, option: str, naive_is_utc: bool = True) -> datetime:
    """An ISO 8601 time from an option, or exit 2 saying why. Without an offset it is UTC,
    unless ``naive_is_utc`` is false (where local times matter: then it is refused)."""
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(
            f"{option} {value!r}: not an ISO 8601 time (e.g. 2024-05-01T10:00Z)"
        ) from None
    if ts.tzinfo is None:
        if not naive_is_utc:
            raise BadInput(f"{option} {value!r}: needs a UTC offset (e.g. 2024-03-29T12:00Z)")
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)
