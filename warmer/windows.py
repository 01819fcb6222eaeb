"""Maintenance windows: when warming may run, as pure functions of the specs and ``now``.

A window spec is a crontab start, a duration and a time zone, e.g.
``{ cron = "0 1 * * 1-5", duration = "3h", timezone = "Europe/Berlin" }``: weekdays from
01:00 Berlin time for three hours. Nothing here reads the clock: ``now`` is always passed in
and must be aware (a naive datetime is a ``ValueError``).

Rules (each one tested in ``tests/test_windows.py``):

- **Cron fields** are crontab's: minute, hour, day of month, month, day of week, with day of
  week 0 or 7 = Sunday, 1 = Monday ... 6 = Saturday (names ``sun``..``sat`` too). APScheduler
  3.x evaluates the expression, but its ``from_crontab`` numbers weekdays from Monday = 0 (a
  documented 3.x mistake), so ``1-5`` would mean Tuesday to Saturday; the weekday field is
  therefore rewritten to day names before it reaches APScheduler. Crontab ORs a restricted
  day-of-month with a restricted day-of-week while APScheduler ANDs them, so setting both is
  refused rather than silently meaning something else.
- **Spring forward**: a start whose wall time does not exist that day (02:30 in Berlin on the
  last Sunday of March) happens at the instant the old offset gives it: 02:30 CET = 01:30 UTC
  = 03:30 CEST. The window still happens that day, once.
- **Fall back**: a start whose wall time happens twice (01:30 in New York on the first Sunday
  of November, 02:30 in Berlin on the last Sunday of October) fires once, at the first
  occurrence. This holds for every wall time: an hourly cron skips the repeated hour.
- **Length**: a window's end is its start plus the duration in absolute time, so a "3h"
  window is three real hours even across a DST change (it caps bytes at the link's rate; the
  wall clock may show 2 or 4 hours).
- **Overlap**: windows that overlap or touch (from one spec whose duration is longer than
  its cron interval, or from several specs) are merged into one window, the union: a window
  is a permission to warm, so no permitted minute is lost and no two windows are open at once.
  A merged window carries the spec of its earliest start. A run of windows that never closes
  (hourly starts, 2 h each) is cut every ``MAX_SPAN`` so that every call terminates; the
  pieces touch.
- **Late start**: ``current_window(specs, now)`` returns the whole window ``now`` is inside;
  its ``end`` stays the window's end, and ``remaining(window, now)`` is what is left.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import takewhile
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from warmer.units import UnitError, parse_duration

# The longest single window, and the longest merged window before it is cut.
MAX_SPAN = timedelta(days=7)
# APScheduler misses a start in a skipped hour when it is asked from inside the gap (from
# 03:15 CEST it no longer sees the 02:30 CET start). Starts are therefore searched from this
# far back; it covers every DST jump in the tz database (at most 2 h).
_DST_MARGIN = timedelta(hours=3)
# A date from which every valid cron fires within a few years; used to refuse a cron that
# never fires ("0 0 30 2 *").
_PROBE = datetime(2001, 1, 1, tzinfo=UTC)
# Cron resolution is a minute; starts are whole seconds.
_TICK = timedelta(seconds=1)

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?$")


class InvalidWindow(ValueError):
    """A window spec that cannot be used; the message names the field and why."""


def _day_number(text: str, cron: str) -> int:
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7
    if text[:3] in _DAY_NAMES and len(text) == 3:
        return _DAY_NAMES.index(text)
    raise InvalidWindow(
        f"window cron {cron!r}: day of week {text!r} is not 0-7 (0 and 7 are Sunday) or sun-sat"
    )


def _weekday_names(field: str, cron: str) -> str:
    """Crontab's day-of-week field as APScheduler day names (see the module docstring).

    Hand-written: the grammar is crontab's (lists, ranges, steps) and tiny; no library maps
    crontab weekday numbers onto APScheduler 3's Monday-first numbering.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DOW_ITEM.match(item)
        if not match:
            raise InvalidWindow(f"window cron {cron!r}: day of week item {item!r} is not valid")
        first, last, step = match.groups()
        if first == "*":
            if last is not None:
                raise InvalidWindow(f"window cron {cron!r}: day of week item {item!r} is not valid")
            lo, hi = 0, 6
        else:
            lo = _day_number(first, cron)
            hi = _day_number(last, cron) if last is not None else (6 if step else lo)
            if last == "7":
                hi = 7  # "5-7" is Friday to Sunday
            if hi < lo:
                raise InvalidWindow(
                    f"window cron {cron!r}: day of week range {item!r} runs backwards"
                )
        stride = int(step) if step else 1
        if stride < 1:
            raise InvalidWindow(f"window cron {cron!r}: day of week step in {item!r} must be >= 1")
        days.update(d % 7 for d in range(lo, hi + 1, stride))
    # APScheduler's names; order Monday first so the text reads naturally.
    return ",".join(_DAY_NAMES[d] for d in sorted(days, key=lambda d: (d + 6) % 7))


