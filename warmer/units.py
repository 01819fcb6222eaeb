"""Sizes, rates and durations with units: ``"20GiB"``, ``"40MB/s"``, ``"3h"``, ``"90s"``.

Hand-written because the grammar is tiny and the common packages either disagree on
SI/IEC defaults or do not parse rates and compound durations (``"1h30m"``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

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


#: The largest size or rate accepted: what a signed 64-bit integer (a database column, a
#: JSON number other tools read) holds.
MAX_BYTES = 2**63 - 1
#: The longest duration accepted: ``now + duration`` must stay a date (year 9999 is the
#: end), and nothing the warmer schedules is further off than a century.
MAX_DURATION = timedelta(days=36525)


def _show(value: object) -> str:
    """``value`` for a message: its repr, cut short (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: int | float, what: str) -> int | float:
    """A finite, non-negative number (``what`` names it in the message)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise UnitError(f"{what} {_show(value)} is not a finite number")
    if value < 0:
        raise UnitError(f"{what} {_show(value)} is negative")
    return value


def parse_size(value: str | int | float) -> int:
    """Bytes from ``"20GiB"``, ``"500MB"``, ``"1.5G"`` or a plain number of bytes."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnitError(f"{_show(value)} is not a size (examples: 500MB, 20GiB, 1048576)")
    number: int | float | Fraction
    if isinstance(value, int | float):
        number = _number(value, "size")
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _SIZE_UNITS:
            raise UnitError(f"{_show(value)} is not a size (examples: 500MB, 20GiB, 1048576)")
        # Exact (a float would round sizes above 2**53 bytes); the result rounds down. Past
        # 40 digits it is too large anyway (and int() refuses thousands of digits).
        digits = match.group(1)
        number = Fraction(digits) * _SIZE_UNITS[unit] if len(digits) <= 40 else float("inf")
    if not number <= MAX_BYTES or int(number) > MAX_BYTES:
        raise UnitError(f"size {_show(value)} is too large (at most {MAX_BYTES} bytes)")
    return int(number)


def parse_rate(value: str | int | float) -> int:
    """Bytes per second (at least 1) from ``"40MB/s"``, ``"100MiB/s"`` or a plain number."""
    text: str | int | float = value
    if isinstance(value, str):
        text = value.strip()
        for suffix in ("/s", "ps", "/sec"):
            if text.lower().endswith(suffix):
                text = text[: -len(suffix)]
                break
    try:
        rate = parse_size(text)
    except UnitError as exc:
        if "is not a size" in str(exc):
            raise UnitError(f"{_show(value)} is not a rate (examples: 40MB/s, 1GiB/s)") from None
        raise UnitError(f"rate {_show(value)}: {str(exc).split(' is ', 1)[-1]}") from None
    if rate < 1:
        raise UnitError(f"rate {_show(value)} is less than 1 B/s")
    return rate


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """A duration from ``"3h"``, ``"1h30m"``, ``"90s"``, ``"7d"`` or seconds (at most
    :data:`MAX_DURATION`)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds < 0:
            raise UnitError(f"duration {value} is negative")
    elif isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UnitError(f"{_show(value)} is not a duration (examples: 90s, 3h, 1h30m, 7d)")
    elif isinstance(value, int | float):
        seconds = _number(value, "duration")
    else:
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise UnitError(f"{_show(value)} is not a duration (examples: 90s, 3h, 1h30m, 7d)")
    # float("inf") and huge numbers of weeks land here too, before timedelta overflows.
    if not seconds <= MAX_DURATION.total_seconds():
        raise UnitError(f"duration {_show(value)} is too long (at most 100 years)")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


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
