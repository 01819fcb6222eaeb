"""CNCF distribution (registry / pull-through mirror) logs: the mirror's own record of pulls.

Three shapes, detected per line: logrus text (``msg="response completed" ...
http.request.uri=/v2/<name>/manifests/<ref>``), logrus JSON, the combined access log the
registry writes next to them (used only when the file has no logrus request lines, so a
request is never counted twice), and notification envelopes (``{"events": [...]}``).

One client pull is one manifest request by tag (HEAD or GET) followed by GETs by digest
(index, then platform manifest). A tag request opens a pull for (client address,
repository); digest requests from the same client within ``WINDOW`` join it (a GET marks
it a real pull and, after a HEAD, gives the digest); a HEAD with no GET is a client that
already had the image. A digest request with no open pull is a pull by digest. Requests
with a ``registry-warmer`` user agent (the warmer's own fetches) and non-2xx/304 answers
are ignored.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from analytics.ingest.base import Emit, Hit, LineParser, parse_iso
from analytics.ingest.reader import ReadStats

WINDOW = timedelta(seconds=60)
WARMER_AGENT = "registry-warmer"

_URI = re.compile(r"^/v2/(.+)/manifests/([^/?#\s]+)")
# The lookbehind keeps findall linear: without it, a long run of word characters with no
# "=" is tried from each of its positions (a 64 KiB line took 18 s).
_FIELD = re.compile(r'(?<![\w.])([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)')
_COMBINED = re.compile(
    r'^(\S+) \S+ \S+ \[([^\]]+)\] "(\w+) (\S+) HTTP/[\d.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"'
)


class _Pull:
    __slots__ = ("digest", "got", "hit", "ts")

    def __init__(self, hit: Hit, ts: datetime, got: bool) -> None:
        self.hit, self.ts, self.got, self.digest = hit, ts, got, None


class DistributionParser(LineParser):
    name = "distribution"
    keywords = (b"/manifests/",)
    scan_unused = False  # a registry's own log: every pull is a request line, read above

    def __init__(
        self, emit: Emit, stats: ReadStats, default_time: datetime, upstream: str | None = None
    ) -> None:
        super().__init__(emit, stats, default_time)
        self.upstream = upstream
        self.seen_logrus = False
        self.open: OrderedDict[tuple[str, str], _Pull] = OrderedDict()

    def prime(self, head: str) -> None:
        """Called with the file's first block: prefer logrus lines if there are any."""
        self.seen_logrus = 'msg="response completed' in head or '"http.request.uri"' in head

    def feed(self, line: str) -> None:
        if line.startswith("{"):
            self._json(line)
        elif line.startswith("time="):
            self._logrus(line)
        elif not self.seen_logrus:
            self._combined(line)

    # -- line shapes -----------------------------------------------------------------
    def _logrus(self, line: str) -> None:
        if 'msg="response completed' not in line:
            return
        self.seen_logrus = True
        fields = {k: v.strip('"') for k, v in _FIELD.findall(line)}
        self._request(fields)

    def _json(self, line: str) -> None:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: arrays nested 10^4 deep
            self.stats.malformed += 1
            return
        if not isinstance(obj, dict):
            self.stats.malformed += 1
            return
        if "events" in obj:
            self._envelope(obj)
            return
        if str(obj.get("msg", "")).startswith("response completed"):
            self.seen_logrus = True
            self._request({k: str(v) for k, v in obj.items()})

    def _combined(self, line: str) -> None:
        m = _COMBINED.match(line)
        if not m:
            return
        try:
            ts = datetime.strptime(m.group(2), "%d/%b/%Y:%H:%M:%S %z")
        except ValueError:
            self.stats.malformed += 1
            return
        self._use(ts, m.group(3), m.group(4), int(m.group(5)), m.group(1), None, m.group(6))

    def _request(self, f: dict[str, str]) -> None:
        ts = parse_iso(f.get("time", "").replace("Z", "+00:00"))
        try:
            status = int(f.get("http.response.status", "0"))
        except ValueError:
            status = 0
        if ts is None:
            self.stats.malformed += 1
            return
        self._use(
            ts,
            f.get("http.request.method", ""),
            f.get("http.request.uri", ""),
            status,
            f.get("http.request.remoteaddr", ""),
            f.get("http.request.host"),
            f.get("http.request.useragent", ""),
        )

    def _envelope(self, obj: dict[str, Any]) -> None:
        events = obj.get("events")
        if not isinstance(events, list):
            self.stats.malformed += 1
            return
        for ev in events:
            try:
                if ev.get("action") != "pull":
                    continue
                target = ev["target"]
                if "manifest" not in str(target.get("mediaType", "")) and "/manifests/" not in str(
                    target.get("url", "")
                ):
                    continue
                ts = parse_iso(str(ev["timestamp"]).replace("Z", "+00:00"))
                req = ev.get("request") or {}
                repo, tag, digest = target["repository"], target.get("tag"), target.get("digest")
            except (KeyError, TypeError, AttributeError):
                self.stats.malformed += 1
                continue
            if ts is None or WARMER_AGENT in str(req.get("useragent", "")):
                continue
            addr = str(req.get("addr", "")).rsplit(":", 1)[0]
            host = req.get("host")
            key = (addr, repo)
            self._expire(ts)
            if tag:
                self._close(key)
                self.emit(Hit(self._name(repo, tag), ts, digest, True, mirror=host))
                self.open[key] = _Pull(Hit(""), ts, True)  # joins the digest GETs that follow
            elif key not in self.open and digest:
                self.emit(Hit(self._name(repo, None, digest), ts, digest, True, mirror=host))

    # -- pull folding ----------------------------------------------------------------
    def _name(self, repo: str, tag: str | None, digest: str | None = None) -> str:
        base = f"{self.upstream}/{repo}" if self.upstream else repo
        return f"{base}@{digest}" if digest else f"{base}:{tag}"

    def _use(
        self,
        ts: datetime,
        method: str,
        uri: str,
        status: int,
        addr: str,
        host: str | None,
        agent: str,
    ) -> None:
        if method not in ("GET", "HEAD") or not (200 <= status < 300 or status == 304):
            return
        if WARMER_AGENT in agent:
            return
        m = _URI.match(uri)
        if not m:
            return
        repo, ref = m.group(1), m.group(2)
        key = (addr.rsplit(":", 1)[0], repo)
        self._expire(ts)
        by_digest = ":" in ref
        if not by_digest:
            self._close(key)
            hit = Hit(self._name(repo, ref), ts, None, None, mirror=host)
            self.open[key] = _Pull(hit, ts, method == "GET")
            return
        pull = self.open.get(key)
        if pull is not None:
            if method == "GET":
                if not pull.got and pull.hit.digest is None:
                    pull.hit.digest = ref
                pull.got = True
            return
        self.emit(Hit(self._name(repo, None, ref), ts, ref, method == "GET", mirror=host))

    def _close(self, key: tuple[str, str]) -> None:
        pull = self.open.pop(key, None)
        if pull is not None and pull.hit.reference:
            pull.hit.pulled = pull.got
            self.emit(pull.hit)

    def _expire(self, now: datetime) -> None:
        while self.open:
            key, pull = next(iter(self.open.items()))
            if now - pull.ts <= WINDOW:
                break
            self._close(key)

    def finish(self) -> None:
        for key in list(self.open):
            self._close(key)
