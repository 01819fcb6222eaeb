"""``warmer probe MIRROR``: learn how a mirror behaves instead of assuming it.

A small canary image (random small blobs, a config, a manifest; generated, so nothing can
be cached anywhere yet) is pushed to a scratch repository of the mirror's upstream, then
asked for through the mirror, and what happens is measured:

* **answers**: whether an answer from the mirror's storage can be told from one it relays
  from its parent (CNCF distribution serves stored blobs through Go's file server, with
  ``Accept-Ranges``/``Cache-Control``): a cold GET, then the same GET once stored;
* **cache scope**: one blob pushed under two repositories, fetched through the mirror under
  the first, then asked for (HEAD) under the second: answered from storage (``global``) or
  relayed from the parent (``repository``);
* **HEAD on a cold blob**: does it fetch the blob (a later GET is answered from storage)?
* **tags**: the canary's tag moved at the upstream after the mirror cached it: does the
  mirror's answer follow at once (it asks its parent for every tag request)?
* **fetch multiplicity**: bytes the parent served per cold byte;
* **re-pings**: does the mirror ask its parent ``GET /v2/`` before each request it sends
  there (distribution 2.8 does so for a parent that sends no token challenge), and what
  that costs at the measured round trip;
* **cold blobs**: a request for a cold blob closed at once (``trigger_blob``): does the
  mirror store the blob anyway (then ``cold_blobs = "stored"`` reads it once from
  storage), and what did its parent serve for it?

What the parent does is only seen with a counting view of it: when the parent is the
sandbox's front (``/_front/stats`` answers), its counters are read before and after each
step (tests put one between a mirror and its parent). Without one (production), the probe
measures what it can from the client side (answers, headers, a second request's answer,
round trips) and infers the rest; every finding says ``measured``, ``inferred`` or
``unknown``, the config key it implies (``mirrors.NAME.cache_scope`` ...) and what is
configured, and :func:`disagreements` lists where the two differ. The I/O is here; what a
measurement means is decided by the pure ``_assess*`` functions.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from warmer.config import Config, MirrorConfig
from warmer.oci.manifest import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256_digest
from warmer.oci.registry import RegistryClient, RegistryError, served_from_storage
from warmer.warm.resolve import mirror_client, upstream_client

How = Literal["measured", "inferred", "unknown"]
STORE_WAIT = 5.0  # seconds a background store may take before the next step reads it
# The canary blob asked for with its connection closed at once: over the warmer's
# STORED_MIN, like the blobs it reads that way (a smaller one may be relayed whole first).
DROPPED_SIZE = 12 << 20
PROBE_FILE = "probe-{mirror}.json"
_SCHEME = re.compile(r"[a-z][a-z0-9._-]{0,31}")  # an auth scheme token


class ProbeError(RuntimeError):
    """The probe could not run (no push access to the upstream, the mirror unreachable)."""


@dataclass
class Finding:
    """One fact about the mirror: its value, how it was learned, the evidence, and the
    config key it implies (None: informs a recommendation only) with its configured value."""

    name: str
    value: Any
    how: How
    evidence: str
    key: str | None = None
    configured: Any = None

    @property
    def disagrees(self) -> bool:
        return (
            self.key is not None
            and self.how != "unknown"
            and self.value is not None
            and self.value != self.configured
        )


@dataclass
class ProbeReport:
    mirror: str
    parent: str
    upstream: str
    repository: str
    parent_view: bool  # whether the parent's side was counted
    rtt_ms: float | None
    parent_rtt_ms: float | None
    findings: list[Finding] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    probed_at: float = field(default_factory=time.time)

    def finding(self, name: str) -> Finding:
        return next(f for f in self.findings if f.name == name)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["disagreements"] = [f.name for f in self.findings if f.disagrees]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        data = {k: v for k, v in data.items() if k != "disagreements"}
        findings = [Finding(**f) for f in data.pop("findings", [])]
        return cls(**data, findings=findings)


def disagreements(report: ProbeReport, config: Config) -> list[str]:
    """Each configured key that differs from what ``report`` measured or inferred, one line
    each (the configured values are read from ``config`` now, not from the report)."""
    out = []
    for f in report.findings:
        if f.key is None:
            continue
        now = configured_value(config, report.mirror, f.key)
        if f.how != "unknown" and f.value is not None and f.value != now:
            out.append(f"{f.key} = {now!r}, but the probe {f.how} {f.value!r} ({f.evidence})")
    return out


def configured_value(config: Config, mirror: str, key: str) -> Any:
    m = config.mirrors[mirror]
    leaf = key.rsplit(".", 1)[-1]
    return getattr(m.link, leaf) if ".link." in key else getattr(m, leaf)


def save(report: ProbeReport, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROBE_FILE.format(mirror=report.mirror)
    path.write_text(json.dumps(report.as_dict(), indent=1))
    return path


def load_saved(directory: Path, mirror: str) -> ProbeReport | None:
    path = directory / PROBE_FILE.format(mirror=mirror)
    try:
        return ProbeReport.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


# -- the canary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """Random blobs: ``shared`` (also pushed under ``other``), ``head`` (asked by HEAD while
    cold), ``bulk`` (read cold, for the bytes ratio), ``dropped`` (asked for with the
    connection closed at once); two configs so the tag can move."""

    repository: str
    other: str
    shared: bytes
    head: bytes
    bulk: bytes
    configs: tuple[bytes, bytes]
    dropped: bytes

    @classmethod
    def make(cls, repository: str) -> Canary:
        cfg = [
            json.dumps({"architecture": "amd64", "os": "linux", "canary": secrets.token_hex(8)})
            for _ in range(2)
        ]
        return cls(
            repository, f"{repository}-b", secrets.token_bytes(16 * 1024),
            secrets.token_bytes(16 * 1024), secrets.token_bytes(192 * 1024),
            (cfg[0].encode(), cfg[1].encode()), secrets.token_bytes(DROPPED_SIZE),
        )  # fmt: skip

    @staticmethod
    def manifest(config: bytes, layers: list[bytes]) -> bytes:
        def desc(media_type: str, data: bytes) -> dict[str, Any]:
            return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}

        body = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": desc(OCI_CONFIG, config),
            "layers": [desc(OCI_LAYER, b) for b in layers],
        }  # fmt: skip
        return json.dumps(body).encode()


async def push_canary(client: RegistryClient, canary: Canary, upstream: str) -> dict[str, str]:
    """Push the canary (tag ``canary`` in both repositories); {name: digest} of its parts."""
    try:
        for blob in (canary.shared, canary.head, canary.bulk, canary.dropped, *canary.configs):
            await client.push_blob(canary.repository, blob)
        await client.push_blob(canary.other, canary.shared)
        await client.push_blob(canary.other, canary.configs[0])
        first = Canary.manifest(canary.configs[0], [canary.shared, canary.head, canary.bulk])
        await client.put_manifest(canary.repository, "canary", first, OCI_MANIFEST)
        other = Canary.manifest(canary.configs[0], [canary.shared])
        await client.put_manifest(canary.other, "canary", other, OCI_MANIFEST)
    except RegistryError as exc:
        raise ProbeError(
            f"cannot push the canary image to upstream {upstream} ({client.url}): {exc}; "
            "the probe needs push access to a scratch repository there (--repository names "
            "one, credentials as in upstreams.NAME.credentials)"
        ) from None
    moved = Canary.manifest(canary.configs[1], [canary.shared, canary.head, canary.bulk])
    return {
        "shared": sha256_digest(canary.shared), "head": sha256_digest(canary.head),
        "bulk": sha256_digest(canary.bulk), "first": sha256_digest(first),
        "dropped": sha256_digest(canary.dropped),
        "moved": sha256_digest(moved), "moved_body": moved.decode(),
    }  # fmt: skip


# -- the parent's side --------------------------------------------------------------------


class ParentView:
    """The counters of a sandbox front between the mirror and its parent (tests)."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url.rstrip("/")

    @classmethod
    async def detect(cls, http: httpx.AsyncClient, url: str) -> ParentView | None:
        """A view of the parent at ``url`` when it is a sandbox front (only ever on this
        host: a production parent is not asked)."""
        if httpx.URL(url).host not in ("127.0.0.1", "localhost", "::1"):
            return None
        try:
            resp = await http.get(f"{url.rstrip('/')}/_front/stats", timeout=5)
            data = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return cls(http, url) if isinstance(data, dict) and "blobs" in data else None

    async def snapshot(self) -> dict[str, Any]:
        resp = await self.http.get(f"{self.url}/_front/stats", timeout=10)
        data: dict[str, Any] = resp.json()
        return data


