"""The transport under :class:`warmer.oci.registry.RegistryClient`, and the registry errors.

:class:`RegistryTransport` talks to one registry base URL (an upstream or a mirror). It
authenticates by challenge (anonymous, Basic, Bearer tokens cached per scope), retries
transient failures with jittered exponential backoff (tenacity), reads Docker Hub's
rate-limit headers on every response, and never sends the Authorization header to another
host (redirects are followed by hand for that).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import re
import ssl
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from warmer.oci import auth
from warmer.oci.auth import Credentials, CredentialsError, TokenCache
from warmer.oci.ratelimit import RateLimit, parse_ratelimit
from warmer.oci.trigger import TriggerError, UnfitHeader, send_and_close
from warmer.oci.validate import InvalidValue, check_url

log = logging.getLogger(__name__)
T = TypeVar("T")
USER_AGENT = "registry-warmer/0.1"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
# Seconds a triggered request waits for an answer before its connection is closed: the
# sooner, the less a pull-through mirror relays into it (measured on distribution 2.8 at
# 100 MB/s: under 70 kB of a 42 MB blob closed at once, 1.6 MB blobs whole when closed
# after the answer's headers under load).
TRIGGER_READ = 0.001
#: The largest answer body read into memory (manifests, tag lists, errors; not blobs).
MAX_BODY = 16 * 1024 * 1024
#: How much of an error answer's body is read for its message.
MAX_ERROR_BODY = 64 * 1024


class RegistryError(Exception):
    """Base of every registry failure; ``str()`` is one line and never holds a secret."""


class NotFound(RegistryError):
    pass


class NoMatchingPlatform(NotFound):
    """An index has no manifest for any of the platforms asked for."""


class Unauthorized(RegistryError):
    pass


class RateLimited(RegistryError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DigestMismatch(RegistryError):
    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class UnsupportedManifest(RegistryError):
    pass


class InvalidResponse(RegistryError):
    """The registry answered with a value that fails its grammar (a digest, a size, a media
    type, a tag, a URL, an auth challenge): nothing of that answer is used."""


class TransientError(RegistryError):
    """A transient failure that persisted through every retry."""


class Unreachable(TransientError):
    """The registry (or its token server) could not be connected to."""


class _Retry(Exception):
    """Internal: a failure worth another attempt."""

    def __init__(self, reason: str, url: str, unreachable: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.url, self.unreachable = reason, url, unreachable


def safe_url(url: str | httpx.URL) -> str:
    """A URL fit for messages: no user info, no query (pre-signed URLs carry signatures)."""
    u = httpx.URL(str(url))
    return str(u.copy_with(userinfo=b"", query=None, fragment=None))


async def read_at_most(
    resp: httpx.Response, limit: int, what: str = "", registry: str = ""
) -> httpx.Response:
    """The answer with its body read into memory, decoded: at most ``limit`` bytes, the rest
    left unread when ``what`` is empty (an error's text), else InvalidResponse naming
    ``what`` and the ``registry`` (a body that large is not what was asked for)."""
    body = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > limit:
                break
    except httpx.TransportError as exc:
        raise _Retry(type(exc).__name__, safe_url(resp.url)) from None
    finally:
        await resp.aclose()
    if len(body) > limit:
        if what:
            raise InvalidResponse(
                f"{registry} sent more than {limit} bytes for {what}; not read further"
            )
        del body[limit:]
    # Decoded already: the new answer must not name an encoding to decode again.
    # Raw bytes: a header that is not ASCII must reach the checks, not fail a re-encoding.
    headers = [(k, v) for k, v in resp.headers.raw if k.lower() != b"content-encoding"]
    return httpx.Response(
        resp.status_code, headers=headers, content=bytes(body), request=resp.request
    )


def _bad_location(exc: Exception) -> bool:
    return isinstance(exc, httpx.RemoteProtocolError) and "location header" in str(exc).lower()


def _no_query(text: str) -> str:
    """``text`` without what follows ``?`` or ``#`` and without user info: messages never
    show a query (a pre-signed URL carries its signature there) or a password."""
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    return re.sub(r"//[^/@]*@", "//", text)


def check_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; ValueError unless it is ``http(s)://host[:port]``."""
    try:
        url = httpx.URL(base_url.rstrip("/"))
    except httpx.InvalidURL:
        raise ValueError("registry URL is not a valid URL") from None
    if url.userinfo:
        raise ValueError("registry URL must not carry credentials; configure them by reference")
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"registry URL must be http(s)://host[:port], not {base_url!r}")
    return str(url).rstrip("/")


def _is_digest(reference: str) -> bool:
    return ":" in reference


_API_PATH = re.compile(r"/v2/(?:(?P<repo>.+?)/(?P<kind>manifests|blobs|tags)/(?P<ref>[^/]*))?$")