@lru_cache(maxsize=256)
def _trigger(cron: str, tz: str) -> CronTrigger:
    fields = cron.split()
    if len(fields) != 5:
        raise InvalidWindow(
            f"window cron {cron!r}: needs 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}"
        )
    minute, hour, dom, month, dow = fields
    if dom != "*" and dow != "*":
        raise InvalidWindow(
            f"window cron {cron!r}: day of month and day of week are both set; crontab fires on "
            "either, which is ambiguous here: set one of them to *"
        )
    expr = " ".join((minute, hour, dom, month, _weekday_names(dow, cron)))
    try:
        trigger = CronTrigger.from_crontab(expr, timezone=ZoneInfo(tz))
    except ValueError as exc:
        raise InvalidWindow(f"window cron {cron!r}: {exc}") from None
    if trigger.get_next_fire_time(None, _PROBE) is None:
        raise InvalidWindow(f"window cron {cron!r}: never fires")
    return trigger


def _check_zone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidWindow(
            f"window timezone {tz!r}: unknown time zone (use an IANA name like Europe/Berlin)"
        ) from None


@dataclass(frozen=True)
class WindowSpec:
    """A cron start, a duration and a time zone. Validated on construction."""

    cron: str
    duration: timedelta
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise InvalidWindow(f"window cron {self.cron!r}: must be a crontab expression")
        if not isinstance(self.timezone, str):
            raise InvalidWindow(f"window timezone {self.timezone!r}: must be a string")
        if not isinstance(self.duration, timedelta):
            raise InvalidWindow(f"window duration {self.duration!r}: must be a duration")
        if not timedelta(0) < self.duration <= MAX_SPAN:
            raise InvalidWindow(
                f"window duration {self.duration}: must be more than 0 and at most {MAX_SPAN.days}d"
            )
        _check_zone(self.timezone)
        _trigger(self.cron, self.timezone)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WindowSpec:
        """From ``{cron, duration, timezone}``; durations accept units (``"3h"``, ``"1h30m"``)."""
        unknown = sorted(set(data) - {"cron", "duration", "timezone"})
        if unknown:
            raise InvalidWindow(f"window: unknown key(s) {', '.join(map(repr, unknown))}")
        for key in ("cron", "duration"):
            if key not in data:
                raise InvalidWindow(f"window {key}: missing")
        raw = data["duration"]
        try:
            duration = parse_duration(raw)
        except (UnitError, TypeError, AttributeError):
            raise InvalidWindow(
                f"window duration {raw!r}: not a duration (examples: 90m, 3h, 1h30m)"
            ) from None
        return cls(cron=data["cron"], duration=duration, timezone=data.get("timezone", "UTC"))

    @classmethod
    def coerce(cls, item: WindowSpec | Mapping[str, Any] | object) -> WindowSpec:
        """A spec from a spec, a mapping or an object with cron/duration/timezone attributes
        (the config model's window entries)."""
        if isinstance(item, WindowSpec):
            return item
        if isinstance(item, Mapping):
            return cls.from_mapping(item)
        fields = {k: getattr(item, k) for k in ("cron", "duration", "timezone") if hasattr(item, k)}
        return cls.from_mapping(fields)


@dataclass(frozen=True)
class Window:
    """One opening: ``start`` and ``end`` are aware UTC datetimes, ``end`` exclusive."""

    start: datetime
    end: datetime
    spec: WindowSpec

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.spec.timezone)

    @property
    def local_start(self) -> datetime:
        return self.start.astimezone(self.zone)

    @property
    def local_end(self) -> datetime:
        return self.end.astimezone(self.zone)

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def contains(self, now: datetime) -> bool:
        return self.start <= _aware(now) < self.end


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now.isoformat()} is naive: pass an aware datetime")
    return now.astimezone(UTC)


