"""Registry credentials and the challenge/token protocol (the pure part).

Credentials come by reference: environment variable names, a password file, or a Docker
``config.json`` (``auths``, ``credHelpers``, ``credsStore``). Secrets are wrapped in
:class:`Secret`, whose ``repr``/``str`` never show the value, so a ``Credentials`` object can
be logged or put in an exception without leaking anything.

The HTTP side (sending token requests, retrying) lives in :mod:`warmer.oci.registry`; here are
the parsers and builders it uses: ``WWW-Authenticate`` challenges, token requests and
responses, and a token cache keyed by scope.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from warmer.oci.validate import InvalidValue, check_param, check_token, check_url

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
CLIENT_ID = "registry-warmer"
#: Tokens without ``expires_in`` live 60 s (the token specification's default).
DEFAULT_TOKEN_LIFETIME = 60.0
#: The longest lifetime believed from a token server (a day).
MAX_TOKEN_LIFETIME = 86400.0
#: Renew a token this long before it expires, so a request never carries a stale one.
EXPIRY_MARGIN = 5.0


class CredentialsError(ValueError):
    """Credentials configured but unusable (a missing variable, file or helper)."""


class Secret:
    """A string that is never shown: ``repr``/``str`` print ``***``; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    """A username and password, or a token; ``source`` says where they came from."""

    username: str | None = None
    password: Secret | None = None
    #: A registry bearer token, sent as is when the registry asks for Bearer.
    token: Secret | None = None
    #: An OAuth refresh token (``identitytoken`` in config.json), exchanged at the realm.
    identity_token: Secret | None = None
    source: str = "config"

    @classmethod
    def basic(cls, username: str, password: str, source: str = "config") -> Credentials:
        return cls(username=username, password=Secret(password), source=source)

    def basic_header(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        raw = f"{self.username}:{self.password.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class CredentialSource(Protocol):
    """What :func:`credentials_from_ref` reads (``warmer.config.CredentialsRef`` fits)."""

    @property
    def username(self) -> str | None: ...
    @property
    def username_env(self) -> str | None: ...
    @property
    def password_env(self) -> str | None: ...
    @property
    def password_file(self) -> str | None: ...
    @property
    def token_env(self) -> str | None: ...
    @property
    def docker_config(self) -> bool | str | None: ...


@dataclass(frozen=True)
class CredentialRef:
    """Where to find credentials, as written in the config (never the secret itself)."""

    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    token_env: str | None = None
    #: ``True`` reads the default Docker config.json; a string is its path.
    docker_config: bool | str | None = None


def _env(environ: Mapping[str, str], name: str, what: str, key: str) -> str:
    value = environ.get(name)
    if not value:
        raise CredentialsError(f"{what}: {key}: environment variable {name} is not set or empty")
    return value


def _expand(path: str | Path, what: str, key: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~someone/..." for a user this machine does not know
        raise CredentialsError(f"{what}: {key}: cannot expand {str(path)!r}") from None


def _password_file(path: Path, what: str) -> str:
    """The first line of a password file (what Docker and Kubernetes secrets hold)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CredentialsError(f"{what}: password_file: cannot read {path}: {reason}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"{what}: password_file: {path} is not UTF-8 text") from None
    if not lines or not lines[0]:
        raise CredentialsError(f"{what}: password_file: {path} is empty (first line)")
    return lines[0]


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_ref(ref: CredentialSource) -> None:
    """ValueError when a reference cannot work or is ambiguous (checked at config load):
    a bad variable name, an empty value, two sources for one secret (one would be used
    silently), a password without a user name or a user name without a password."""
    for key in ("username_env", "password_env", "token_env"):
        name = getattr(ref, key)
        if name is not None and not ENV_NAME.fullmatch(name):
            raise ValueError(f"{key}: {name[:40]!r} is not an environment variable name")
    for key in ("username", "password_file", "docker_config"):
        value = getattr(ref, key)
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"{key}: empty (leave the key out instead)")
    given = [k for k in ("password_env", "password_file", "token_env") if getattr(ref, k)]
    given += ["docker_config"] if ref.docker_config else []
    if len(given) > 1:
        raise ValueError(f"give one of {', '.join(given)}")
    if ref.username is not None and ref.username_env is not None:
        raise ValueError("give one of username, username_env")
    has_user = ref.username is not None or ref.username_env is not None
    if has_user and given and given[0] in ("token_env", "docker_config"):
        raise ValueError(f"{given[0]} does not take a username")
    if has_user and not given:
        raise ValueError("a username needs password_env or password_file")
    if given and given[0] in ("password_env", "password_file") and not has_user:
        raise ValueError("a password needs username or username_env")


def credentials_from_ref(
    ref: CredentialSource, host: str, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """Resolve a credentials reference for ``host``; ``None`` means anonymous.

    ``host`` is the registry host (``ghcr.io``, ``127.0.0.1:5000``), used in messages and to
    look the host up in a Docker config.json.
    """
    env = os.environ if environ is None else environ
    what = f"credentials for {host}"
    if ref.token_env:
        token = _env(env, ref.token_env, what, "token_env")
        return Credentials(token=Secret(token), source=f"${ref.token_env}")
    username = ref.username
    if ref.username_env:
        username = _env(env, ref.username_env, what, "username_env")
    password: str | None = None
    source = ""
    if ref.password_env:
        password, source = _env(env, ref.password_env, what, "password_env"), f"${ref.password_env}"
    elif ref.password_file:
        path = _expand(ref.password_file, what, "password_file")
        password, source = _password_file(path, what), str(path)
    if password is not None:
        if not username:
            raise CredentialsError(f"{what}: a password is configured but no username")
        return Credentials.basic(username, password, source=source)
    if ref.docker_config:
        path_arg = ref.docker_config if isinstance(ref.docker_config, str) else None
        try:
            return credentials_from_docker_config(host, path_arg, environ=env)
        except CredentialsError as exc:
            raise CredentialsError(f"{what}: docker_config: {exc}") from None
    if username:
        raise CredentialsError(f"{what}: a username is configured but no password or token")
    return None


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def _host_of(key: str) -> str:
    # config.json keys may be "host", "https://host", or "https://index.docker.io/v1/".
    text = key.split("://", 1)[-1]
    return text.split("/", 1)[0].lower()


def _same_registry(a: str, b: str) -> bool:
    a, b = _host_of(a), _host_of(b)
    return a == b or (a in DOCKER_HUB_HOSTS and b in DOCKER_HUB_HOSTS)


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def credentials_from_docker_config(
    host: str,
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    run: Runner = subprocess.run,
) -> Credentials | None:
    """Credentials for ``host`` from a Docker config.json, or ``None`` when it has none."""
    cfg_path = _expand(path, "Docker config", "path") if path else docker_config_path(environ)
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CredentialsError(f"cannot read Docker config {cfg_path}: {reason}") from None
    except UnicodeDecodeError:
        raise CredentialsError(f"Docker config {cfg_path} is not UTF-8 text") from None
    except ValueError as exc:
        # json's message names a line and column, never the text around it.
        raise CredentialsError(f"Docker config {cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"Docker config {cfg_path} is not a JSON object")
    server = DOCKER_HUB_SERVER if host in DOCKER_HUB_HOSTS else host
    helpers = config.get("credHelpers") or {}
    for key, helper in helpers.items() if isinstance(helpers, dict) else []:
        if _same_registry(key, host) and isinstance(helper, str):
            return _from_helper(helper, server, run, f"{cfg_path} credHelpers")
    auths = config.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else []:
        if _same_registry(key, host) and isinstance(entry, dict):
            creds = _from_auth_entry(entry, f"{cfg_path} auths[{key!r}]")
            if creds is not None:
                return creds
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, server, run, f"{cfg_path} credsStore")
    return None


def _from_auth_entry(entry: dict[str, Any], source: str) -> Credentials | None:
    identity = entry.get("identitytoken")
    if isinstance(identity, str) and identity:
        return Credentials(identity_token=Secret(identity), source=source)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise CredentialsError(f"{source}: 'auth' is not base64 of user:password") from None
        if not sep:
            raise CredentialsError(f"{source}: 'auth' is not base64 of user:password")
        return Credentials.basic(user, password, source=source)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials.basic(name, secret, source=source)
    return None


def _from_helper(
    name: str, server: str, run: Runner, source: str = "credsStore"
) -> Credentials | None:
    program = f"docker-credential-{name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise CredentialsError(f"{source}: {name!r} is not a credential helper name")
    fail = f"{source}: credential helper {program}"
    try:
        done = run([program, "get"], input=server, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CredentialsError(f"{fail} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"{fail} timed out") from None
    except (OSError, UnicodeError) as exc:  # not executable, not a program, not text
        raise CredentialsError(f"{fail} cannot be run: {type(exc).__name__}") from None
    if done.returncode != 0:
        # The helper's output is not echoed: it is not ours to know what it contains.
        if "not found" in (done.stdout + done.stderr).lower():
            return None
        raise CredentialsError(f"{fail} failed (exit {done.returncode})")
    try:
        data = json.loads(done.stdout)
        user, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"{fail} returned unreadable output") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise CredentialsError(f"{fail} returned unreadable output")
    if user == "<token>":
        return Credentials(identity_token=Secret(secret), source=program)
    return Credentials.basic(user, secret, source=program)


# --- challenges and tokens -------------------------------------------------------------

# RFC 7235 auth-param lists, hand-parsed: no maintained package does just this, and the
# grammar fits in one regular expression.
_PARAM_RE = re.compile(
    r"""\s*,?\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?"""
)


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict, compare=True, hash=False)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (params keyed lower-case)."""
    challenges: list[Challenge] = []
    for m in _PARAM_RE.finditer(value):
        name, raw = m.group(1), m.group(2)
        if raw is None:
            challenges.append(Challenge(name.lower(), {}))
        elif challenges:
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            challenges[-1].params[name.lower()] = raw
    return challenges


#: Challenge parameters a token request uses; the others are not read.
_TOKEN_PARAMS = ("service", "scope")


def check_challenge(challenge: Challenge, *, https: bool) -> Challenge:
    """``challenge`` if its parameters are fit to use, else InvalidValue: a Bearer realm is
    an http(s) URL (https when the registry is: credentials are never sent in the clear to
    a realm of an https registry), service and scope are short printable strings."""
    if challenge.scheme != "bearer":
        return challenge
    realm = challenge.realm
    if realm is None:
        return challenge  # token_request says the realm is missing
    check_url(realm, "WWW-Authenticate realm")
    if https and not realm.lower().startswith("https://"):
        raise InvalidValue("WWW-Authenticate realm", realm, "plain http for an https registry")
    for name in _TOKEN_PARAMS:
        value = challenge.params.get(name)
        if value is not None:
            check_param(value, f"WWW-Authenticate {name}")
    return challenge


def pick_challenge(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer when offered, else Basic; other schemes are not supported."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


def repository_scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions or ('pull',))}"


def token_request(
    challenge: Challenge, scopes: Sequence[str], credentials: Credentials | None
) -> httpx.Request:
    """The request that obtains a bearer token for ``scopes`` from the challenge's realm."""
    realm = challenge.realm
    if not realm:
        raise CredentialsError("the registry's Bearer challenge names no realm")
    service = challenge.service
    if credentials is not None and credentials.identity_token is not None:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": credentials.identity_token.reveal(),
            "client_id": CLIENT_ID,
            "scope": " ".join(scopes),
        }
        if service:
            form["service"] = service
        return httpx.Request("POST", realm, data=form)
    params: list[tuple[str, str | int | float | bool | None]] = (
        [("service", service)] if service else []
    )
    params += [("scope", s) for s in scopes]
    params.append(("client_id", CLIENT_ID))
    headers = {}
    basic = credentials.basic_header() if credentials is not None else None
    if basic:
        headers["Authorization"] = basic
    return httpx.Request("GET", realm, params=params, headers=headers)