def request_kind(path: str) -> str:
    """What a request to a registry asks for, by its path: ``ping`` (``/v2/``),
    ``manifest``, ``blob``, ``upload`` (blob uploads), ``tags``, ``catalog`` or ``other``:
    the kinds the transport counts requests by (:attr:`RegistryTransport.requests`)."""
    if path.rstrip("/").endswith("/v2"):
        return "ping"
    if "/v2/_catalog" in path:
        return "catalog"
    m = _API_PATH.search(path)
    if m is None or m["kind"] is None:
        return "upload" if "/blobs/uploads/" in path else "other"
    if m["kind"] == "blobs":
        return "blob" if m["ref"] and m["ref"] != "uploads" else "upload"
    return "manifest" if m["kind"] == "manifests" else "tags"


#: The longest Retry-After believed (a day): a larger one is read as a day.
MAX_RETRY_AFTER = 86400.0
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?", re.ASCII)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), within
    ``[0, MAX_RETRY_AFTER]``; ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def printable(text: str, limit: int = 200) -> str:
    """``text`` on one line of printable characters (others become spaces), at most
    ``limit`` characters: what a registry's own words may look like in a message."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())[:limit]


def _detail(resp: httpx.Response) -> str:
    """The registry's error code and message, one line, bounded."""
    try:
        errors = json.loads(resp.content).get("errors") or []
        text = "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}" for e in list(errors)[:3])
    except (ValueError, AttributeError, TypeError, RecursionError, httpx.ResponseNotRead):
        text = ""
    text = printable(text)
    return f"HTTP {resp.status_code}" + (f" {text}" if text else "")


@functools.lru_cache(maxsize=16)
def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One verifying context per CA file for the process: loading the CA bundle takes
    ~20 ms, and a run makes a client per mirror instance and per upstream."""
    return ssl.create_default_context(cafile=cafile)


def _proxied(url: httpx.URL) -> bool:
    """Whether the environment sends requests to ``url`` through a proxy (as httpx does)."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    bypass = getattr(urllib.request, "proxy_bypass_environment", None)  # not in the stubs
    return not (bypass is not None and bypass(url.host))


@functools.lru_cache(maxsize=16)
def _trigger_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context of a triggered request: the transport's verification setting (one
    per setting for the process, as ``_ssl_context``)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return _ssl_context(None if verify is True else verify)