def _repeated_wall_time(fire: datetime) -> bool:
    """The second occurrence of a wall time that happens twice (fall back)."""
    return fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset()


def _starts(spec: WindowSpec, since: datetime) -> Iterator[datetime]:
    """Start instants (UTC) of ``spec`` at or after ``since``, ascending, each once."""
    trigger = _trigger(spec.cron, spec.timezone)
    previous: datetime | None = None
    probe = since - _DST_MARGIN
    last: datetime | None = None
    while True:
        fire = trigger.get_next_fire_time(previous, probe)
        if fire is None:
            return
        previous = probe = fire
        if _repeated_wall_time(fire):
            continue
        instant = fire.astimezone(UTC)
        if instant < since or (last is not None and instant <= last):
            continue
        last = instant
        yield instant


def _tagged(
    order: int, spec: WindowSpec, since: datetime
) -> Iterator[tuple[datetime, int, WindowSpec]]:
    for start in _starts(spec, since):
        yield start, order, spec


def _merged(specs: Sequence[WindowSpec], since: datetime) -> Iterator[Window]:
    """Windows starting at or after ``since``, overlapping ones merged, cut at MAX_SPAN."""
    stream = heapq.merge(*(_tagged(i, s, since) for i, s in enumerate(specs)))
    current: tuple[datetime, datetime, WindowSpec] | None = None
    for start, _, spec in stream:
        end = start + spec.duration
        if current is None:
            current = (start, end, spec)
        elif start <= current[1]:
            current = (current[0], max(current[1], end), current[2])
        else:
            yield Window(current[0], current[1], current[2])
            current = (start, end, spec)
        while current[1] - current[0] > MAX_SPAN:
            cut = current[0] + MAX_SPAN
            yield Window(current[0], cut, current[2])
            current = (cut, current[1], current[2])
    if current is not None:
        yield Window(current[0], current[1], current[2])


def _between(specs: Sequence[WindowSpec], lo: datetime, hi: datetime) -> list[Window]:
    """The (unmerged) windows of each spec starting in ``[lo, hi)``."""
    return [
        Window(start, start + spec.duration, spec)
        for spec in specs
        for start in takewhile(lambda s: s < hi, _starts(spec, lo))
    ]


def _open_since(specs: Sequence[WindowSpec], now: datetime) -> datetime | None:
    """The start of the merged window that ``now`` is inside, or None."""
    longest = max(spec.duration for spec in specs)
    covering = [w.start for w in _between(specs, now - longest, now + _TICK) if w.contains(now)]
    if not covering:
        return None
    start = min(covering)
    # Walk back through windows that reach this start (the union is one window), a block of
    # starts at a time, latest first: a window connects if it ends at or after the union's
    # start so far. Stop when no earlier window can reach it; MAX_SPAN bounds the walk.
    block = max(longest, timedelta(days=1))
    while now - start < MAX_SPAN:
        low = start - block
        for window in sorted(_between(specs, low, start), key=lambda w: w.start, reverse=True):
            if window.end >= start:
                start = window.start
        if start - low >= longest:
            break
    return start


def next_windows(specs: Sequence[WindowSpec], now: datetime, count: int) -> list[Window]:
    """The next ``count`` windows, the one ``now`` is inside (if any) first, ordered by start."""
    now = _aware(now)
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    if not specs or count == 0:
        return []
    since = _open_since(specs, now) or now
    out: list[Window] = []
    for window in _merged(specs, since):
        if window.end <= now:
            continue  # a MAX_SPAN piece of an always-open run that is already over
        out.append(window)
        if len(out) == count:
            break
    return out


def current_window(specs: Sequence[WindowSpec], now: datetime) -> Window | None:
    """The window ``now`` is inside, whole (a late starter keeps its end), or None."""
    upcoming = next_windows(specs, now, 1)
    if upcoming and upcoming[0].contains(now):
        return upcoming[0]
    return None


def remaining(window: Window, now: datetime) -> timedelta:
    """Time left in ``window`` for work starting at ``now`` (all of it before it opens)."""
    now = _aware(now)
    return max(timedelta(0), window.end - max(now, window.start))
