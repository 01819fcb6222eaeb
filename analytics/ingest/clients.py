"""Container client output: docker CLI pulls, podman/buildah pulls, BuildKit plain progress.

``ClientOutput`` is a small state machine over the lines those tools print. It is used on
its own for a saved client log and inside the CI parsers (GitHub, GitLab, Jenkins), which
strip their own line prefixes first. One pull gives one hit: the command line, the progress
and the final status are folded together.
"""

from __future__ import annotations

import re
from datetime import datetime

from analytics.ingest.base import Emit, Hit, LineParser, pull_target, strip_ansi
from analytics.ingest.reader import ReadStats

KEYWORDS: tuple[bytes, ...] = (
    b" pull ",  # docker|podman|buildah|nerdctl pull
    b"Pulling from",
    b"Digest: sha256:",
    b"Status: ",
    b"Trying to pull",
    b"Copying blob",
    b"Writing manifest",
    b"load metadata for",
    b"resolve image config for",
    b"FROM ",
    b"CACHED",
    b"DONE",
    b"ERROR",
    b"B / ",  # BuildKit layer download progress: "12.5MB / 49.6MB"
    b"extracting sha256",
    b"load build definition",
)

_PULL_CMD = re.compile(r"(?:^|[\s/'\"$+>])(docker|podman|buildah|nerdctl)(?: image)? pull\s+(.*)$")
_STATUS = re.compile(r"Status: (Downloaded newer image|Image is up to date) for (\S+)")
_DIGEST = re.compile(r"^\s*Digest: (sha256:[0-9a-f]{64})")
# Greedy, trailing dots stripped in code: a lazy token before `\.*$` is quadratic on a line
# with a long run of dots in it (7 s for 60 KB).
_TRYING = re.compile(r"Trying to pull (\S+)$")
_BK_STEP = re.compile(r"^#(\d+) (.*)$")
_BK_FROM = re.compile(r"^(?:\[[^\]]*\] )?FROM (\S+)")
_BK_META = re.compile(r"^\[internal\] load metadata for (\S+)")
_BK_RESOLVE = re.compile(r"^resolve image config for docker-image://(\S+)")
_BK_DOWNLOAD = re.compile(r"^(?:sha256:[0-9a-f]+ \S+ / \S+|extracting sha256:)")


