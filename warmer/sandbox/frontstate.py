"""The front's state, pure of I/O: its settings, faults, counters and bandwidth pacer.

Kept apart from ``warmer.sandbox.front`` (the HTTP server) so the counting, rate-limit
and pacing rules read on their own and are tested without a socket.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from warmer.units import parse_rate

INTERVAL = 0.1  # seconds per time-series bucket
MAX_BUCKETS = 36_000  # one hour of series; later bytes still count in totals
MAX_CHUNKS = 4_000_000  # per-chunk records kept (about 60 GB at the paced chunk size)
MAX_PINGS_TIMED = 100_000  # ping arrival times kept
WINDOWS = (1.0, 2.0, 5.0, 10.0)  # seconds: the sliding windows the front reports peaks of

AUTH_MODES = ("none", "token")
TOKEN_TTL = 300  # seconds, as Docker Hub's anonymous tokens
_SCOPE = re.compile(r"^repository:(?P<repo>[^:]+):(?P<actions>[a-z,*]+)$")

_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs|tags)/(?P<ref>.*)$")


def classify(path: str) -> tuple[str, str | None, str | None]:
    """``/v2/<repo>/manifests/<ref>`` -> ("manifest", repo, ref); blobs alike; else "other"."""
    m = _PATH.match(path)
    if m is None:
        return "other", None, None
    repo, kind, ref = m["repo"], m["kind"], m["ref"]
    if kind == "manifests" and ref and "/" not in ref:
        return "manifest", repo, ref
    if kind == "blobs" and ref and "/" not in ref and ref != "uploads":
        return "blob", repo, ref
    return "other", repo, None


def window_rates(
    series: list[int], interval: float = INTERVAL, window: float = 1.0
) -> dict[str, float]:
    """Peak and mean bytes/s over sliding ``window``-second windows of a bytes-per-bucket series."""
    n = max(1, round(window / interval))
    if not series:
        return {"peak": 0.0, "mean": 0.0}
    sums = [sum(series[i : i + n]) / window for i in range(max(1, len(series) - n + 1))]
    return {"peak": max(sums), "mean": sum(series) / (len(series) * interval)}


def peak_windows(
    chunks: list[tuple[float, int]], windows: tuple[float, ...] = WINDOWS
) -> dict[str, Any]:
    """Exact sliding-window peaks over per-chunk (time, bytes) records, sorted by time:
    ``peak`` {window: the most bytes sent in any ``[t, t + window)``}, and the ``bytes``,
    ``first`` and ``last`` times of the transfer (so its mean is bytes / (last - first))."""
    peaks: dict[str, int] = {}
    for window in windows:
        best, total, j = 0, 0, 0
        for t, n in chunks:
            total += n
            while chunks[j][0] <= t - window:
                total -= chunks[j][1]
                j += 1
            best = max(best, total)
        peaks[f"{window:g}"] = best
    return {
        "peak": peaks,
        "bytes": sum(n for _, n in chunks),
        "first": chunks[0][0] if chunks else 0.0,
        "last": chunks[-1][0] if chunks else 0.0,
    }


@dataclass
class FrontConfig:
    latency_ms: float = 0.0
    bandwidth: int | None = None  # bytes per second, shared by all responses
    ratelimit_limit: int | None = 10_000
    ratelimit_window: int = 21_600
    auth: str = "none"  # "token": Docker Hub's anonymous Bearer-token flow

    def update(self, body: dict[str, Any]) -> None:
        """Apply a partial update; ValueError naming the bad key."""
        for key, value in body.items():
            if key == "latency_ms":
                if not isinstance(value, int | float) or value < 0:
                    raise ValueError("latency_ms: a number >= 0")
                self.latency_ms = float(value)
            elif key == "bandwidth":
                self.bandwidth = None if value in (None, 0, "") else parse_rate(value)
            elif key == "ratelimit_limit":
                if value is not None and (not isinstance(value, int) or value < 0):
                    raise ValueError("ratelimit_limit: an integer >= 0 or null")
                self.ratelimit_limit = value
            elif key == "ratelimit_window":
                if not isinstance(value, int) or value <= 0:
                    raise ValueError("ratelimit_window: an integer number of seconds > 0")
                self.ratelimit_window = value
            elif key == "auth":
                if value not in AUTH_MODES:
                    raise ValueError(f"auth: one of {', '.join(AUTH_MODES)}")
                self.auth = value
            elif key == "ratelimit_seed":
                if (
                    not isinstance(value, list)
                    or len(value) > 10_000
                    or not all(isinstance(age, int | float) and age >= 0 for age in value)
                ):
                    raise ValueError("ratelimit_seed: a list of ages in seconds (>= 0)")
            elif key != "ratelimit_reset":
                raise ValueError(f"unknown config key {key!r}")


@dataclass
class Fault:
    kind: str
    match: str = ""
    count: int = 1
    method: str | None = None
    status: int = 503
    delay: float = 1.0
    after_bytes: int | None = None
    offset: int | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        if body.get("kind") not in ("status", "reset", "corrupt", "slow"):
            raise ValueError("kind: one of status, reset, corrupt, slow")
        unknown = set(body) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault key(s): {', '.join(sorted(unknown))}")
        fault = cls(**body)
        if fault.count < 1:
            raise ValueError("count: an integer >= 1")
        return fault

    def matches(self, method: str, path: str) -> bool:
        if self.kind in ("reset", "corrupt") and method != "GET":
            return False
        return (self.method is None or self.method == method) and self.match in path


class Pacer:
    """One byte budget shared by every response: a token bucket in its GCRA form.

    Hand-written (20 lines) because the cap must be shared by all streams, changeable at run
    time, and accept chunks bigger than the bucket; aiolimiter, the usual choice, refuses
    acquisitions larger than its capacity and is not otherwise a dependency.
    """

    def __init__(self, burst_s: float = 0.05) -> None:
        self.burst_s = burst_s
        self.tat = 0.0  # theoretical arrival time of the next byte

    async def consume(self, n: int, rate: int | None) -> None:
        if not rate:
            return
        now = time.monotonic()
        self.tat = max(self.tat, now) + n / rate
        wait = self.tat - now - self.burst_s
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    status: Counter[int] = field(default_factory=Counter)
    bytes_served: int = 0
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, Counter[str]] = field(default_factory=dict)
    manifest_gets_counted: int = 0
    throttled: int = 0
    faults_applied: Counter[str] = field(default_factory=Counter)
    series: list[int] = field(default_factory=list)
    # (seconds since t0, bytes) of each body chunk as it left towards the client
    chunks: list[tuple[float, int]] = field(default_factory=list)
    pings: int = 0  # GET /v2/ (also counted as "other"): a distribution proxy's parent check
    # seconds since t0 at which each ping arrived: where a serialized ping chain sat idle
    ping_times: list[float] = field(default_factory=list)

    def request(self, kind: str, method: str, repo: str | None, ref: str | None) -> None:
        self.requests[(kind, method)] += 1
        if repo is not None:
            self._repo(repo)["requests"][(kind, method)] += 1
        if kind == "blob" and ref is not None:
            self.blobs.setdefault(ref, Counter())[method] += 1

    def _repo(self, repo: str) -> dict[str, Any]:
        return self.repos.setdefault(repo, {"requests": Counter(), "bytes_served": 0})

    def served(self, n: int, kind: str, repo: str | None, ref: str | None) -> None:
        self.bytes_served += n
        if repo is not None:
            self._repo(repo)["bytes_served"] += n
        if kind == "blob" and ref is not None:
            self.blobs.setdefault(ref, Counter())["bytes_served"] += n
        elapsed = time.monotonic() - self.t0
        if len(self.chunks) < MAX_CHUNKS:
            self.chunks.append((elapsed, n))
        i = int(elapsed / INTERVAL)
        if i < MAX_BUCKETS:
            if i >= len(self.series):
                self.series.extend([0] * (i + 1 - len(self.series)))
            self.series[i] += n

    def to_json(self) -> dict[str, Any]:
        def nest(c: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for (kind, method), n in sorted(c.items()):
                out.setdefault(kind, {})[method] = n
            return out

        return {
            "since": self.started,
            "elapsed_s": time.monotonic() - self.t0,
            "requests": nest(self.requests),
            "total_requests": sum(self.requests.values()),
            "bytes_served": self.bytes_served,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "repositories": {
                k: {"requests": nest(v["requests"]), "bytes_served": v["bytes_served"]}
                for k, v in sorted(self.repos.items())
            },
            "blobs": {k: dict(v) for k, v in sorted(self.blobs.items())},
            "manifest_gets_counted": self.manifest_gets_counted,
            "throttled": self.throttled,
            "faults_applied": dict(self.faults_applied),
            "series": {"interval_s": INTERVAL, "bytes": self.series},
            "pings": self.pings,
            "ping_times": [round(t, 4) for t in self.ping_times],
        }


@dataclass
class FrontState:
    upstream: str
    config: FrontConfig
    stats: Stats = field(default_factory=Stats)
    faults: list[Fault] = field(default_factory=list)
    window: deque[float] = field(default_factory=deque)
    pacer: Pacer = field(default_factory=Pacer)
    tokens: dict[str, tuple[frozenset[str], float]] = field(default_factory=dict)

    def issue_token(self, scopes: list[str]) -> str:
        """An anonymous token for the repositories named in ``repository:NAME:ACTIONS`` scopes."""
        now = time.monotonic()
        self.tokens = {t: v for t, v in self.tokens.items() if v[1] > now}
        repos = frozenset(m["repo"] for s in scopes if (m := _SCOPE.match(s)) is not None)
        token = secrets.token_urlsafe(24)
        self.tokens[token] = (repos, now + TOKEN_TTL)
        return token

    def authorized(self, authorization: str | None, repo: str | None) -> bool:
        """Whether a request may pass: a live token of ours, scoped to ``repo`` if it names one."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        grant = self.tokens.get(authorization[len("Bearer ") :].strip())
        if grant is None or grant[1] <= time.monotonic():
            return False
        return repo is None or repo in grant[0]

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                self.stats.faults_applied[fault.kind] += 1
                return fault
        return None

    def ratelimit(self, counted: bool) -> tuple[dict[str, str], float | None]:
        """Rate-limit headers for a manifest response; a Retry-After when the window is spent."""
        limit, w = self.config.ratelimit_limit, self.config.ratelimit_window
        if limit is None:
            return {}, None
        now = time.monotonic()
        while self.window and self.window[0] <= now - w:
            self.window.popleft()
        retry = None
        if counted:
            if len(self.window) >= limit:
                retry = (self.window[0] + w - now) if self.window else float(w)
            else:
                self.window.append(now)
                self.stats.manifest_gets_counted += 1
        headers = {
            "ratelimit-limit": f"{limit};w={w}",
            "ratelimit-remaining": f"{max(0, limit - len(self.window))};w={w}",
            "docker-ratelimit-source": "127.0.0.1",
        }
        return headers, retry
