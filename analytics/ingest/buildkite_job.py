"""Buildkite job logs, as the agent uploads them (``buildkite``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from analytics.ingest.base import Emit, Hit, plain_ref, strip_ansi
from analytics.ingest.cilog import HeldLog
from analytics.ingest.clients import KEYWORDS as CLIENT_KEYWORDS
from analytics.ingest.reader import ReadStats

_BK_STAMP = re.compile(r"\x1b_bk;t=(\d{1,15})\x07")
_BK_PLUGIN = re.compile(r"^[-~+]{3} :docker: (Pulling|Running command in) (\S+)$")
_BK_SECTION = ("--- ", "~~~ ", "+++ ")
_BK_SLUG = re.compile(r"com\.buildkite\.pipeline_slug=([\w.-]+)")


class BuildkiteParser(HeldLog):
    """Buildkite job log as the agent uploads it (the raw log of the API, ``bk job log``):
    each line starts with ``ESC _bk;t=<epoch ms> BEL``, its time. The docker plugin prints
    ``--- :docker: Pulling IMAGE`` before the engine's pull (``always-pull``) and
    ``--- :docker: Running command in IMAGE`` before ``docker run``, which pulls an absent
    image itself (``Unable to find image``). So a run is one use of its image: the pull
    before it, the pull ``docker run`` printed, or else an image already present. The
    ``docker run`` line's ``com.buildkite.pipeline_slug`` label names the pipeline. Other
    steps' docker, podman and BuildKit output reads as in their own logs."""

    name = "buildkite"
    keywords = (
        *CLIENT_KEYWORDS,
        b":docker: ",
        b"\x07--- ",
        b"\x07~~~ ",
        b"\x07+++ ",
        b"pipeline_slug=",
    )

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        # The client's pulls meet the plugin's container before they are held.
        super().__init__(emit, stats, default_time, client_emit=self._client_hit)
        self.plugin_pulls: set[str] = set()  # pulled by the plugin since its last run
        self.running: Hit | None = None  # the plugin's container, until its pull or the end

    def feed(self, line: str) -> None:
        ts: datetime | None = None
        stamp = _BK_STAMP.search(line)
        if stamp:
            try:
                ts = datetime.fromtimestamp(int(stamp.group(1)) / 1000, tz=UTC)
            except (ValueError, OverflowError, OSError):
                ts = None
        content = strip_ansi(line).strip()
        if content.startswith(_BK_SECTION):
            self._close_run()
            plugin = _BK_PLUGIN.match(content) if ":docker: " in content else None
            if plugin:
                self.known += 1
                image = plugin.group(2)
                if plugin.group(1) == "Pulling":
                    self.plugin_pulls.add(plain_ref(image))
                    self.client.open_pull(image, ts)
                elif plain_ref(image) in self.plugin_pulls:
                    self.plugin_pulls.discard(plain_ref(image))  # that pull was this run's use
                else:
                    self.running = Hit(image, ts, None, False, source=self.name)
            return
        if content.startswith("$ "):
            content = content[2:]
            if content.startswith("docker run ") and "com.buildkite.pipeline_slug=" in content:
                slug = _BK_SLUG.search(content)
                if slug:
                    self.client.pipeline = slug.group(1)
        self.client.feed(content, ts)

    def _client_hit(self, hit: Hit) -> None:
        running = self.running
        if running is not None and plain_ref(hit.reference) == plain_ref(running.reference):
            self.running = None  # docker run pulled the image it runs: that is the use
            running.digest, running.pulled = hit.digest, hit.pulled
            hit = running
        self._hold(hit)

    def _close_run(self) -> None:
        if self.running is not None:
            hit, self.running = self.running, None
            self._hold(hit)

    def finish(self) -> None:
        super().finish()
        self._close_run()
        self._release()
        self.plugin_pulls.clear()