def _blob(stats: dict[str, Any], digest: str, what: str) -> int:
    return int(stats.get("blobs", {}).get(digest, {}).get(what, 0))


def _pings(stats: dict[str, Any]) -> int:
    return int(stats.get("pings", stats.get("requests", {}).get("other", {}).get("GET", 0)))


def _to_parent(stats: dict[str, Any]) -> int:
    """Requests that reached the parent for content (manifests and blobs)."""
    req = stats.get("requests", {})
    return sum(int(n) for kind in ("manifest", "blob") for n in req.get(kind, {}).values())


def _delta(after: dict[str, Any], before: dict[str, Any], fn: Callable[..., int], *a: Any) -> int:
    return fn(after, *a) - fn(before, *a)


# -- pure assessments -----------------------------------------------------------------------


def assess_scope(stored_under_other: bool | None, parent_requests: int | None) -> Finding:
    if parent_requests is not None:
        value = "global" if parent_requests == 0 else "repository"
        why = (
            f"a blob cached under one repository sent {parent_requests} request(s) "
            "to the parent under another"
        )
        return Finding("cache_scope", value, "measured", why)
    if stored_under_other is None:
        return Finding("cache_scope", None, "unknown", "answers do not tell storage from relay")
    value = "global" if stored_under_other else "repository"
    how = "answered from storage" if stored_under_other else "relayed from the parent"
    why = f"a blob cached under one repository was {how} under another"
    return Finding("cache_scope", value, "measured", why)


