"""The config's value types and checks: sizes, rates, durations, URLs and host names, each
failing with the message a user reads (``warmer.config`` names the key in front of it).

Sizes, rates and durations accept units (``"20GiB"``, ``"40MB/s"``, ``"3h"``); a budget of
0 and a rate under 1 B/s are errors, never "unlimited". A URL never carries a user or
password (credentials live in their own table), and a message never repeats one.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator

from warmer.config_messages import show as _show
from warmer.store.dburl import mask_url
from warmer.units import UnitError, parse_duration, parse_rate, parse_size

_CREDENTIAL_KEYS = "username, password_env, password_file, token_env or docker_config"


def _budget(v: Any) -> int | None:
    if v is None:
        return None
    try:
        size = parse_size(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None
    if size == 0:
        # Zero is never "unlimited": it would plan nothing, silently.
        raise ValueError("0 would warm nothing (leave budget out for no limit)")
    return size


def _rate(v: Any) -> int | None:
    if v is None or v == "unlimited":
        return None
    try:
        return parse_rate(v)
    except UnitError as exc:
        hint = ' (leave bandwidth out, or write "unlimited", for no cap)'
        raise ValueError(str(exc) + (hint if "less than 1 B/s" in str(exc) else "")) from None


def _duration(v: Any) -> timedelta:
    try:
        return parse_duration(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _positive(v: Any) -> timedelta:
    """A duration that must be more than 0 (a timeout, a poll or renewal interval, a TTL)."""
    d = _duration(v)
    if d <= timedelta(0):
        raise ValueError(f"{_show(v)}: must be more than 0")
    return d


Budget = Annotated[int | None, BeforeValidator(_budget)]
Rate = Annotated[int | None, BeforeValidator(_rate)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_positive)]


def check_http_url(v: str, use: str = "") -> str:
    """An http(s) URL with a host and no user or password in it: the message points to
    ``use`` (default: the credentials table) and never repeats the password."""
    shown = mask_url(v)
    if not (v.startswith("http://") or v.startswith("https://")):
        raise ValueError(f"{_show(shown)} is not an http(s) URL")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"{_show(shown)}: a URL cannot hold spaces or control characters")
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise ValueError(f"{_show(shown)} is not a valid URL (host or port)") from None
    if "@" in parts.netloc:
        use = use or f"the credentials table beside url ({_CREDENTIAL_KEYS})"
        raise ValueError(f"{_show(shown)}: a user or password never goes in a URL; use {use}")
    if not parts.hostname:
        raise ValueError(f"{_show(shown)} names no host")
    return v.rstrip("/")


def check_host(v: str) -> str:
    """An IP address or a DNS host name (``metrics_host``)."""
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    if len(v) > 253 or not re.fullmatch(rf"{label}(?:\.{label})*\.?", v):
        raise ValueError(f"{_show(v)} is not an IP address or host name")
    return v
