"""Invalidation hooks: make a mirror with a metadata cache forget a tag.

A hook (``[mirrors.NAME.invalidate]``) is an HTTP request or a command. Header values named
by ``headers_env`` are read from the environment when the hook runs and never appear in a
result, a log line or the database; a result carries the status (or exit code) and at most
a short, header-free excerpt of the answer.

Every value a hook names (``{image}``, ``{repository}``, ``{tag}``, ``{digest}``) is checked
against its grammar before the hook runs: the digest comes from the upstream's
``Docker-Content-Digest`` header, so a hostile or broken registry chooses it. A value that
fails means the hook is not run and the result says which value and where it came from.
Values are substituted once, each into its own argv item (never a shell), and
percent-encoded in a URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from warmer.config import InvalidateHook
from warmer.oci.reference import InvalidReference, parse
from warmer.oci.transport import safe_url
from warmer.oci.validate import InvalidValue, check_digest, check_repository, check_tag, shown

log = logging.getLogger("warmer.upkeep.invalidate")
EXCERPT = 200


@dataclass(frozen=True)
class HookResult:
    ok: bool
    detail: str  # "HTTP 200 from http://...", "exit 0 from purge", or why it failed

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


_PLACEHOLDER = re.compile(r"\{(image|repository|tag|digest)\}")


def _check_image(value: str, what: str) -> str:
    try:
        parse(value)
    except InvalidReference as exc:
        raise InvalidValue(what, value, exc.why) from None
    return value


# Each placeholder: its check, and where its value comes from (said when it fails).
_CHECKS: dict[str, tuple[Callable[[str, str], str], str]] = {
    "image": (_check_image, "the tracked image's name"),
    "repository": (check_repository, "the repository name at the mirror"),
    "tag": (check_tag, "the tracked tag"),
    "digest": (check_digest, "the upstream registry's Docker-Content-Digest"),
}


def _fill(template: str, values: dict[str, str], encode: bool = False) -> str:
    """``template`` with each placeholder replaced once (a value is never read again for
    placeholders); str.format would choke on other braces a URL or an argument may hold."""

    def value(m: re.Match[str]) -> str:
        text = values[m.group(1)]
        return quote(text, safe="/:") if encode else text

    return _PLACEHOLDER.sub(value, template)


def _invalid_values(templates: list[str], values: dict[str, str]) -> str | None:
    """Why a value the templates name fails its grammar (the first such), or ``None``."""
    named = {m.group(1) for t in templates for m in _PLACEHOLDER.finditer(t)}
    for key in sorted(named):
        check, source = _CHECKS[key]
        try:
            check(values[key], key)
        except InvalidValue as exc:
            return f"{{{key}}} from {source} is invalid ({exc.why}): {shown(values[key])}"
    return None


async def run_hook(
    hook: InvalidateHook, *, image: str, repository: str, tag: str, digest: str
) -> HookResult:
    """Call ``hook`` for one tag; never raises for an expected failure (it is reported).

    A value the hook names that fails its grammar (see the module's docstring) means the
    hook is not run: the result is a failure naming the value and its source."""
    values = {"image": image, "repository": repository, "tag": tag, "digest": digest}
    templates = [hook.url] if hook.url is not None else list(hook.command or [])
    why = _invalid_values(templates, values)
    if why is not None:
        log.warning("invalidation hook not run: %s", why)
        return HookResult(False, f"hook not run: {why}")
    timeout = hook.timeout.total_seconds()
    if hook.url is not None:
        return await _http(hook, _fill(hook.url, values, encode=True), timeout)
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