def assess_multiplicity(parent_bytes: int | None, size: int, looks_distribution: bool) -> Finding:
    if parent_bytes is not None:
        ratio = parent_bytes / size
        why = f"the parent served {ratio:.2f} x the bytes of a cold blob read once"
        return Finding("fetch_multiplicity", max(1, round(ratio)), "measured", why)
    if looks_distribution:
        return Finding("fetch_multiplicity", 2, "inferred", "answers look like CNCF distribution "
                       "(2.8 streams a cold blob and stores it in a second, background fetch); "
                       "the parent's bytes were not counted")  # fmt: skip
    return Finding("fetch_multiplicity", None, "unknown", "the parent's bytes could not be counted")


def assess_dropped(stored: bool | None, parent_bytes: int | None, size: int) -> Finding:
    """What ``cold_blobs`` the mirror allows: does it store a blob whose request was closed
    at once (``stored`` None: its answers do not tell)?"""
    if stored is None:
        return Finding("cold_blobs", "relay", "inferred", "nothing tells a stored answer from "
                       "a relayed one: cold blobs are read as relayed")  # fmt: skip
    cost = f"; the parent served {parent_bytes / size:.2f} x its bytes" if parent_bytes else ""
    if stored:
        return Finding("cold_blobs", "stored", "measured", "a cold blob whose request was "
                       "closed at once was stored anyway" + cost)  # fmt: skip
    return Finding("cold_blobs", "relay", "measured", "a cold blob whose request was closed "
                   f"at once was not stored within {STORE_WAIT:.0f} s" + cost)  # fmt: skip


def assess_repings(
    pings: int | None, requests: int | None, challenge: str | None, rtt_ms: float | None
) -> Finding:
    cost = f"; about {rtt_ms:.0f} ms more per request through it, one at a time" if rtt_ms else ""
    if pings is not None and requests:
        per = pings / requests
        yes = per >= 0.5
        return Finding("parent_repinged", yes, "measured", f"{pings} GET /v2/ at the parent for "
                       f"{requests} request(s) it sent there" + (cost if yes else ""))  # fmt: skip
    if challenge is None:
        return Finding("parent_repinged", None, "unknown", "the parent's /v2/ did not answer")
    yes = challenge == "none"
    why = "sends no auth challenge" if yes else f"sends a {challenge} challenge (cached)"
    why += "; distribution 2.8 re-pings a parent without one before each request"
    return Finding("parent_repinged", yes, "inferred", why + (cost if yes else ""))