class RegistryTransport:
    """Authenticated, retried, redirect-safe requests to one registry at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        credentials: Credentials | None = None,
        http: httpx.AsyncClient | None = None,
        retries: int = 4,
        timeout: float = 60.0,
        verify: bool | str = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.url = check_base_url(base_url)
        url = httpx.URL(self.url)
        self._origin = (url.scheme, url.host, url.port)
        self.credentials = credentials
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.last_ratelimit: RateLimit | None = None
        # Requests sent to this registry, by (kind, method): see request_kind. Each attempt
        # counts (a retry is a round trip too); a redirect to another host (blob storage)
        # does not, and a token request counts as ("token", "GET").
        self.requests: Counter[tuple[str, str]] = Counter()
        self._challenge: auth.Challenge | None = None
        self._tokens = TokenCache()
        self._token_locks: dict[auth.TokenKey, asyncio.Lock] = {}
        self._own_http = http is None
        # How a triggered request goes (see ``trigger``): by hand unless the environment
        # proxies this registry; over TLS with the transport's verification setting.
        self._trigger_direct = not _proxied(url)
        self._trigger_tls = _trigger_context(verify) if url.scheme == "https" else None
        if http is None:
            ssl_verify = (
                verify if verify is False else _ssl_context(None if verify is True else verify)
            )
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                verify=ssl_verify,
                headers={"User-Agent": USER_AGENT},
            )
        self._http = http

    def __repr__(self) -> str:
        source = self.credentials.source if self.credentials else "anonymous"
        return f"{type(self).__name__}({self.url!r}, credentials={source})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # --- transport: auth, redirects, retries ------------------------------------------

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self._origin

    async def _authorization(self, scopes: Sequence[str]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        if self.credentials is not None and self.credentials.token is not None:
            return f"Bearer {self.credentials.token.reveal()}"
        key = TokenCache.key(challenge, scopes)
        token = self._tokens.get(key)
        if token is None:
            # One fetch per scope even when many requests start at once (a fresh client
            # fetching blobs in parallel): the others wait and find it cached.
            async with self._token_locks.setdefault(key, asyncio.Lock()):
                token = self._tokens.get(key)
                if token is None:
                    token, lifetime = await self._fetch_token(challenge, scopes)
                    self._tokens.put(key, token, lifetime)
        return f"Bearer {token}"

    async def _fetch_token(
        self, challenge: auth.Challenge, scopes: Sequence[str]
    ) -> tuple[str, float]:
        try:
            request = auth.token_request(challenge, scopes, self.credentials)
        except CredentialsError as exc:
            raise Unauthorized(f"{self.url}: {exc}") from None
        where = safe_url(request.url)
        self.requests[("token", request.method)] += 1
        try:
            resp = await self._http.send(request, follow_redirects=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retry(f"token server: {type(exc).__name__}", where, unreachable=True) from None
        except httpx.TransportError as exc:
            if _bad_location(exc):
                raise self._bad_redirect(request.url) from None
            raise _Retry(f"token server: {type(exc).__name__}", where) from None
        except httpx.InvalidURL:
            raise self._bad_redirect(request.url) from None
        except httpx.TooManyRedirects:
            raise InvalidResponse(f"too many redirects from the token server {where}") from None
        if resp.status_code >= 500:
            raise _Retry(f"token server HTTP {resp.status_code}", where)
        if resp.status_code != 200:
            who = f"credentials from {self.credentials.source}" if self.credentials else "anonymous"
            raise Unauthorized(
                f"token server {where} refused {who} for {' '.join(scopes) or 'registry access'}"
                f" ({_detail(resp)})"
            )
        try:
            return auth.parse_token_response(resp.content)
        except CredentialsError as exc:
            raise Unauthorized(f"{where}: {exc}") from None

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        stream: bool,
        authorization: str | None,
    ) -> httpx.Response:
        """Send, following redirects by hand; Authorization only to the registry's origin."""
        for _ in range(MAX_REDIRECTS + 1):
            hdrs = dict(headers)
            if authorization and self._same_origin(url):
                hdrs["Authorization"] = authorization
            request = self._http.build_request(method, url, headers=hdrs, content=content)
            if self._same_origin(url):
                self.requests[(request_kind(url.path), method)] += 1
            try:
                resp = await self._http.send(request, stream=stream, follow_redirects=False)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _Retry(type(exc).__name__, safe_url(url), unreachable=True) from None
            except httpx.TransportError as exc:
                # httpx reads a redirect's Location even when not following it.
                if _bad_location(exc):
                    raise self._bad_redirect(url) from None
                raise _Retry(type(exc).__name__, safe_url(url)) from None
            except httpx.InvalidURL:
                raise self._bad_redirect(url) from None
            if self._same_origin(url):
                seen = parse_ratelimit(resp.headers)
                if seen is not None:
                    self.last_ratelimit = seen
            location = resp.headers.get("location")
            if resp.status_code not in REDIRECTS or not location:
                return resp
            await resp.aclose()
            url = self.follow(resp, location, f"redirect from {safe_url(url)}")
            if resp.status_code == 303:
                method, content = "GET", None
        raise RegistryError(f"too many redirects from {safe_url(url)}")

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        scopes: Sequence[str],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One attempt with authentication: anonymous first, then what the challenge asks."""
        authorization = await self._authorization(scopes)
        for round_ in range(2):
            resp = await self._send(method, url, headers or {}, content, stream, authorization)
            if resp.status_code == 401 and self._same_origin(resp.url):
                header = resp.headers.get("www-authenticate", "")
                await resp.aclose()
                challenge = auth.pick_challenge(auth.parse_www_authenticate(header))
                if challenge is not None:
                    try:
                        auth.check_challenge(challenge, https=self._origin[0] == "https")
                    except InvalidValue as exc:
                        raise self.invalid(f"the challenge for {safe_url(url)}", exc) from None
                if challenge is None or round_ == 1:
                    raise self._unauthorized(url, resp)
                if authorization is not None and challenge == self._challenge:
                    if challenge.scheme == "basic" or (self.credentials and self.credentials.token):
                        raise self._unauthorized(url, resp)
                    self._tokens.drop(TokenCache.key(challenge, scopes))  # stale or revoked
                self._challenge = challenge
                authorization = await self._authorization(scopes)
                if authorization is None:
                    raise self._unauthorized(url, resp)
                continue
            if resp.status_code >= 500 and resp.status_code != 501:
                await resp.aclose()
                raise _Retry(f"HTTP {resp.status_code}", safe_url(url))
            if resp.status_code == 429:
                resp = await read_at_most(resp, MAX_ERROR_BODY)
                raise RateLimited(
                    f"rate limited by {self.url} on {safe_url(url)} ({_detail(resp)})"
                    + (f"; {self.last_ratelimit}" if self.last_ratelimit else ""),
                    _retry_after(resp.headers.get("retry-after")),
                )
            return resp
        raise AssertionError("unreachable")

    def _bad_redirect(self, url: httpx.URL) -> InvalidResponse:
        return InvalidResponse(
            f"{self.url} sent an invalid Location (not a URL) in a redirect from {safe_url(url)}"
        )

    def invalid(self, what: str, exc: InvalidValue) -> InvalidResponse:
        """The error for a value from this registry that failed its grammar."""
        return InvalidResponse(f"{self.url} sent an {exc} (in {what})")

    def follow(self, resp: httpx.Response, location: str, what: str) -> httpx.URL:
        """A Location header (a redirect, an upload session) joined to the answer's URL:
        an absolute http(s) URL, or InvalidResponse."""
        try:
            joined = resp.url.join(location)
            check_url(str(joined), "Location")
        except httpx.InvalidURL:
            raise self.invalid(
                what, InvalidValue("Location", _no_query(location), "not a valid URL")
            ) from None
        except InvalidValue as exc:
            raise self.invalid(
                what, InvalidValue("Location", _no_query(location), exc.why)
            ) from None
        return joined

    def _unauthorized(self, url: httpx.URL, resp: httpx.Response) -> Unauthorized:
        who = (
            f"credentials from {self.credentials.source}" if self.credentials else "no credentials"
        )
        return Unauthorized(f"unauthorized: {safe_url(url)} refused access ({who}, HTTP 401)")

    async def trigger(self, url: httpx.URL, scopes: Sequence[str]) -> None:
        """Send a GET to ``url`` and close the connection without waiting for its answer
        (a read timeout of ``TRIGGER_READ`` seconds). With the credentials it already
        holds (none known yet: anonymous; a 401 then starts nothing). A failure to connect
        or send raises like any request; what the server answers is never seen."""
        authorization = await self._authorization(scopes)
        headers = {"User-Agent": USER_AGENT}
        if authorization:
            headers["Authorization"] = authorization
        self.requests[(request_kind(url.path), "GET")] += 1
        if self._trigger_direct:
            connect = self._http.timeout.connect or 10.0
            try:
                await send_and_close(url, headers, tls=self._trigger_tls, timeout=connect)
            except TriggerError as exc:
                raise _Retry(str(exc), safe_url(url), unreachable=True) from None
            except UnfitHeader as exc:  # a token server's answer, unfit for a header
                raise InvalidResponse(f"{safe_url(url)}: {exc}") from None
            return
        # Through a proxy: the client's own request, closed after TRIGGER_READ.
        timeout = self._http.timeout.as_dict() | {"read": TRIGGER_READ}
        request = self._http.build_request(
            "GET", url, headers=headers, extensions={"timeout": timeout}
        )
        try:
            resp = await self._http.send(request, stream=True, follow_redirects=False)
        except httpx.ReadTimeout:
            return  # sent; the connection is closed
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise _Retry(type(exc).__name__, safe_url(url), unreachable=True) from None
        except httpx.TransportError as exc:
            raise _Retry(type(exc).__name__, safe_url(url)) from None
        await resp.aclose()  # answered at once (an error, or a copy from storage): unread

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_random_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception_type(_Retry),
            reraise=True,
            before_sleep=lambda rs: log.info(
                "retrying after %s (attempt %d)",
                rs.outcome.exception() if rs.outcome else "?",
                rs.attempt_number,
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await fn()
        except _Retry as exc:
            tries = self.retries + 1
            attempts = f"{tries} attempt" + ("s" if tries > 1 else "")
            if exc.unreachable:
                raise Unreachable(f"cannot reach {exc.url} ({exc.reason}, {attempts})") from None
            raise TransientError(f"{exc.url}: {exc.reason} after {attempts}") from None
        raise AssertionError("unreachable")

    async def _call(
        self,
        method: str,
        path: str,
        scopes: Sequence[str],
        what: str,
        *,
        ok: Sequence[int] = (200,),
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """A whole request: retries, then status checked (404 -> NotFound, ...)."""
        url = httpx.URL(path if "://" in path else self.url + path)
        if params:
            url = url.copy_merge_params(params)

        async def once() -> httpx.Response:
            resp = await self._attempt(method, url, scopes, headers, content, stream=True)
            ok_status = resp.status_code in ok
            resp = await read_at_most(
                resp, MAX_BODY if ok_status else MAX_ERROR_BODY, what if ok_status else "", self.url
            )
            if ok_status:
                return resp
            if resp.status_code == 404:
                raise NotFound(f"{what} not found at {self.url} ({_detail(resp)})")
            if resp.status_code in (401, 403):
                raise Unauthorized(f"{what}: access denied by {self.url} ({_detail(resp)})")
            raise RegistryError(f"{what}: unexpected answer from {self.url} ({_detail(resp)})")

        if not retry:
            try:
                return await once()
            except _Retry as exc:
                raise TransientError(f"{exc.url}: {exc.reason}") from None
        return await self._retrying(once)
