"""When each job fires: APScheduler triggers over the pure window logic, and a scalable clock.

Pure: nothing here reads the clock by itself; APScheduler passes ``now`` to the triggers.

- :class:`Clock` maps real time to *schedule time*. With ``time_scale = 1`` and no origin
  (production) it is the identity. Tests and the soak compress days into minutes with
  ``[serve] time_scale`` (simulated seconds per real second) and ``time_origin`` (the
  simulated time at start-up): windows and crons are evaluated in schedule time, and every
  instant that leaves this module (fire times, a warm run's deadline) is real time again.
- :class:`WindowTrigger` fires a region's warm job: at each window start, and every
  ``poll`` while a window is open (a replica whose lease expired is taken over, a late
  start still gets what is left); never outside a window.
- :class:`CronStartTrigger` fires at each start of a cron (crontab weekday numbering and the
  DST rules of ``warmer.windows``: a skipped wall time fires at the old offset, a repeated
  one once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger

from warmer.windows import Window, WindowSpec, current_window, next_windows

_EPS = timedelta(milliseconds=5)


@dataclass(frozen=True)
class Clock:
    """Schedule time = ``origin + (real - real_origin) * scale``."""

    real_origin: datetime
    origin: datetime
    scale: float = 1.0

    @classmethod
    def make(
        cls,
        real_now: datetime,
        scale: float = 1.0,
        origin: datetime | None = None,
        anchor: datetime | None = None,
    ) -> Clock:
        """Schedule time ``origin`` at the real instant ``anchor`` (both default to now)."""
        real0 = (anchor or real_now).astimezone(UTC)
        return cls(real0, (origin or real0).astimezone(UTC), scale)

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.origin == self.real_origin

    def sim(self, real: datetime) -> datetime:
        if self.identity:
            return real
        return self.origin + (real.astimezone(UTC) - self.real_origin) * self.scale

    def real(self, sim: datetime) -> datetime:
        if self.identity:
            return sim
        return self.real_origin + (sim.astimezone(UTC) - self.origin) / self.scale

    def real_span(self, sim: timedelta) -> timedelta:
        return sim / self.scale


class WindowTrigger(BaseTrigger):  # type: ignore[misc]
    """Window starts, then every ``poll`` (real time) until the window closes."""

    def __init__(self, specs: Sequence[WindowSpec], clock: Clock, poll: timedelta) -> None:
        if not specs:
            raise ValueError("a window trigger needs at least one window")
        self.specs = list(specs)
        self.clock = clock
        self.poll = poll

    def window_at(self, real_now: datetime) -> Window | None:
        return current_window(self.specs, self.clock.sim(real_now))

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        sim_now = self.clock.sim(now)
        open_window = current_window(self.specs, sim_now)
        if open_window is not None:
            if previous_fire_time is None:
                return now
            candidate = max(now, previous_fire_time + self.poll)
            if self.clock.sim(candidate) < open_window.end:
                return candidate
        for window in next_windows(self.specs, sim_now, 3):
            if window.start > sim_now + _EPS:
                return self.clock.real(window.start)
        return None

    def __str__(self) -> str:
        specs = "; ".join(f"{s.cron} for {s.duration} ({s.timezone})" for s in self.specs)
        return f"window[{specs}]"


class CronStartTrigger(BaseTrigger):  # type: ignore[misc]
    """Each start of a crontab expression in a time zone."""

    def __init__(self, cron: str, timezone: str, clock: Clock) -> None:
        self.spec = WindowSpec(cron=cron, duration=timedelta(seconds=1), timezone=timezone)
        self.clock = clock

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        sim_now = self.clock.sim(now)
        after = sim_now - _EPS
        if previous_fire_time is not None:
            after = max(after, self.clock.sim(previous_fire_time) + _EPS)
        for window in next_windows([self.spec], after, 3):
            if window.start >= after:
                return self.clock.real(window.start)
        return None

    def __str__(self) -> str:
        return f"cron[{self.spec.cron} {self.spec.timezone}]"


class EveryTrigger(BaseTrigger):  # type: ignore[misc]
    """Every ``every`` of schedule time, the first one at once."""

    def __init__(self, every: timedelta, clock: Clock) -> None:
        self.every = every
        self.clock = clock

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is None:
            return now
        return max(now, previous_fire_time + self.clock.real_span(self.every))

    def __str__(self) -> str:
        return f"every[{self.every}]"
