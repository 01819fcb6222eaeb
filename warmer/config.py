"""The configuration: TOML validated into typed models at load.

Every error names the file, the key and the problem; unknown keys are errors. Sizes,
rates and durations accept units (``"20GiB"``, ``"40MB/s"``, ``"3h"``). Credentials are
never in the file itself: only references to where they live (an environment variable, a
file, a Docker ``config.json``). ``config.example.toml`` documents every key.
"""

from __future__ import annotations

import re
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from warmer.config_messages import messages
from warmer.config_messages import show as _show
from warmer.config_values import (
    Budget,
    Duration,
    PositiveDuration,
    Rate,
    check_host,
    check_http_url,
)
from warmer.oci.auth import ENV_NAME, check_ref
from warmer.store.db import DEFAULT_URL
from warmer.store.dburl import DatabaseURLError, check_url


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and why."""


# TOML gives numbers, booleans and datetimes their own types: a value of another type is a
# mistake (``retries = true``, ``concurrency = "4"``) and is not converted (strict models).
# Only the datetimes also take ISO 8601 strings.
LaxDatetime = Annotated[datetime | None, Field(strict=False)]
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers that carry a credential: never literal in the file (use headers_env).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class CredentialsRef(_Strict):
    """Where a registry's credentials live. Never the secret itself."""

    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    token_env: str | None = None
    docker_config: str | bool | None = None

    @model_validator(mode="after")
    def _usable(self) -> CredentialsRef:
        check_ref(self)
        return self


class TLS(_Strict):
    verify: bool = True
    ca_file: str | None = None


class DatabaseConfig(_Strict):
    url: str = DEFAULT_URL

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            check_url(v)
        except DatabaseURLError as exc:
            raise ValueError(str(exc).removeprefix("database url ")) from None
        return v


class UpstreamConfig(_Strict):
    url: str
    aliases: list[str] = Field(default_factory=list)
    credentials: CredentialsRef | None = None
    tls: TLS = TLS()
    ratelimit_reserve: int = Field(default=10, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v)


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
    timeout: PositiveDuration = timedelta(seconds=30)

    @field_validator("headers", "headers_env")
    @classmethod
    def _headers(cls, v: dict[str, str], info: Any) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{_show(name)} is not a header name")
            if info.field_name == "headers_env":
                if not ENV_NAME.fullmatch(value):
                    raise ValueError(f"{name}: {_show(value)} is not an environment variable name")
            elif name.lower() in _SECRET_HEADERS:
                # The value is not shown: it is likely a secret.
                raise ValueError(
                    f"{name} carries a credential: name an environment variable in "
                    "headers_env instead of writing it here"
                )
            elif any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot hold a line break")
        return v

    @model_validator(mode="after")
    def _one(self) -> InvalidateHook:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of url (an HTTP request) or command (an argv)")
        if self.url is not None:
            check_http_url(self.url, "headers_env")
        if self.command is not None and not self.command:
            raise ValueError("command: an empty argv")
        return self


class MirrorConfig(_Strict):
    url: str
    parent: str
    # "distribution": CNCF distribution in proxy mode, whose answers the reconcile reads as
    # evidence (its catalog lists its own storage; a blob it stored is answered with
    # Accept-Ranges and Cache-Control, one relayed from its parent without). "other": no
    # such belief is used (Harbor, Nexus, Artifactory, a front of any kind).
    kind: Literal["distribution", "other"] = "distribution"
    naming: Literal["plain", "prefix"] = "plain"
    path_prefix: str = ""
    tls: TLS = TLS()
    credentials: CredentialsRef | None = None
    ttl: PositiveDuration = timedelta(hours=168)
    # When the mirror deletes what it cached: ``ttl`` after it first fetched the object from
    # its parent (CNCF distribution 2.8 and 3: a cache hit does not extend it), after the
    # last access (a cache that renews on hits), or never.
    expiry: Literal["first-fetch", "last-access", "none"] = "first-fetch"
    cache_scope: Literal["repository", "global"] = "repository"
    fetch_multiplicity: int = Field(default=2, ge=1, le=8)
    # How a cold blob of 8 MiB or more is read: "stored" asks for it with a request closed
    # at once (the mirror's store runs on, its relay stops) and reads the copy it stored
    # (the parent link carries it once; needs kind "distribution", whose answers tell the
    # two apart; see warmer.warm.coldread); "relay" reads the relayed copy as it streams
    # (the parent carries it fetch_multiplicity times). Default: "stored" for distribution.
    cold_blobs: Literal["stored", "relay"] = "stored"
    link: LinkConfig = LinkConfig()
    replicas: list[str] = Field(default_factory=list)
    shared_storage: bool = False
    invalidate: InvalidateHook | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: list[str]) -> list[str]:
        return [check_http_url(u) for u in v]

    @model_validator(mode="before")
    @classmethod
    def _cold_blobs_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "other" and "cold_blobs" not in data:
            return {**data, "cold_blobs": "relay"}
        return data

    @model_validator(mode="after")
    def _cold_blobs(self) -> MirrorConfig:
        if self.kind == "other" and self.cold_blobs == "stored":
            raise ValueError(
                "cold_blobs = 'stored' needs kind = 'distribution' (it tells a stored "
                "answer from a relayed one by distribution's headers)"
            )
        return self

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