def assess_concurrency(
    repinged: bool | None, rtt_ms: float | None, bandwidth: int | None, configured: int
) -> Finding:
    """Requests in flight through the mirror that keep its parent link busy: enough to cover
    the round trip at the link's rate (1 MiB each, at least 4, at most 32); never lower than
    configured. Re-pinged requests go one at a time, whatever the concurrency."""
    if repinged:
        why = "requests to the parent wait for each other's re-pings: concurrency does not help"
        return Finding("link_concurrency", None, "unknown", why)
    if not rtt_ms or not bandwidth:
        return Finding("link_concurrency", None, "unknown", "no round trip or no link cap")
    need = min(32, max(4, math.ceil(bandwidth * rtt_ms / 1000 / 2**20) + 2))
    why = f"{need} requests of 1 MiB in flight cover a {rtt_ms:.0f} ms round trip at the cap"
    return Finding("link_concurrency", max(need, configured), "inferred", why)


def recommendations(report: ProbeReport, config: Config) -> list[str]:
    m = config.mirrors[report.mirror]
    out = []
    repinged = report.finding("parent_repinged")
    if repinged.value:
        out.append(
            f"{report.mirror} re-pings its parent {report.parent} before each request it sends "
            "there, one at a time: give it a token-authenticated parent (a parent that answers "
            "/v2/ with a Bearer challenge) or expect a round trip per request; raising "
            f"mirrors.{report.mirror}.link.concurrency does not help it"
        )
    for f in report.findings:
        if f.key is None or f.how == "unknown" or f.value is None:
            continue
        if f.value != configured_value(config, report.mirror, f.key):
            out.append(f"set {f.key} = {json.dumps(f.value)} ({f.how}: {f.evidence})")
    head = report.finding("head_fetches")
    if head.value is False and m.kind == "distribution":
        out.append(
            f"a HEAD on a cold blob does not fetch at {report.mirror}: reconcile's HEADs cost "
            "no parent bytes there, and do not restore what they find lost"
        )
    return out


# -- the probe ------------------------------------------------------------------------------


async def _rtt(client: httpx.AsyncClient, url: str, n: int = 3) -> tuple[float | None, str | None]:
    """The shortest of ``n`` ``GET /v2/`` round trips (ms) and the auth challenge it got."""
    best, challenge = None, None
    for _ in range(n):
        t0 = time.monotonic()
        try:
            resp = await client.get(f"{url.rstrip('/')}/v2/", timeout=10)
        except httpx.HTTPError:
            return None, None
        ms = (time.monotonic() - t0) * 1000
        best = ms if best is None else min(best, ms)
        auth = auth_scheme(resp.headers.get("www-authenticate", ""))
        challenge = auth if resp.status_code == 401 and auth else "none"
    return best, challenge


def auth_scheme(header: str) -> str:
    """The scheme of a ``WWW-Authenticate`` value (``bearer``, ``basic``), lower case;
    ``unrecognised`` for anything that is not a plain token (the value comes from the
    network and goes into the report), ``""`` when absent."""
    scheme = header.split(" ", 1)[0].lower()
    if not scheme:
        return ""
    return scheme if _SCHEME.fullmatch(scheme) else "unrecognised"


async def _answer(client: RegistryClient, method: str, repo: str, digest: str) -> httpx.Headers:
    """One blob request through the mirror, read to its end; its headers (a 404 has none)."""
    return await client.blob_headers(repo, digest, method) or httpx.Headers()


