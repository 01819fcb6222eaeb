"""Sizes, rates and durations with units: ``"20GiB"``, ``"40MB/s"``, ``"3h"``, ``"90s"``.

Hand-written because the grammar is tiny and the common packages either disagree on
SI/IEC defaults or do not parse rates and compound durations (``"1h30m"``).
"""

from __future__ import annotations

import re
from datetime import timedelta

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UnitError(ValueError):
    """A value that does not parse; the message shows the accepted forms."""


def parse_size(value: str | int | float) -> int:
    """Bytes from ``"20GiB"``, ``"500MB"``, ``"1.5G"`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"size {value!r} is negative")
        return int(value)
    match = _SIZE_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise UnitError(f"{value!r} is not a size (examples: 500MB, 20GiB, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_rate(value: str | int | float) -> int:
    """Bytes per second from ``"40MB/s"``, ``"100MiB/s"`` or a plain number."""
    if isinstance(value, str):
        text = value.strip()
        for suffix in ("/s", "ps", "/sec"):
            if text.lower().endswith(suffix):
                text = text[: -len(suffix)]
                break
        try:
            return parse_size(text)
        except UnitError:
            raise UnitError(f"{value!r} is not a rate (examples: 40MB/s, 1GiB/s)") from None
    return parse_size(value)


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """A duration from ``"3h"``, ``"1h30m"``, ``"90s"``, ``"7d"`` or seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise UnitError(f"duration {value!r} is negative")
        return timedelta(seconds=value)
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise UnitError(f"{value!r} is not a duration (examples: 90s, 3h, 1h30m, 7d)")
    return timedelta(seconds=total)


def format_size(n: float) -> str:
    """``1.5 GiB`` style, for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(td: timedelta) -> str:
    seconds = int(td.total_seconds())
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"
