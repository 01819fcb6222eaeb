"""Helpers shared by the CLI command modules: errors, JSON output, logging."""

from __future__ import annotations

import json
import logging
import re
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


# Headers that carry a credential: their values never reach a log line.
_SECRET_HEADERS = (
    r"authorization|proxy-authorization|cookie|set-cookie|www-authenticate|proxy-authenticate"
    r"|x-amz-security-token|x-registry-auth|x-auth-token|x-api-key"
)
# Query parameters and JSON fields that carry one.
_SECRET_KEYS = (
    r"x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|access_token"
    r"|refresh_token|id_token|identitytoken|password|passwd|secret|client_secret|code"
)
_REDACTED = "<redacted>"
_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    # httpcore's header tuples: (b'Set-Cookie', b'session=...')
    (
        re.compile(rf"""(\(b?(['"])(?:{_SECRET_HEADERS})\2,\s*b?)(['"])(?:\\.|(?!\3).)*\3""", re.I),
        rf"\1'{_REDACTED}'",
    ),
    # JSON or dict fields: "token": "...", 'Authorization': '...'
    (
        re.compile(
            rf"""((['"])(?:{_SECRET_KEYS}|{_SECRET_HEADERS})\2\s*:\s*)(['"])(?:\\.|(?!\3).)*\3""",
            re.I,
        ),
        rf'\1"{_REDACTED}"',
    ),
    # A header line: "Authorization: Bearer ..." up to the end of the line.
    (re.compile(rf"(\b(?:{_SECRET_HEADERS}):[ \t]*)[^\r\n]+", re.I), rf"\1{_REDACTED}"),
    # Credentials written out: "Bearer eyJ...", "Basic Ym9i..."
    (re.compile(r"\b(Bearer|Basic)[ \t]+[A-Za-z0-9._~+/-]{6,}=*"), rf"\1 {_REDACTED}"),
    # Query strings of absolute URLs, and of paths (a relative Location): pre-signed URLs
    # carry their signature there.
    (
        re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^\s'"<>?#]*)\?[^\s'"<>#]*""", re.I),
        rf"\1?{_REDACTED}",
    ),
    (re.compile(r"""((?<![\w/:.?=&])/[^\s'"<>?#]*)\?[^\s'"<>#]+"""), rf"\1?{_REDACTED}"),
    # key=value pairs anywhere else (a form body, a URL cut from its scheme).
    (re.compile(rf"""(\b(?:{_SECRET_KEYS})=)[^&\s'"]+""", re.I), rf"\1{_REDACTED}"),
]


def redact(text: str) -> str:
    """``text`` with query strings and credentials replaced by ``<redacted>``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class _Redactor(logging.Filter):
    """Rewrites every record the handler emits: message, structured fields and traceback
    text lose query strings (pre-signed URLs) and credential headers (httpx and httpcore
    log raw URLs and response headers at debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: shown as logging would, but redacted
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = _redact_value(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(fmt: str, verbose: int) -> None:
    """Log lines on stderr at WARNING, INFO (``-v``) or DEBUG (``-vv``; httpx's request
    lines too), every one redacted (see :class:`_Redactor`)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redactor())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


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
