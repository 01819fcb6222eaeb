"""Invalidation hooks: make a mirror with a metadata cache forget a tag.

A hook (``[mirrors.NAME.invalidate]``) is an HTTP request or a command. Header values named
by ``headers_env`` are read from the environment when the hook runs and never appear in a
result, a log line or the database; a result carries the status (or exit code) and at most
a short, header-free excerpt of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx

from warmer.config import InvalidateHook
from warmer.oci.transport import safe_url

log = logging.getLogger("warmer.upkeep.invalidate")
EXCERPT = 200


@dataclass(frozen=True)
class HookResult:
    ok: bool
    detail: str  # "HTTP 200 from http://...", "exit 0 from purge", or why it failed

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def _fill(template: str, values: dict[str, str]) -> str:
    # str.format would choke on other braces a URL or an argument may contain.
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", value)
    return out


async def run_hook(
    hook: InvalidateHook, *, image: str, repository: str, tag: str, digest: str
) -> HookResult:
    """Call ``hook`` for one tag; never raises for an expected failure (it is reported)."""
    values = {"image": image, "repository": repository, "tag": tag, "digest": digest}
    timeout = hook.timeout.total_seconds()
    if hook.url is not None:
        return await _http(hook, _fill(hook.url, values), timeout)
    assert hook.command is not None
    return await _command([_fill(a, values) for a in hook.command], timeout)


async def _http(hook: InvalidateHook, url: str, timeout: float) -> HookResult:
    headers = dict(hook.headers)
    for header, env in hook.headers_env.items():
        value = os.environ.get(env)
        if value is None:
            return HookResult(False, f"environment variable {env} (for header {header}) is unset")
        headers[header] = value
    where = safe_url(url)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.request(hook.method.upper(), url, headers=headers)
    except httpx.HTTPError as exc:
        return HookResult(False, f"{hook.method.upper()} {where}: {type(exc).__name__}")
    ok = 200 <= resp.status_code < 300
    detail = f"HTTP {resp.status_code} from {hook.method.upper()} {where}"
    if not ok:
        detail += f": {resp.text[:EXCERPT]}"
    return HookResult(ok, detail)


async def _command(argv: list[str], timeout: float) -> HookResult:
    name = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return HookResult(False, f"cannot run {name}: {exc.strerror or exc}")
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()  # our own child, by its handle
        await proc.wait()
        return HookResult(False, f"{name} did not finish within {timeout:.0f}s; killed")
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()[:EXCERPT]
        return HookResult(False, f"exit {proc.returncode} from {name}: {text}")
    return HookResult(True, f"exit 0 from {name}")
