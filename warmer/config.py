"""The configuration: TOML validated into typed models at load.

Every error names the file, the key and the problem; unknown keys are errors. Sizes,
rates and durations accept units (``"20GiB"``, ``"40MB/s"``, ``"3h"``). Credentials are
never in the file itself: only references to where they live (an environment variable, a
file, a Docker ``config.json``). ``config.example.toml`` documents every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from warmer.store.db import DEFAULT_URL
from warmer.units import UnitError, parse_duration, parse_rate, parse_size


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and why."""


def _size(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return parse_size(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _rate(v: Any) -> int | None:
    if v is None or v == 0 or v == "unlimited":
        return None
    try:
        return parse_rate(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


def _duration(v: Any) -> timedelta:
    try:
        return parse_duration(v)
    except UnitError as exc:
        raise ValueError(str(exc)) from None


Size = Annotated[int | None, BeforeValidator(_size)]
Rate = Annotated[int | None, BeforeValidator(_rate)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialsRef(_Strict):
    """Where a registry's credentials live. Never the secret itself."""

    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    token_env: str | None = None
    docker_config: str | bool | None = None


class TLS(_Strict):
    verify: bool = True
    ca_file: str | None = None


class DatabaseConfig(_Strict):
    url: str = DEFAULT_URL


class UpstreamConfig(_Strict):
    url: str
    aliases: list[str] = Field(default_factory=list)
    credentials: CredentialsRef | None = None
    tls: TLS = TLS()
    ratelimit_reserve: int = Field(default=10, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)


class LinkConfig(_Strict):
    """The link a mirror pulls over from its parent."""

    bandwidth: Rate = None
    concurrency: int = Field(default=4, ge=1, le=256)


class InvalidateHook(_Strict):
    """How to make a mirror forget a tag it serves from a metadata cache.

    Either an HTTP request (``url``, ``method``, literal ``headers`` and headers whose values
    come from environment variables, ``headers_env``: never a secret in the file) or a
    command (``command``, an argv run without a shell). ``{image}``, ``{repository}``
    (as the mirror names it), ``{tag}`` and ``{digest}`` (the upstream's new one) are
    replaced in the URL and in each argument.
    """

    url: str | None = None
    method: str = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    headers_env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _one(self) -> InvalidateHook:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of url (an HTTP request) or command (an argv)")
        if self.url is not None:
            _check_url(self.url)
        if self.command is not None and not self.command:
            raise ValueError("command: an empty argv")
        return self


class MirrorConfig(_Strict):
    url: str
    parent: str
    naming: Literal["plain", "prefix"] = "plain"
    path_prefix: str = ""
    tls: TLS = TLS()
    credentials: CredentialsRef | None = None
    ttl: Duration = timedelta(hours=168)
    cache_scope: Literal["repository", "global"] = "repository"
    fetch_multiplicity: int = Field(default=2, ge=1, le=8)
    link: LinkConfig = LinkConfig()
    replicas: list[str] = Field(default_factory=list)
    shared_storage: bool = False
    invalidate: InvalidateHook | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: list[str]) -> list[str]:
        return [_check_url(u) for u in v]

    @model_validator(mode="after")
    def _prefix(self) -> MirrorConfig:
        if self.naming == "prefix" and not self.path_prefix.strip("/"):
            raise ValueError("naming = 'prefix' needs a non-empty path_prefix")
        if self.naming == "plain" and self.path_prefix:
            raise ValueError("path_prefix is only used with naming = 'prefix'")
        return self

    def repository_for(self, upstream_repository: str) -> str:
        """How this mirror names an upstream repository."""
        if self.naming == "prefix":
            return f"{self.path_prefix.strip('/')}/{upstream_repository}"
        return upstream_repository

    def instances(self) -> list[str]:
        """URLs to warm: each replica with its own cache, or the balancer URL alone."""
        if self.replicas and not self.shared_storage:
            return list(self.replicas)
        return [self.url]


class WindowConfig(_Strict):
    cron: str
    duration: Duration
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _cron(self) -> WindowConfig:
        # The same check the scheduler applies (crontab weekday numbering, DST rules).
        from warmer.windows import WindowSpec

        WindowSpec.coerce(self)
        return self


class RegionConfig(_Strict):
    mirrors: list[str]
    windows: list[WindowConfig] = Field(default_factory=list)
    budget: Size = None
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])


class RunConfig(_Strict):
    """How the executor behaves."""

    deadline_grace: Duration = timedelta(seconds=30)
    retries: int = Field(default=4, ge=0, le=20)
    timeout: Duration = timedelta(seconds=60)
    ratelimit_poll: Duration = timedelta(seconds=30)


class RefreshConfig(_Strict):
    """How ``warmer refresh`` re-resolves tracked tags and renews what expires."""

    renew_before: Duration = timedelta(hours=24)
    concurrency: int = Field(default=8, ge=1, le=256)


class ServeIngestConfig(_Strict):
    """The service's ingest job: log sources read on an interval (rank runs after each)."""

    paths: list[str] = Field(default_factory=list)
    every: Duration = timedelta(minutes=15)


class ServeWarmConfig(_Strict):
    """What the service's warm job warms in each window."""

    top: int | None = Field(default=None, ge=1)
    images: list[str] = Field(default_factory=list)


class ServeCronConfig(_Strict):
    """A cron schedule (crontab fields, Sunday = 0) in a time zone."""

    cron: str
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _cron(self) -> ServeCronConfig:
        from warmer.windows import WindowSpec

        WindowSpec(cron=self.cron, duration=timedelta(seconds=1), timezone=self.timezone)
        return self


class ServeVerifyConfig(ServeCronConfig):
    sample: float = Field(default=0.1, gt=0, le=1)


class ServeConfig(_Strict):
    """``warmer serve``: the scheduler service (see jobs/)."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    misfire_grace: Duration = timedelta(minutes=5)
    lease_ttl: Duration = timedelta(seconds=60)
    poll: Duration = timedelta(seconds=30)
    shutdown_grace: Duration = timedelta(seconds=8)
    retention: Duration = timedelta(days=35)
    time_scale: float = Field(default=1.0, gt=0, le=100_000)
    time_origin: datetime | None = None
    time_anchor: datetime | None = None
    ingest: ServeIngestConfig = ServeIngestConfig()
    warm: ServeWarmConfig = ServeWarmConfig()
    refresh: ServeCronConfig = ServeCronConfig(cron="0 5 * * *")
    verify: ServeVerifyConfig = ServeVerifyConfig(cron="0 6 * * 0")
    prune: ServeCronConfig = ServeCronConfig(cron="30 4 * * *")

    @field_validator("time_origin", "time_anchor")
    @classmethod
    def _origin(cls, v: datetime | None) -> datetime | None:
        if v is not None and (v.tzinfo is None or v.utcoffset() is None):
            raise ValueError("needs a UTC offset (e.g. 2024-03-31T00:00:00Z)")
        return v

    @model_validator(mode="after")
    def _lease(self) -> ServeConfig:
        if self.lease_ttl < timedelta(seconds=3):
            raise ValueError("lease_ttl must be at least 3s (it is renewed every third of it)")
        return self


class RegionRuleConfig(_Strict):
    """A rule mapping usage events to a region: every glob given must match."""

    region: str
    runner: str | None = None
    pipeline: str | None = None
    path: str | None = None
    mirror: str | None = None

    @model_validator(mode="after")
    def _one_glob(self) -> RegionRuleConfig:
        if not any((self.runner, self.pipeline, self.path, self.mirror)):
            raise ValueError("give at least one of runner, pipeline, path, mirror")
        return self


class AnalyticsRegionsConfig(_Strict):
    default: str | None = None
    rules: list[RegionRuleConfig] = Field(default_factory=list)


class AnalyticsConfig(_Strict):
    regions: AnalyticsRegionsConfig = AnalyticsRegionsConfig()

    def region_rules(self) -> dict[str, Any]:
        """The ``[analytics.regions]`` table as ``analytics.regions.RegionRules`` reads it."""
        return self.regions.model_dump(exclude_none=True)


class Config(_Strict):
    database: DatabaseConfig = DatabaseConfig()
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    mirrors: dict[str, MirrorConfig] = Field(default_factory=dict)
    regions: dict[str, RegionConfig] = Field(default_factory=dict)
    run: RunConfig = RunConfig()
    refresh: RefreshConfig = RefreshConfig()
    analytics: AnalyticsConfig = AnalyticsConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _topology(self) -> Config:
        for name, mirror in self.mirrors.items():
            if mirror.parent not in self.mirrors and mirror.parent not in self.upstreams:
                raise ValueError(
                    f"mirrors.{name}.parent: {mirror.parent!r} is neither an upstream nor a mirror"
                )
            if mirror.parent == name:
                raise ValueError(f"mirrors.{name}.parent: a mirror cannot be its own parent")
        for name in self.mirrors:
            seen = [name]
            cur = self.mirrors[name].parent
            while cur in self.mirrors:
                if cur in seen:
                    raise ValueError(f"mirrors.{name}: parent chain loops ({' -> '.join(seen)})")
                seen.append(cur)
                cur = self.mirrors[cur].parent
        for rname, region in self.regions.items():
            for i, m in enumerate(region.mirrors):
                if m not in self.mirrors:
                    raise ValueError(f"regions.{rname}.mirrors[{i}]: unknown mirror {m!r}")
        return self

    # -- topology helpers -------------------------------------------------------------------

    def chain(self, mirror: str) -> list[str]:
        """The mirrors from the top tier down to ``mirror`` (inclusive)."""
        out = [mirror]
        cur = self.mirrors[mirror].parent
        while cur in self.mirrors:
            out.append(cur)
            cur = self.mirrors[cur].parent
        return list(reversed(out))

    def upstream_of(self, mirror: str) -> str:
        """The upstream at the top of ``mirror``'s chain."""
        return self.mirrors[self.chain(mirror)[0]].parent

    def tier(self, mirror: str) -> int:
        """0 for a mirror whose parent is an upstream, 1 below it, ..."""
        return len(self.chain(mirror)) - 1

    def upstream_for_registry(self, registry: str) -> str | None:
        """The upstream that serves a reference's registry host (by name or alias)."""
        for name, up in self.upstreams.items():
            host = up.url.split("://", 1)[-1].rstrip("/")
            if registry in (name, host) or registry in up.aliases:
                return name
        return None

    def region(self, name: str) -> RegionConfig:
        if name not in self.regions:
            known = ", ".join(sorted(self.regions)) or "none"
            raise ConfigError(f"unknown region {name!r} (configured: {known})")
        return self.regions[name]


def _check_url(v: str) -> str:
    if not (v.startswith("http://") or v.startswith("https://")):
        raise ValueError(f"{v!r} is not an http(s) URL")
    return v.rstrip("/")


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("function-after", "function-before"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _messages(exc: ValidationError) -> Iterator[str]:
    for err in exc.errors():
        where = _loc(tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        yield f"{where}: {msg}" if where else msg


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = list(_messages(exc))
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (pass --config PATH, set WARMER_CONFIG, "
            "or run `warmer sandbox up` to write one)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))
