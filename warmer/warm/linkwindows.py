"""The bytes admitted on a parent link over sliding windows, and when they land (pure).

The accounting half of :mod:`warmer.warm.pacing` (which holds the model, the link's
speed and the asynchronous pacer; see its docstring): :class:`LinkWindows` records what
was admitted, in pieces over its predicted time on the link, and what the long windows
hold for reads in progress, and says when more may go; :func:`landing` predicts when
bytes asked for now cross the link. Times are passed in: no clock, no I/O.
"""

from __future__ import annotations

import bisect
import math

# The sliding windows held within the cap: (window, burst), both in seconds: a window may
# carry rate x (window + burst). 1 s windows get a wide burst, a second of the cap: one
# blob's lump (its background store and read-ahead) is often bigger than a tenth of a
# second of the cap, and a lump is counted from its admission to a window past its
# predicted end (the wait for its first bytes, its place behind what the link carries
# already and its time on the link: as long as the window itself), so a narrower one
# would hold the link under the cap. The longer ones keep a margin (the target: 5 %) for
# what the model cannot see (a clock step, a burst of the link's own buffers).
WINDOWS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (5.0, 0.15), (10.0, 0.2))
# Windows of at least this many seconds hold a read's bytes from its start until read;
# shorter ones pace the read (see the module).
LONG = 2.0
# A window holding no more than this share of its allowance is empty to a lump too big
# for it (such a lump goes alone): bytes in flight of a few small requests (manifests, a
# config) would otherwise keep it waiting for as long as they keep coming.
EMPTY = 0.02
PIECE = 1 << 20  # a lump is recorded in pieces of at most this many bytes ...
PIECE_S = 0.05  # ... and at most this many seconds of its time on the link


class _Window:
    """One sliding window: its pieces (end, bytes) sorted by end, from ``first`` on those
    not yet past, their sum, and the bytes it holds for reads in progress."""

    def __init__(self, length: float, allowance: float) -> None:
        self.length = length
        self.allowance = allowance
        self.pieces: list[tuple[float, float]] = []
        self.first = 0
        self.sum = 0.0
        self.held = 0.0

    def add(self, end: float, n: float) -> None:
        i = bisect.bisect_right(self.pieces, (end, n))
        self.pieces.insert(i, (end, n))
        if i < self.first:
            self.first += 1  # it had left the window already
        else:
            self.sum += n

    def expire(self, now: float) -> None:
        i, s = self.first, self.sum
        while i < len(self.pieces) and self.pieces[i][0] <= now - self.length:
            s -= self.pieces[i][1]
            i += 1
        self.first, self.sum = i, max(0.0, s)
        if i > 4096:  # the window has moved past them
            del self.pieces[:i]
            self.first = 0

    def fits_at(self, now: float, n: float) -> float:
        """When ``n`` more bytes fit (``now``: at once; ``inf``: not before a hold ends)."""
        allowed = self.allowance
        # Too big for the window on its own: it goes alone (beside at most EMPTY of it).
        over = self.sum + self.held + min(n, allowed * (1 - EMPTY)) - allowed
        if over <= 1e-6:
            return now
        if over > self.sum + 1e-6:
            return math.inf  # only what the reads in progress release can make room
        shed, i = 0.0, self.first
        while i < len(self.pieces):
            shed += self.pieces[i][1]
            if shed >= over - 1e-6:
                break
            i += 1
        end = self.pieces[min(i, len(self.pieces) - 1)][0]
        return end + self.length + 1e-6


class LinkWindows:
    """The bytes admitted on one link, and when more may go (pure: ``now`` is passed in).

    An admission is recorded as pieces ending over its predicted time on the link; a
    window ``(t - w, t]`` counts every piece that ends after ``t - w``, pieces still to come
    too: counted early, a lump cannot be joined by another in a window it may still reach,
    and it is counted wherever it lands between its admission and its predicted end.
    Amounts may differ between the short windows and the long ones (``long``), and the
    long ones may *hold* bytes (a read in progress) until they are released as landed.
    """

    def __init__(
        self,
        rate: float,
        windows: tuple[tuple[float, float], ...] = WINDOWS,
        long_from: float = LONG,
    ):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.windows = tuple(sorted(w for w, _ in windows))
        self.allowance = {w: self.rate * (w + burst) for w, burst in windows}
        self._all = [_Window(w, self.allowance[w]) for w in self.windows]
        self._long = [x for x in self._all if x.length >= long_from]
        self._short = [x for x in self._all if x.length < long_from]
        self.short_max = max((x.length for x in self._short), default=0.0)
        self.long_min = min((x.allowance for x in self._long), default=math.inf)

    def _expire(self, now: float) -> None:
        for x in self._all:
            x.expire(now)

    def in_window(self, now: float, window: float) -> float:
        """The bytes counted in the window of ``window`` seconds ending at ``now``."""
        self._expire(now)
        x = self._all[self.windows.index(window)]
        return x.sum + x.held

    def wait(self, now: float, n: float, long: float | None = None) -> float:
        """Seconds from ``now`` until ``n`` bytes fit in every short window and ``long``
        (default ``n``) in every long one (0: now; ``inf``: not before a hold is released)."""
        return max(self.waits(now, n, long))

    def waits(self, now: float, n: float, long: float | None = None) -> tuple[float, float]:
        """:meth:`wait` for the short windows and for the long ones, apart."""
        self._expire(now)
        more = n if long is None else long
        short_until = long_until = now
        for x in self._short:
            if n > 0:
                short_until = max(short_until, x.fits_at(now, n))
        for x in self._long:
            if more > 0:
                long_until = max(long_until, x.fits_at(now, more))
        return short_until - now, long_until - now

    def record(
        self,
        now: float,
        n: float,
        span: float = 0.0,
        *,
        after: float = 0.0,
        long: float | None = None,
    ) -> None:
        """Admit ``n`` bytes (``long`` in the long windows, default ``n``) at ``now``, on the
        link over ``(now + after, now + after + span]``."""
        self._expire(now)
        for group, k in ((self._short, n), (self._long, n if long is None else long)):
            if k <= 0:
                continue
            parts = max(1, math.ceil(k / PIECE), math.ceil(span / PIECE_S))
            for j in range(parts):
                end = now + after + span * (j + 1) / parts
                for x in group:
                    x.add(end, k / parts)

    def hold(self, n: float) -> None:
        """The long windows count ``n`` more bytes (a read's) until they are released."""
        for x in self._long:
            x.held += n

    def release(self, now: float, n: float) -> None:
        """``n`` held bytes have landed by ``now``: they count as a piece ending now."""
        self._expire(now)
        for x in self._long:
            x.held = max(0.0, x.held - n)
            x.add(now, n)


def landing(now: float, n: float, lag: float, speed: float, busy: float) -> tuple[float, float]:
    """Pure: when the link carries ``n`` bytes asked for at ``now``: after the first
    answer's ``lag`` and after what it carries until ``busy``, at ``speed`` bytes/s."""
    first = max(now + lag, busy)
    return first, first + n / speed