class SignerIdentityConfig(_Strict):
    """One identity allowed to sign keylessly: the certificate's subject (an email or URI)
    exactly (``identity``) or as a whole match of ``identity_regexp`` (as cosign's
    --certificate-identity[-regexp]), and its OIDC issuer, exactly."""

    identity: str | None = Field(default=None, min_length=1)
    identity_regexp: str | None = Field(default=None, min_length=1)
    issuer: str = Field(min_length=1)  # e.g. https://token.actions.githubusercontent.com

    @model_validator(mode="after")
    def _one(self) -> SignerIdentityConfig:
        if (self.identity is None) == (self.identity_regexp is None):
            raise ValueError("give one of identity (exact) or identity_regexp")
        try:
            re.compile(self.identity_regexp or "")
        except re.error as exc:
            raise ValueError(f"identity_regexp: not a regular expression: {exc}") from None
        return self


class VerifyConfig(_Strict):
    """A verifying policy: key-based (``keys``), keyless (``identities`` under
    ``trusted_root``), or both (either kind of signature then admits an image)."""

    keys: list[str] = Field(default_factory=list)  # PEM public keys (cosign.pub)
    identities: list[SignerIdentityConfig] = Field(default_factory=list)
    trusted_root: str | None = None  # a trusted_root.json, or "public-good"

    @model_validator(mode="after")
    def _usable(self) -> VerifyConfig:
        from warmer.oci.cosign import SignatureError, load_public_keys
        from warmer.oci.keyless import load_trusted_root

        try:
            load_public_keys(self.keys)
        except SignatureError as exc:
            raise ValueError(f"keys: {exc}") from None
        if self.trusted_root is not None and not self.identities:
            raise ValueError(
                "trusted_root: needs identities (who may sign); without them a certificate "
                "of any identity the root's authority issued would pass"
            )
        if self.identities:
            try:
                load_trusted_root(self.trusted_root or "public-good")
            except SignatureError as exc:
                raise ValueError(f"trusted_root: {exc}") from None
        return self


class ArtifactsConfig(_Strict):
    """What is warmed with each image and what must verify: see warmer.warm.artifacts."""

    kinds: list[Literal["signatures", "attestations", "sbom", "all", "none"]] = ["signatures"]
    types: list[str] = Field(default_factory=list)  # more referrer artifactTypes to warm
    depth: int = Field(default=2, ge=0, le=4)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)

    @model_validator(mode="after")
    def _usable(self) -> ArtifactsConfig:
        if "none" in self.kinds and len(self.kinds) > 1:
            raise ValueError("kinds: 'none' cannot be combined with other kinds")
        return self


class RegionConfig(_Strict):
    mirrors: list[str]
    windows: list[WindowConfig] = Field(default_factory=list)
    budget: Budget = None
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)

    @field_validator("mirrors", "platforms")
    @classmethod
    def _some(cls, v: list[str], info: Any) -> list[str]:
        if not v:
            what = "mirror" if info.field_name == "mirrors" else "platform"
            raise ValueError(f"empty: a region needs at least one {what}")
        if len(set(v)) != len(v):
            raise ValueError("names one entry twice")
        return v


class RunConfig(_Strict):
    """How the executor behaves."""

    deadline_grace: Duration = timedelta(seconds=30)
    retries: int = Field(default=4, ge=0, le=20)
    timeout: PositiveDuration = timedelta(seconds=60)
    ratelimit_poll: PositiveDuration = timedelta(seconds=30)


class RefreshConfig(_Strict):
    """How ``warmer refresh`` re-resolves tracked tags and renews what expires."""

    renew_before: Duration = timedelta(hours=24)
    concurrency: int = Field(default=8, ge=1, le=256)


class ServeIngestConfig(_Strict):
    """The service's ingest job: log sources read on an interval (rank runs after each)."""

    paths: list[str] = Field(default_factory=list)
    every: PositiveDuration = timedelta(minutes=15)


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
    poll: PositiveDuration = timedelta(seconds=30)
    shutdown_grace: Duration = timedelta(seconds=8)
    retention: PositiveDuration = timedelta(days=35)
    time_scale: float = Field(default=1.0, gt=0, le=100_000)
    time_origin: LaxDatetime = None
    time_anchor: LaxDatetime = None
    ingest: ServeIngestConfig = ServeIngestConfig()
    warm: ServeWarmConfig = ServeWarmConfig()
    refresh: ServeCronConfig = ServeCronConfig(cron="0 5 * * *")
    verify: ServeVerifyConfig = ServeVerifyConfig(cron="0 6 * * 0")
    prune: ServeCronConfig = ServeCronConfig(cron="30 4 * * *")

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    @field_validator("misfire_grace")
    @classmethod
    def _grace(cls, v: timedelta) -> timedelta:
        if v < timedelta(seconds=1):
            raise ValueError("must be at least 1s (the scheduler counts whole seconds)")
        return v

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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = list(messages(exc))
        text = "; ".join(lines)
        for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":  # one line, whatever keys hold
            text = text.replace(c, repr(c)[1:-1])
        raise ConfigError(f"{source}: {text}") from None


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
