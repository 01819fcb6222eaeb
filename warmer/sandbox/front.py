"""A Docker-Hub-like front on 127.0.0.1 in front of the sandbox's upstream registry.

It forwards every request to the upstream (aiohttp server + aiohttp client, bodies
streamed) and on the way it:

- counts requests by kind (``manifest`` / ``blob`` / ``other``) and method, per repository
  and per blob digest, the bytes it served, and bytes served per 100 ms (a time series);
- sends Docker Hub's rate-limit headers on manifest responses and answers ``429
  TOOMANYREQUESTS`` with ``Retry-After`` once ``ratelimit_limit`` manifest GETs were served
  in the sliding window of ``ratelimit_window`` seconds (HEAD is never counted);
- emulates a WAN link: ``latency_ms`` added to every request, and one aggregate
  ``bandwidth`` cap (bytes/s) shared by all response bodies;
- with ``auth = "token"``, asks for Docker Hub's anonymous Bearer-token flow: ``/v2/``
  and every repository request without a live token get ``401`` with a
  ``WWW-Authenticate: Bearer realm=".../token"`` challenge, and ``GET /token?scope=...``
  hands out a token for the scoped repositories (the default, ``"none"``, lets everything
  through, as a plain distribution registry does). This matters to a distribution proxy
  above the front: it caches a parent's challenge, but a parent that sends none is pinged
  again before every proxied request, one ping at a time;
- injects faults on demand.

Run it as a process::

    python -m warmer.sandbox.front --listen PORT --upstream URL [--state-dir DIR]
        [--latency-ms MS] [--bandwidth RATE] [--ratelimit N] [--ratelimit-window S]

or in-process with :func:`start_front`. :class:`FrontControl` is a small sync client for
the control endpoints below (all JSON):

``GET /_front/stats``
    counters since start or the last reset: ``requests`` {kind: {method: n}},
    ``bytes_served``, ``status`` {code: n}, ``repositories`` {repo: {requests, bytes_served}},
    ``blobs`` {digest: {GET, HEAD, bytes_served}}, ``manifest_gets_counted``,
    ``throttled``, ``faults_applied`` {kind: n}, ``series`` {interval_s, bytes: [...]}.
``GET /_front/windows[?raw=1]``
    exact sliding-window peaks of the bytes sent towards the client since the last reset,
    from a per-chunk record of when each body chunk left (``peak`` {"1": bytes, "2", "5",
    "10"}, ``bytes``, ``first``/``last`` seconds; ``raw``: the (seconds, bytes) records).
    ``stats`` also counts ``pings``: ``GET /v2/``, a distribution proxy's parent check.
``POST /_front/stats/reset``
    zero the counters and the time series (the rate-limit window is kept).
``GET /_front/config`` / ``POST /_front/config``
    read / change any of ``latency_ms``, ``bandwidth`` (bytes/s, ``"40MB/s"``, or null for
    none), ``ratelimit_limit`` (int, or null for no limit and no headers),
    ``ratelimit_window`` (seconds), ``auth`` (``"none"`` or ``"token"``);
    ``{"ratelimit_reset": true}`` empties the window; ``{"ratelimit_seed": [3.0, 1.0]}`` adds
    counted requests made that many seconds ago (after a reset in the same body), so a test
    decides when each leaves the window.
``GET /_front/faults`` / ``POST /_front/faults`` / ``DELETE /_front/faults``
    list / add / clear faults. A fault is ``{"kind": K, "match": "substring of the path
    (a digest, /manifests/ ...)", "count": 1, "method": null}`` with K one of ``status``
    (``"status": 503``), ``reset`` (close the connection after ``after_bytes`` of a body,
    default half), ``corrupt`` (flip the byte at ``offset`` of a body, default the middle)
    and ``slow`` (wait ``delay`` seconds, default 1, before answering). ``reset`` and
    ``corrupt`` only match GETs. Each match spends one of ``count``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from multidict import CIMultiDict

from warmer.sandbox.frontstate import (
    AUTH_MODES,
    MAX_PINGS_TIMED,
    TOKEN_TTL,
    Fault,
    FrontConfig,
    FrontState,
    Stats,
    classify,
    peak_windows,
)
from warmer.units import parse_rate

CHUNK = 64 * 1024
SERVICE = "sandbox-front"  # the token service name, as registry.docker.io is Docker Hub's
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
NOT_SENT = HOP_BY_HOP | {"authorization"}  # the upstream is anonymous; the front's tokens stay here


STATE = web.AppKey("state", FrontState)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return web.json_response(body, status=status, headers=headers)


async def _proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    method, path = request.method, request.path
    kind, repo, ref = classify(path)
    state.stats.request(kind, method, repo, ref)
    if path in ("/v2/", "/v2") and method == "GET":
        state.stats.pings += 1
        if len(state.stats.ping_times) < MAX_PINGS_TIMED:
            state.stats.ping_times.append(time.monotonic() - state.stats.t0)
    fault = state.take_fault(method, path)
    resp = await _answer(request, state, fault, kind, repo, ref)
    state.stats.status[resp.status] += 1
    return resp


async def _round_trip(state: FrontState) -> None:
    """The WAN's added round trip, paid by every request (the token endpoint's too)."""
    if state.config.latency_ms:
        await asyncio.sleep(state.config.latency_ms / 1000)


async def _answer(
    request: web.Request, state: FrontState, fault: Fault | None, kind: str,
    repo: str | None, ref: str | None,
) -> web.StreamResponse:  # fmt: skip
    method = request.method
    await _round_trip(state)
    if fault is not None and fault.kind == "slow":
        await asyncio.sleep(fault.delay)
    if fault is not None and fault.kind == "status":
        return _error(fault.status, "UNAVAILABLE", f"injected fault: HTTP {fault.status}")
    if state.config.auth == "token" and not state.authorized(
        request.headers.get("Authorization"), repo
    ):
        return _challenge(request, repo)
    extra: dict[str, str] = {}
    if kind == "manifest":
        extra, retry = state.ratelimit(counted=method == "GET")
        if retry is not None:
            state.stats.throttled += 1
            extra["Retry-After"] = str(max(1, int(retry + 0.999)))
            return _error(
                429, "TOOMANYREQUESTS",
                "You have reached your pull rate limit. You may increase the limit by "
                "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
                extra,
            )  # fmt: skip
    # A multidict: clients send several Accept headers, and all of them must reach upstream.
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in NOT_SENT)
    body = await request.read() if request.can_read_body else None
    try:
        upstream = await request.app[SESSION].request(
            method, state.upstream + str(request.rel_url), headers=headers, data=body,
            allow_redirects=False,
        )  # fmt: skip
    except aiohttp.ClientError as exc:
        return _error(502, "UNAVAILABLE", f"upstream unreachable: {type(exc).__name__}")
    async with upstream:
        return await _relay(request, state, upstream, fault, extra, kind, repo, ref)


def _challenge(request: web.Request, repo: str | None) -> web.Response:
    realm = f"{request.url.origin()}/token"
    challenge = f'Bearer realm="{realm}",service="{SERVICE}"'
    if repo is not None:
        challenge += f',scope="repository:{repo}:pull"'
    return _error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})


async def _token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.request("token", request.method, None, None)
    await _round_trip(state)
    token = state.issue_token(request.query.getall("scope", []))
    issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {"token": token, "access_token": token, "expires_in": TOKEN_TTL, "issued_at": issued}
    state.stats.status[200] += 1
    return web.json_response(body)


async def _relay(
    request: web.Request, state: FrontState, upstream: aiohttp.ClientResponse,
    fault: Fault | None, extra: dict[str, str], kind: str, repo: str | None, ref: str | None,
) -> web.StreamResponse:  # fmt: skip
    out = web.StreamResponse(status=upstream.status)
    for k, v in upstream.headers.items():
        if k.lower() not in HOP_BY_HOP:
            if k.lower() == "location" and v.startswith(state.upstream):
                v = str(request.url.origin()) + v[len(state.upstream) :]
            out.headers.add(k, v)
    out.headers.update(extra)
    length = upstream.headers.get("Content-Length")
    if length is not None:
        out.content_length = int(length)
    await out.prepare(request)
    if request.method == "HEAD":
        return out
    size = int(length) if length is not None else 0
    cut = fault.after_bytes if fault and fault.after_bytes is not None else size // 2
    flip = fault.offset if fault and fault.offset is not None else size // 2
    sent = 0
    paced = CHUNK // 4 if state.config.bandwidth else CHUNK
    async for chunk in upstream.content.iter_chunked(paced):
        if fault is not None and fault.kind == "corrupt" and sent <= flip < sent + len(chunk):
            b = bytearray(chunk)
            b[flip - sent] ^= 0xFF
            chunk = bytes(b)
        if fault is not None and fault.kind == "reset" and sent + len(chunk) >= cut:
            chunk = chunk[: max(0, cut - sent)]
            await state.pacer.consume(len(chunk), state.config.bandwidth)
            await out.write(chunk)
            state.stats.served(len(chunk), kind, repo, ref)
            if request.transport is not None:
                request.transport.abort()  # an RST mid-body, as a broken WAN link does
            raise asyncio.CancelledError
        await state.pacer.consume(len(chunk), state.config.bandwidth)
        await out.write(chunk)
        state.stats.served(len(chunk), kind, repo, ref)
        sent += len(chunk)
    await out.write_eof()
    return out


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.to_json())


async def _windows(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    body = peak_windows(stats.chunks)
    if request.query.get("raw"):
        body["chunks"] = stats.chunks
        body["t0_monotonic"] = stats.t0
    return web.json_response(body)


async def _stats_reset(request: web.Request) -> web.Response:
    request.app[STATE].stats = Stats()
    return web.json_response({"reset": True})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def _config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        body = await _json_body(request)
        try:
            state.config.update(body)
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if body.get("ratelimit_reset"):
            state.window.clear()
        if "ratelimit_seed" in body:
            now = time.monotonic()
            seeded = (now - float(age) for age in body["ratelimit_seed"])
            state.window = deque(sorted([*state.window, *seeded]))
    return web.json_response(asdict(state.config))


async def _faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.faults.append(Fault.from_json(await _json_body(request)))
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
    elif request.method == "DELETE":
        state.faults.clear()
    return web.json_response([asdict(f) for f in state.faults])


def make_app(upstream: str, config: FrontConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=1 << 30)
    app[STATE] = FrontState(upstream.rstrip("/"), config or FrontConfig())

    async def session_ctx(app: web.Application) -> Any:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/_front/stats", _stats)
    app.router.add_post("/_front/stats/reset", _stats_reset)
    app.router.add_get("/_front/windows", _windows)
    app.router.add_route("*", "/_front/config", _config)
    app.router.add_route("*", "/_front/faults", _faults)
    app.router.add_get("/token", _token)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


@dataclass
class FrontServer:
    """A front running in this event loop (for unit tests)."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def state(self) -> FrontState:
        return self.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_front(
    upstream: str, port: int = 0, config: FrontConfig | None = None
) -> FrontServer:
    app = make_app(upstream, config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return FrontServer(f"http://127.0.0.1:{bound}", app, runner)


class FrontControl:
    """Sync client for a front's control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.url}/_front/{path}", json=body, timeout=10)
        if r.status_code == 400:
            raise ValueError(r.text)
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def windows(self, raw: bool = False) -> dict[str, Any]:
        """Sliding-window peaks of the bytes sent since the last reset (``raw``: with the
        per-chunk (seconds, bytes) records)."""
        result: dict[str, Any] = self._call("GET", "windows" + ("?raw=1" if raw else ""))
        return result

    def reset(self) -> None:
        self._call("POST", "stats/reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "config", changes)
        return result

    def add_fault(self, kind: str, match: str = "", **options: Any) -> None:
        self._call("POST", "faults", {"kind": kind, "match": match, **options})

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")


async def _serve(args: argparse.Namespace) -> None:
    config = FrontConfig(
        latency_ms=args.latency_ms, ratelimit_window=args.ratelimit_window, auth=args.auth
    )
    config.bandwidth = parse_rate(args.bandwidth) if args.bandwidth else None
    config.ratelimit_limit = args.ratelimit if args.ratelimit >= 0 else None
    front = await start_front(args.upstream, args.listen, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"front listening on {front.url}, upstream {args.upstream}", flush=True)
    await stop.wait()
    if args.state_dir:
        stats = Path(args.state_dir) / "front-stats.json"
        stats.write_text(json.dumps(front.state.stats.to_json()))
    await front.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m warmer.sandbox.front", description=__doc__.split("\n")[0]
    )
    p.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--upstream", required=True, help="upstream registry URL")
    p.add_argument("--state-dir", help="directory for front-stats.json, written at exit")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added per request")
    p.add_argument("--bandwidth", default=None, help="aggregate cap, e.g. 40MB/s (default none)")
    p.add_argument(
        "--ratelimit", type=int, default=10_000, help="manifest GETs per window; -1 none"
    )
    p.add_argument("--ratelimit-window", type=int, default=21_600, help="seconds")
    p.add_argument("--auth", choices=AUTH_MODES, default="none", help="token: Docker Hub's flow")
    asyncio.run(_serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