class ClientOutput:
    """Folds client output lines into hits. ``feed(content, ts)`` with the prefix removed."""

    def __init__(self, emit: Emit, source: str | None = None) -> None:
        self.emit = emit
        self.source = source
        self.pipeline: str | None = None
        self.runner: str | None = None
        # docker/podman pull in progress: [reference, ts, tool, saw_output]
        self.pending: list[object] | None = None
        self.digest: str | None = None
        self.blobs_copied = 0
        self.blobs_skipped = 0
        # BuildKit: step id -> [reference, ts, downloaded]; metadata refs never FROM'd
        self.steps: dict[str, list[object]] = {}
        self.meta: dict[str, datetime | None] = {}

    def _hit(self, ref: str, ts: datetime | None, digest: str | None, pulled: bool | None) -> None:
        self.emit(
            Hit(
                ref,
                ts,
                digest,
                pulled,
                pipeline=self.pipeline,
                runner=self.runner,
                source=self.source,
            )
        )

    # -- docker / podman ------------------------------------------------------------
    def _flush_pending(self) -> None:
        if self.pending is not None:
            ref, ts = self.pending[0], self.pending[1]
            assert isinstance(ref, str)
            assert ts is None or isinstance(ts, datetime)
            self._hit(ref, ts, self.digest, None)
        self._reset_pull()

    def _reset_pull(self) -> None:
        self.pending = None
        self.digest = None
        self.blobs_copied = self.blobs_skipped = 0

    def feed(self, line: str, ts: datetime | None) -> None:
        if line.startswith("#"):
            self._buildkit(line, ts)
            return
        if " pull " in line:
            m = _PULL_CMD.search(line)
            if m:
                target = pull_target(m.group(2))
                if target is None:
                    return
                if self.pending is not None:
                    same = self.pending[0] == target and not self.pending[3]
                    if same:  # the same command echoed twice (a step title, then the script)
                        return
                    self._flush_pending()
                self.pending = [target, ts, m.group(1), False]
                return
        if "Status: " in line:
            m2 = _STATUS.search(line)
            if m2:
                pulled = m2.group(1).startswith("Downloaded")
                start = ts if self.pending is None else self.pending[1]
                assert start is None or isinstance(start, datetime)
                self._hit(m2.group(2), start or ts, self.digest, pulled)
                self._reset_pull()
            return
        if "Digest: " in line:
            m3 = _DIGEST.match(line)
            if m3:
                self.digest = m3.group(1)
                if self.pending is not None:
                    self.pending[3] = True
            return
        if "Pulling from" in line:
            if self.pending is not None:
                self.pending[3] = True
            return
        if "Trying to pull" in line:
            m4 = _TRYING.search(line)
            if m4:
                if self.pending is not None and self.pending[3]:
                    self._flush_pending()
                start = ts if self.pending is None else self.pending[1]
                target = m4.group(1).rstrip(".") or m4.group(1)[:1]
                self.pending = [target, start or ts, "podman", True]
            return
        if "Copying blob" in line:
            if "already exists" in line:
                self.blobs_skipped += 1
            else:
                self.blobs_copied += 1
            return
        if "Writing manifest" in line and self.pending is not None:
            ref, start = self.pending[0], self.pending[1]
            assert isinstance(ref, str)
            assert start is None or isinstance(start, datetime)
            pulled = self.blobs_copied > 0 or self.blobs_skipped == 0
            self._hit(ref, start, None, pulled)
            self._reset_pull()

    # -- BuildKit -------------------------------------------------------------------
    def _buildkit(self, line: str, ts: datetime | None) -> None:
        m = _BK_STEP.match(line)
        if not m:
            return
        step, rest = m.group(1), m.group(2)
        state = self.steps.get(step)
        if state is not None:
            if rest.startswith("CACHED"):
                self._step_done(step, False)
            elif rest.startswith("DONE"):
                self._step_done(step, bool(state[2]))
            elif rest.startswith("ERROR"):
                self._step_done(step, None)
            elif _BK_DOWNLOAD.match(rest):
                state[2] = True
            return
        if "FROM " in rest:
            f = _BK_FROM.match(rest)
            if f and f.group(1) != "scratch":
                ref = f.group(1)
                self.steps[step] = [ref, ts, False]
                self.meta.pop(ref.split("@", 1)[0], None)
            return
        if rest.startswith("[internal] load build definition"):
            self.finish_buildkit()
            return
        meta = _BK_META.match(rest) or _BK_RESOLVE.match(rest)
        if meta:
            self.meta.setdefault(meta.group(1), ts)

    def _step_done(self, step: str, pulled: bool | None) -> None:
        ref, ts, _ = self.steps.pop(step)
        assert isinstance(ref, str)
        assert ts is None or isinstance(ts, datetime)
        _, _, digest = ref.partition("@")
        self._hit(ref, ts, digest or None, pulled)

    def finish_buildkit(self) -> None:
        for step in list(self.steps):
            self._step_done(step, None)
        for ref, ts in self.meta.items():
            self._hit(ref, ts, None, None)
        self.meta.clear()

    def finish(self) -> None:
        self._flush_pending()
        self.finish_buildkit()


class ClientLogParser(LineParser):
    """A saved docker / podman / BuildKit log: no line timestamps, the file's time is used."""

    keywords = KEYWORDS

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime, name: str) -> None:
        super().__init__(emit, stats, default_time)
        self.name = name
        self.client = ClientOutput(emit, source=name)

    def feed(self, line: str) -> None:
        self.client.feed(strip_ansi(line).strip(), None)

    def finish(self) -> None:
        self.client.finish()
