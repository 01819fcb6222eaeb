"""BuildKit progress output: plain (``#N ...``) and the tty screen (``=> ...``), as hits.

Plain output numbers each vertex (``#7 [build 1/4] FROM IMAGE@DIGEST``), then prints its
progress and ``#7 DONE`` / ``CACHED`` / ``ERROR``. A ``FROM`` vertex (or a
``docker-image://`` one, the Dockerfile frontend) is one image use: pulled when layers were
downloaded, present when cached. ``load metadata for IMAGE`` alone (an image resolved but
never pulled, or whose ``FROM`` was cut from the log) is a use with the outcome unknown.

Each build counts once per image however the log was cut or concatenated. A new build
starts at the ``#0 building with ...`` header, at a vertex number that goes back (a number
not seen in this build but lower than one that was), at a finished vertex printed again
with a title, at a vertex whose title changed, and at a second ``load metadata`` for an
image already resolved by a ``FROM`` in this build. A ``FROM`` cut with ``...`` takes its
reference from the vertex's ``resolve IMAGE@DIGEST`` line.

The tty screen (``[+] Building 12.3s (8/10)`` then ``=> [1/5] FROM ...`` lines, as pasted
into issues) is redrawn on a terminal: its ``FROM`` lines are kept per build by their step
label and emitted once at the build's end; a ``[+] Building`` time that goes back starts a
new build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from analytics.ingest.base import split_digest

HitFn = Callable[[str, datetime | None, str | None, bool | None], None]

_STEP = re.compile(r"^#(\d+) (.*)$")
_FROM = re.compile(r"^(?:\[([^\]]*)\] )?FROM (?:--platform=\S+ )?(\S+)")
_META = re.compile(r"^\[(?:[^\]]* )?internal\] load metadata for (\S+)")
_RESOLVE_CFG = re.compile(r"^resolve image config for (?:docker-image://)?(\S+)")
_RESOLVE = re.compile(r"^resolve (\S+@sha256:[0-9a-f]{64})(?:\s|$)")
_IMAGE_STEP = re.compile(r"^docker-image://(\S+)")
_DOWNLOAD = re.compile(r"^(?:sha256:[0-9a-f]+ \S+ / \S+|extracting sha256:)")
_FANCY = re.compile(r"^=> (=> )?(?:(CACHED|ERROR) )?(.*?)(?:\s+[0-9.]+s)?$")
_SCREEN = re.compile(r"^\[\+\] Building ([0-9.]+)s")
_END = ("DONE", "CACHED", "ERROR", "CANCELED")


@dataclass(slots=True)
class _Step:
    ref: str
    ts: datetime | None
    downloaded: bool = False
    cached: bool = False
    fancy: bool = False


def _name(ref: str) -> str:
    return ref.split("@", 1)[0]


class BuildKit:
    """BuildKit lines of one log, folded into hits (``hit(ref, ts, digest, pulled)``)."""

    def __init__(self, hit: HitFn) -> None:
        self.hit = hit
        self.known = 0
        self.steps: dict[str, _Step] = {}
        self.meta: dict[str, datetime | None] = {}
        self._reset()

    def _reset(self) -> None:
        self.seen: set[int] = set()
        self.done: set[int] = set()
        self.titles: dict[int, str] = {}
        self.max_id = 0
        self.used: set[str] = set()  # images with a FROM in this build
        self.screen_t = -1.0
        self.last_fancy: str | None = None

    # -- plain progress ---------------------------------------------------------------
    def plain(self, line: str, ts: datetime | None) -> None:
        m = _STEP.match(line)
        if not m:
            return
        n, rest = int(m.group(1)), m.group(2)
        if n == 0:
            if rest.startswith("building with"):
                self.known += 1
                self.new_build()
            return
        self._boundary(n, rest)
        key = f"#{n}"
        state = self.steps.get(key)
        if state is not None:
            if rest.startswith(_END):
                pulled = state.downloaded if rest.startswith("DONE") else None
                self._close(key, False if rest.startswith("CACHED") else pulled)
                self.done.add(n)
            elif not self._progress(state, rest) and "FROM " in rest:
                self.known += 1  # the title printed again when the printer returns to it
            return
        if rest.startswith(_END):
            self.done.add(n)
            return
        if "FROM " in rest:
            f = _FROM.match(rest)
            if f:
                self.known += 1
                self._open(key, f.group(2), ts)
            return
        img = _IMAGE_STEP.match(rest)
        if img:
            self.known += 1
            self._open(key, img.group(1), ts)
            return
        meta = _META.match(rest) or _RESOLVE_CFG.match(rest)
        if meta:
            self.known += 1
            self._meta(meta.group(1), ts, n, rest)
            return
        r = _RESOLVE.match(rest)
        if r:  # the vertex's title line was lost: its resolve line names the image
            self.known += 1
            self._open(key, r.group(1), ts)

    def _progress(self, state: _Step, rest: str) -> bool:
        """A FROM step's progress line (plain or tty): its ``resolve IMAGE@DIGEST`` (the
        reference when the title was cut with ``...``) or a layer download; False if neither."""
        if rest.startswith("resolve "):
            r = _RESOLVE.match(rest)
            if r:
                self.known += 1
                state.ref = r.group(1)
        elif _DOWNLOAD.match(rest):
            state.downloaded = True
        else:
            return False
        return True

    def _boundary(self, n: int, rest: str) -> None:
        title = not rest.startswith(_END)
        if n not in self.seen:
            if n <= self.max_id:
                self.new_build()
        elif title and (
            n in self.done
            or (rest.startswith("[") and self.titles.get(n, rest) != rest and "FROM " in rest)
        ):
            self.new_build()
        self._mark(n, rest)

    def _mark(self, n: int, rest: str) -> None:
        if n not in self.seen:
            self.seen.add(n)
            self.max_id = max(self.max_id, n)
            if rest.startswith("["):
                self.titles[n] = rest

    def _meta(self, ref: str, ts: datetime | None, n: int | None, rest: str) -> None:
        if _name(ref) in self.used:  # resolved again after its FROM: a new build
            self.new_build()
            if n is not None:
                self._mark(n, rest)
        self.meta.setdefault(_name(ref), ts)

    def _open(self, key: str, ref: str, ts: datetime | None, fancy: bool = False) -> None:
        if ref == "scratch" or "$" in ref:
            return
        name = _name(ref)
        if name in self.used and not ref.endswith("..."):
            return  # the same image again in this build (another platform, stage)
        self.used.add(name)
        self.meta.pop(name, None)
        self.steps[key] = _Step(ref, ts, fancy=fancy)

    def _close(self, key: str, pulled: bool | None) -> None:
        state = self.steps.pop(key)
        ref = state.ref
        if ref.endswith("..."):  # cut short and never resolved: keep what is whole
            ref = ref[:-3]
            if "@" not in ref:
                return  # the tag itself may be cut: no reference to trust
            ref = ref.split("@", 1)[0]
        self.meta.pop(_name(ref), None)
        self.used.add(_name(ref))
        name, digest = split_digest(ref)
        self.hit(name, state.ts, digest, pulled)

    # -- tty screen ---------------------------------------------------------------------
    def fancy(self, line: str, ts: datetime | None) -> None:
        s = _SCREEN.match(line)
        if s:
            t = float(s.group(1))
            if t < self.screen_t:
                self.new_build()
            self.screen_t = t
            return
        m = _FANCY.match(line)
        if not m:
            return
        sub, status, rest = m.group(1), m.group(2), m.group(3)
        if sub:
            state = self.steps.get(self.last_fancy or "")
            if state is not None:
                self._progress(state, rest)
            return
        f = _FROM.match(rest) if "FROM " in rest else None
        img = None if f else _IMAGE_STEP.match(rest)
        if f or img:
            self.known += 1
            key = f"=>{f.group(1)}" if f else f"=>{rest.split('@', 1)[0]}"
            if key not in self.steps:
                self._open(key, f.group(2) if f else rest.split()[0][len("docker-image://") :],
                           ts, fancy=True)  # fmt: skip
            state = self.steps.get(key)
            if state is not None:
                state.cached = state.cached or status == "CACHED"
                self.last_fancy = key
            return
        self.last_fancy = None
        meta = _META.match(rest) or _RESOLVE_CFG.match(rest)
        if meta:
            self.known += 1
            if status != "ERROR" and _name(meta.group(1)) not in self.used:
                self.meta.setdefault(_name(meta.group(1)), ts)

    # -- ends -----------------------------------------------------------------------------
    def new_build(self) -> None:
        self.finish()
        self._reset()

    def finish(self) -> None:
        for key in list(self.steps):
            state = self.steps[key]
            pulled = None
            if state.fancy:
                pulled = True if state.downloaded else (False if state.cached else None)
            self._close(key, pulled)
        for ref, ts in self.meta.items():
            name, digest = split_digest(ref)
            self.hit(name, ts, digest, None)
        self.meta.clear()