async def _settled(view: ParentView | None, step: Callable[[], Awaitable[Any]]) -> tuple[
    dict[str, Any] | None, dict[str, Any] | None
]:  # fmt: skip
    """Counters before ``step`` and once the parent has gone quiet after it."""
    before = await view.snapshot() if view else None
    await step()
    if view is None:
        await asyncio.sleep(1.0)  # a background store, unseen: give it time
        return None, None
    deadline, last = time.monotonic() + STORE_WAIT, -1
    after = await view.snapshot()
    while time.monotonic() < deadline and after.get("bytes_served") != last:
        last = after.get("bytes_served", 0)
        await asyncio.sleep(0.4)
        after = await view.snapshot()
    return before, after


async def probe(config: Config, mirror: str, repository: str | None = None) -> ProbeReport:
    """Probe ``mirror`` with a canary pushed to ``repository`` of its upstream (default a
    fresh ``warmer-probe/canary-<random>``)."""
    m = config.mirrors[mirror]
    upstream = config.upstream_of(mirror)
    parent = m.parent
    parent_url = (
        config.mirrors[parent].url if parent in config.mirrors else config.upstreams[parent].url
    )
    repo = repository or f"warmer-probe/canary-{secrets.token_hex(4)}"
    canary = Canary.make(repo)
    async with httpx.AsyncClient() as http, upstream_client(config, upstream) as up, mirror_client(
        config, mirror
    ) as mc:  # fmt: skip
        rtt, _ = await _rtt(http, m.url)
        if rtt is None:
            raise ProbeError(f"mirror {mirror} at {m.url} does not answer /v2/")
        parts = await push_canary(up, canary, upstream)
        view = await ParentView.detect(http, parent_url)
        parent_rtt, challenge = await _rtt(http, parent_url)
        path, other = m.repository_for(repo), m.repository_for(canary.other)
        report = ProbeReport(mirror, parent, upstream, repo, view is not None, rtt, parent_rtt)
        try:
            await _steps(report, config, mc, up, view, parts, path, other, canary, challenge)
        except (RegistryError, httpx.HTTPError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            raise ProbeError(f"probing {mirror} ({m.url}): {why}") from None
    report.recommendations = recommendations(report, config)
    return report


async def _steps(
    report: ProbeReport, config: Config, mc: RegistryClient, up: RegistryClient,
    view: ParentView | None, parts: dict[str, str], path: str, other: str, canary: Canary,
    challenge: str | None,
) -> None:  # fmt: skip
    m, name = config.mirrors[report.mirror], report.mirror
    key = f"mirrors.{name}"

    # 1. Answers: a cold GET (relayed), then the same GET once stored; bytes and pings.
    cold: list[httpx.Headers] = []

    async def read_bulk() -> None:
        cold.append(await _answer(mc, "GET", path, parts["bulk"]))

    b0, b1 = await _settled(view, read_bulk)
    warm = await _answer(mc, "GET", path, parts["bulk"])
    told = served_from_storage(warm) and not served_from_storage(cold[0])
    looks = "docker-distribution-api-version" in warm and told
    report.findings.append(Finding(
        "answers_distinguishable", told, "measured",
        "a stored blob is answered with Accept-Ranges/Cache-Control, a relayed one without"
        if told else "the answers of a cold and a stored blob carry the same headers",
    ))  # fmt: skip
    report.findings.append(Finding(
        "kind", "distribution" if looks else "other", "inferred",
        "Docker-Distribution-Api-Version and Go file-server headers on stored answers"
        if looks else "answers unlike CNCF distribution's", f"{key}.kind", m.kind,
    ))  # fmt: skip
    parent_bytes = None
    pings = requests = None
    if b0 is not None and b1 is not None:
        parent_bytes = _delta(b1, b0, _blob, parts["bulk"], "bytes_served")
        pings, requests = _delta(b1, b0, _pings), _delta(b1, b0, _to_parent)
    f = assess_multiplicity(parent_bytes, len(canary.bulk), looks)
    f.key, f.configured = f"{key}.fetch_multiplicity", m.fetch_multiplicity
    report.findings.append(f)

    # 2. HEAD on a cold blob: does a GET afterwards come from storage (or the parent)?
    async def head_cold() -> None:
        await _answer(mc, "HEAD", path, parts["head"])

    h0, h1 = await _settled(view, head_cold)
    if h0 is not None and h1 is not None:
        got = _delta(h1, h0, _blob, parts["head"], "bytes_served") > 0
        report.findings.append(Finding("head_fetches", got, "measured", "the parent served "
                               f"{'the blob' if got else 'nothing'} for a HEAD"))  # fmt: skip
    elif told:
        got = served_from_storage(await _answer(mc, "GET", path, parts["head"]))
        why = f"a GET after a HEAD was answered {'from storage' if got else 'by relay'}"
        report.findings.append(Finding("head_fetches", got, "measured", why))
    else:
        report.findings.append(Finding("head_fetches", None, "unknown", "nothing tells"))

    # 3. Cache scope: the shared blob read under one repository, then asked under another.
    async def read_shared() -> None:
        await _answer(mc, "GET", path, parts["shared"])

    await _settled(view, read_shared)
    s0 = await view.snapshot() if view else None
    scoped = served_from_storage(await _answer(mc, "HEAD", other, parts["shared"]))
    s1 = await view.snapshot() if view else None
    sent = _delta(s1, s0, _blob, parts["shared"], "GET") + _delta(
        s1, s0, _blob, parts["shared"], "HEAD"
    ) if s0 is not None and s1 is not None else None  # fmt: skip
    f = assess_scope(scoped if told else None, sent)
    f.key, f.configured = f"{key}.cache_scope", m.cache_scope
    report.findings.append(f)

    # 4. Tags: cached by the mirror, moved at the upstream, asked again.
    first = (await mc.head_manifest(path, "canary")).digest
    await up.put_manifest(canary.repository, "canary", parts["moved_body"].encode(), OCI_MANIFEST)
    t0 = await view.snapshot() if view else None
    second = await mc.get_manifest(path, "canary")
    t1 = await view.snapshot() if view else None
    follows = first == parts["first"] and second.digest == parts["moved"]
    report.findings.append(Finding(
        "tag_to_parent", follows, "measured",
        "a moved tag was answered with its new digest at once" if follows
        else "the mirror answered a moved tag with its old digest (a metadata cache)",
    ))  # fmt: skip
    if t0 is not None and t1 is not None:
        pings = (pings or 0) + _delta(t1, t0, _pings)
        requests = (requests or 0) + _delta(t1, t0, _to_parent)
    reping = assess_repings(pings, requests, challenge, report.parent_rtt_ms)
    report.findings.append(reping)
    rtt = report.parent_rtt_ms or report.rtt_ms
    f = assess_concurrency(reping.value, rtt, m.link.bandwidth, m.link.concurrency)
    f.key, f.configured = f"{key}.link.concurrency", m.link.concurrency
    report.findings.append(f)
    await _dropped(report, mc, view, parts["dropped"], path, len(canary.dropped), told, key, m)
    report.findings.append(Finding(
        "expiry", None, "unknown", "not measurable in a probe (it takes the mirror's TTL); "
        "CNCF distribution 2.8 schedules it at the first fetch", f"{key}.expiry", m.expiry,
    ))  # fmt: skip


async def _dropped(
    report: ProbeReport, mc: RegistryClient, view: ParentView | None, digest: str,
    path: str, size: int, told: bool, key: str, m: MirrorConfig,
) -> None:  # fmt: skip
    """5. A cold blob asked for with the connection closed at once: stored anyway?"""
    stored: bool | None = None

    async def trigger() -> None:
        nonlocal stored
        await mc.trigger_blob(path, digest)
        if not told:
            return
        deadline = time.monotonic() + STORE_WAIT
        pause = 0.25
        while time.monotonic() < deadline:
            # An ask too early is relayed (and dropped), which costs parent bytes and skews
            # the ratio measured: wait first, and longer after each early ask.
            await asyncio.sleep(pause)
            pause = min(2 * pause, 2.0)
            if await mc.fetch_stored_blob(path, digest, size=size) is not None:
                stored = True
                return
        stored = False

    d0, d1 = await _settled(view, trigger)
    parent = _delta(d1, d0, _blob, digest, "bytes_served") if d0 and d1 else None
    f = assess_dropped(stored, parent, size)
    f.key, f.configured = f"{key}.cold_blobs", m.cold_blobs
    report.findings.append(f)