def parse_token_response(body: bytes) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token server's JSON answer."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise CredentialsError("the token server answered with something other than JSON") from None
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise CredentialsError("the token server's answer holds no token")
    try:
        check_token(token)
    except InvalidValue as exc:
        raise CredentialsError(f"the token server's answer holds an {exc}") from None
    expires = data.get("expires_in")
    if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
        # NaN fails "> 0"; infinity and years are read as a day.
        return token, min(float(expires), MAX_TOKEN_LIFETIME)
    return token, DEFAULT_TOKEN_LIFETIME


TokenKey = tuple[str, str, tuple[str, ...]]


class TokenCache:
    """Bearer tokens keyed by (realm, service, scopes), dropped shortly before they expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, tuple[Secret, float]] = {}

    @staticmethod
    def key(challenge: Challenge, scopes: Sequence[str]) -> TokenKey:
        return (challenge.realm or "", challenge.service or "", tuple(sorted(scopes)))

    def get(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._tokens[key]
            return None
        return entry[0].reveal()

    def put(self, key: TokenKey, token: str, lifetime: float) -> None:
        self._tokens[key] = (Secret(token), self._clock() + max(lifetime - EXPIRY_MARGIN, 1.0))

    def drop(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)

    def __len__(self) -> int:
        return len(self._tokens)
