"""Container client output: docker/nerdctl/crictl/ctr pulls, podman/buildah pulls and
builds, BuildKit progress (``analytics.ingest.buildkit``), kaniko and classic-builder steps
(``analytics.ingest.builders``), Jib's base image (Maven, Gradle, .NET, CLI).

``ClientOutput`` is a small state machine over the lines those tools print. It is used on
its own for a saved client log and inside the CI parsers (GitHub, GitLab, Jenkins), which
strip their own line prefixes first. One pull gives one hit: the command line, the progress
and the final status are folded together. Every hit carries ``name:tag`` as its reference
and the digest apart (a reference printed as ``name:tag@digest`` is split).
"""

from __future__ import annotations

import re
from datetime import datetime

from analytics.ingest.base import (
    Emit,
    Hit,
    LineParser,
    plain_ref,
    pull_target,
    run_target,
    split_digest,
    strip_ansi,
)
from analytics.ingest.builders import Kaniko, StepFrom
from analytics.ingest.buildkit import BuildKit
from analytics.ingest.reader import ReadStats

KEYWORDS: tuple[bytes, ...] = (
    b" pull ",  # docker|podman|buildah|nerdctl|crictl|ctr [global options] pull
    b"Pulling from",
    b"Digest: sha256:",
    b"Status: ",
    b"Trying to pull",
    b"Copying blob",
    b"Writing manifest",
    b"load metadata for",
    b"resolve image config for",
    b" resolve ",
    b"FROM ",
    b"CACHED",
    b"DONE",
    b"ERROR",
    b"B / ",  # BuildKit layer download progress: "12.5MB / 49.6MB"
    b"extracting sha256",
    b"load build definition",
    b"building with",
    b"[+] Building",
    b"Retrieving image",
    b"Unable to find image",
    b"Image already in cache",
    b")...",  # docker-compose v1: "Pulling db (postgres:16)..."
    b"ase image",  # Jib: "Getting manifest for base image X...", its digest and notes
    b"generated image reference",  # Jib's own image: not a use
    b"image as ",
    b"-sha256:",  # containerd's progress (ctr, nerdctl): "index-sha256:<hex>:  done  |++|"
    b": resolved ",
    b"docker run ",  # a container started: a use of its image (present unless pulled)
    b"podman run ",
    b"nerdctl run ",
    b"container run ",
)

# The tool, its global options (``--config DIR``, ``-H host``, ``--context x``, ``-D``,
# ``--tls``...: a flag or an option with one value), an optional ``image``, then ``pull``.
_PULL_CMD = re.compile(
    r"(?:^|[\s/'\"$+>])(docker|podman|buildah|nerdctl|crictl|ctr)"
    r"((?:\s+-[^\s=]+(?:=\S*)?(?:\s+(?!-|pull\b|images?\b|i\b)[^\s]+)?)*)"
    r"(?:\s+(?:image|images|i))?\s+pull\s+(.*)$"
)
_STATUS = re.compile(r"Status: (Downloaded newer image|Image is up to date) for (\S+)")
# The same shape for ``run`` (global options, ``container run``), but only as a command: at
# the start of the line, after a shell prompt or trace (``$ ``, ``+ ``, ``user@host:~$ ``),
# ``sudo`` or a path, so prose ("use docker run to ...") is no use. Runs are read only where
# the log shows the commands it ran and no other parser counts the same container.
_RUN_CMD = re.compile(
    r"^(?:\S*[$#>+]\s*)?(?:sudo\s+)?(?:\S*/)?(docker|podman|nerdctl)"
    r"((?:\s+-[^\s=]+(?:=\S*)?(?:\s+(?!-|run\b|container\b)[^\s]+)?)*)"
    r"(?:\s+container)?\s+run\s+(.*)$"
)
_DIGEST = re.compile(r"^\s*Digest: (sha256:[0-9a-f]{64})")
# Greedy, the dots cut in code: a lazy token before `\.*$` is quadratic on a line with a
# long run of dots in it (7 s for 60 KB), and a lazy token before optional groups costs 4x.
_TRYING = re.compile(r"Trying to pull (?:repository )?(\S+)")
_UNABLE = re.compile(r"Unable to find image '([^'\s]+)' locally")  # docker run / create
# containerd's pull progress (ctr, nerdctl; a table, printed again on each refresh where
# the output is not a terminal): the reference resolved, then one row per object.
_CTR_RESOLVED = re.compile(r"^(\S+?): +resolv(?:ed|ing) +\|")
_CTR_ROW = re.compile(r"^(index|manifest|layer|config)-sha256:([0-9a-f]{64}): +(\w+)")
# Jib fetches its base image's manifest on every build (its layers only when its cache
# lacks them: whether they were pulled is not said), then names the digest it used.
_JIB_BASE = re.compile(r"Getting manifest for base image (\S+?)\.\.\.$")
_JIB_DIGEST = re.compile(r"Using base image with digest: (sha256:[0-9a-f]{64})")
_JIB_NOTES = ("does not use a specific image digest", "requires auth. Trying again for")
_JIB_TARGET = (  # the image Jib builds, not one it uses
    "Tagging image with generated image reference",
    "Built and pushed image as ",
    "Built image to Docker daemon as ",
)
# docker-compose v1 names the service's image before the engine's pull output (which names
# the repository without its registry); ``image: postgres`` prints ``(postgres:)``.
_COMPOSE_PULL = re.compile(r"^Pulling [\w.-]+ \(([^()\s]+?):?\)\.\.\.$")


class ClientOutput:
    """Folds client output lines into hits. ``feed(content, ts)`` with the prefix removed."""

    def __init__(self, emit: Emit, source: str | None = None, runs: bool = False) -> None:
        self.emit = emit
        self.source = source
        # ``docker run IMAGE`` is a use of IMAGE (present unless its pull follows); off where
        # the wrapping parser counts that container itself (Jenkins' inspect, a CI agent's
        # own container start) or echoes commands it does not run (GitHub's step titles).
        self.runs = runs
        self.pulled: set[str] = set()  # pulled since the last run: a run of one is that use
        self.pipeline: str | None = None
        self.runner: str | None = None
        self.known = 0  # lines understood (see analytics.ingest.base)
        # docker/podman pull in progress: [reference, ts, tool, saw_output]; tool "step"
        # for the base image of a Dockerfile step (present unless a pull follows)
        self.pending: list[object] | None = None
        self.digest: str | None = None
        self.blobs_copied = 0
        self.blobs_skipped = 0
        self.buildkit = BuildKit(self._split_hit)
        self.steps = StepFrom()
        self.kaniko = Kaniko()
        self.jib: tuple[str, datetime | None] | None = None  # base image, its digest next

    def recognized(self) -> int:
        return self.known + self.buildkit.known

    def _split_hit(
        self, ref: str, ts: datetime | None, digest: str | None, pulled: bool | None
    ) -> None:
        self._hit(ref, ts, digest, pulled)

    def _run(self, target: str | None, ts: datetime | None) -> None:
        """``docker run TARGET``: a use of TARGET, unless it was just pulled (that pull was
        the use). Each run line is a run: a command run twice is two uses."""
        if target is None:
            return
        self._flush_pending()
        if _plain(target) in self.pulled:
            self.pulled.discard(_plain(target))
            return
        self.pending = [target, ts, "run", False]

    def _hit(
        self,
        ref: str,
        ts: datetime | None,
        digest: str | None,
        pulled: bool | None,
        run: bool = False,
    ) -> None:
        if self.runs and not run:  # a pull (or a build's base): a run of it next is this use
            self.pulled.add(_plain(ref))
        name, pinned = split_digest(ref)
        self.emit(
            Hit(
                name,
                ts,
                digest or pinned,
                pulled,
                pipeline=self.pipeline,
                runner=self.runner,
                source=self.source,
            )
        )

    # -- docker / podman ------------------------------------------------------------
    def open_pull(self, ref: str, ts: datetime | None) -> None:
        """A pull named in full by the tool that runs the engine (docker-compose, a CI
        runner) before the engine's output, which names the repository without its
        registry: the engine's ``Status:`` line closes it."""
        self._flush_pending()
        self.pending = [ref, ts, "docker", False]

    def _flush_pending(self) -> None:
        if self.pending is not None:
            ref, ts = self.pending[0], self.pending[1]
            assert isinstance(ref, str)
            assert ts is None or isinstance(ts, datetime)
            present = self.pending[2] in ("step", "run") and not self.pending[3]
            pulled: bool | None = False if present else None
            if self.pending[2] in ("ctr", "nerdctl") and (self.blobs_copied or self.blobs_skipped):
                pulled = self.blobs_copied > 0  # containerd's layer rows said which
            self._hit(ref, ts, self.digest, pulled, run=self.pending[2] == "run")
        self._reset_pull()

    def _reset_pull(self) -> None:
        self.pending = None
        self.digest = None
        self.blobs_copied = self.blobs_skipped = 0

    def feed(self, line: str, ts: datetime | None) -> None:
        if line.startswith("#"):
            self.buildkit.plain(line, ts)
            return
        if line.startswith(("=>", "[+]")):
            self.buildkit.fancy(line, ts)
            return
        if " pull " in line:
            m = _PULL_CMD.search(line)
            if m:
                self.known += 1
                target = pull_target(m.group(3))
                if target is None:
                    return
                if self.pending is not None:
                    same = self.pending[0] == target and not self.pending[3]
                    if same:  # the same command echoed twice (a step title, then the script)
                        return
                    self._flush_pending()
                self.pending = [target, ts, m.group(1), False]
                return
        if self.runs and " run " in f" {line}":
            r = _RUN_CMD.search(line)
            if r:
                self.known += 1
                self._run(run_target(r.group(3)), ts)
                return
        if "Unable to find image" in line:
            u = _UNABLE.search(line)
            if u:  # `docker run` pulls what it cannot find: the pull output follows
                self.known += 1
                if self.pending is None or _plain(str(self.pending[0])) != _plain(u.group(1)):
                    self._flush_pending()
                    self.pending = [u.group(1), ts, "docker", False]
                else:
                    self.pending[3] = True  # the run's image was absent: it is pulled
            return
        if "ase image" in line and self._jib(line, ts):
            return
        if ("-sha256:" in line or ": resolv" in line) and self._containerd(line, ts):
            return
        if any(target in line for target in _JIB_TARGET):
            self.known += 1
            return
        if line.endswith(")...") and line.startswith("Pulling "):
            c = _COMPOSE_PULL.match(line)
            if c:
                self.known += 1
                self.open_pull(c.group(1), ts)
            return
        if "Status: " in line:
            m2 = _STATUS.search(line)
            if m2:
                self.known += 1
                if self.pending is not None and self.pending[2] == "run" and not self.pending[3]:
                    self._flush_pending()  # a run that pulled nothing; this is another pull
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
            self.known += 1
            if self.pending is not None:
                if (
                    self.pending[2] == "run"
                    and not self.pending[3]
                    and not _pulls(line, str(self.pending[0]))
                ):
                    self._flush_pending()  # a run that pulled nothing; this is another pull
                else:
                    self.pending[3] = True
            return
        if "Trying to pull" in line:
            m4 = _TRYING.search(line)
            if m4:
                self.known += 1
                token = m4.group(1)  # "X...", "X ... not found", "X...ERRO[0000] ..."
                target = token.split("...", 1)[0].rstrip(".") or token[:1]
                if self.pending is not None and self.pending[3] and not self._candidate(target):
                    self._flush_pending()
                start = ts if self.pending is None else self.pending[1]
                self.pending = [target, start or ts, "podman", True]
            return
        if "Copying blob" in line:
            if self.pending is not None:
                self.pending[3] = True
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
            return
        if "STEP " in line or "Step " in line:  # selected by "FROM ": the FROM steps only
            self._step(line, ts)
            return
        if "Retrieving image" in line:
            k = self.kaniko.feed(line)
            if k is not None:
                self.known += 1
                if k[1]:  # kaniko fetches the manifest; whether layers follow is not said
                    self._hit(k[1], ts, None, None)
            return
        if "Image already in cache" in line:  # kaniko's cache of a base already counted
            self.known += 1

    def _containerd(self, line: str, ts: datetime | None) -> bool:
        """ctr/nerdctl progress: the resolved reference opens its pull (or is the one the
        command line opened), the first index or manifest row gives its digest, and layer
        rows say whether anything was downloaded (``exists``: all present)."""
        resolved = _CTR_RESOLVED.match(line)
        if resolved:
            self.known += 1
            ref = resolved.group(1)
            if (
                self.pending is None
                or split_digest(str(self.pending[0]))[0] != split_digest(ref)[0]
            ):
                self.open_pull(ref, ts)
                assert self.pending is not None
                self.pending[2] = "ctr"
            return True
        row = _CTR_ROW.match(line)
        if row is None:
            return False
        self.known += 1
        if self.pending is not None:
            self.pending[3] = True
            kind, status = row.group(1), row.group(3)
            if kind in ("index", "manifest") and self.digest is None:
                self.digest = f"sha256:{row.group(2)}"
            elif kind == "layer":
                if status == "exists":
                    self.blobs_skipped += 1
                else:
                    self.blobs_copied += 1
        return True

    def _jib(self, line: str, ts: datetime | None) -> bool:
        """Jib's base image lines; False when ``line`` is none of them (it only says
        "base image", or "release image": the other branches read it)."""
        base = _JIB_BASE.search(line)
        if base:
            self.known += 1
            self._flush_jib()
            self.jib = (base.group(1), ts)
            return True
        used = _JIB_DIGEST.search(line)
        if used:
            self.known += 1
            if self.jib is not None:
                self._hit(self.jib[0], self.jib[1], used.group(1), None)
                self.jib = None
            return True
        if any(note in line for note in _JIB_NOTES):
            self.known += 1
            return True
        return False

    def _flush_jib(self) -> None:
        if self.jib is not None:  # no digest printed (a failed or cut build)
            self._hit(self.jib[0], self.jib[1], None, None)
            self.jib = None

    def _candidate(self, target: str) -> bool:
        """The next registry tried for the same short name, nothing copied yet (podman's
        unqualified-search registries, docker's additional registries): the same pull."""
        assert self.pending is not None
        if self.pending[2] != "podman" or self.blobs_copied or self.blobs_skipped:
            return False
        last = str(self.pending[0]).rsplit("/", 1)[-1]
        return last == target.rsplit("/", 1)[-1]

    def _step(self, line: str, ts: datetime | None) -> None:
        step = self.steps.feed(line)
        if step is None:
            return
        self.known += 1
        if self.pending is not None and self.pending[2] == "step":
            self._flush_pending()  # no pull printed after the last FROM: it was present
        if step[1]:
            if self.pending is not None:
                self._flush_pending()
            self.pending = [step[1], ts, "step", False]

    def finish_buildkit(self) -> None:
        self.buildkit.finish()

    def finish(self) -> None:
        self._flush_pending()
        self._flush_jib()
        self.finish_buildkit()


def _pulls(line: str, ref: str) -> bool:
    """Whether ``TAG: Pulling from REPO`` (the repository without its registry) pulls
    ``ref``."""
    repo = _plain(line.split("Pulling from", 1)[1].strip()).rsplit(":", 1)[0]
    path = _plain(ref).rsplit(":", 1)[0]
    first, _, rest = path.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        path = rest  # the registry is not printed
    return repo == path


def _plain(ref: str) -> str:
    """A reference as the docker client may print it, its digest dropped."""
    return plain_ref(ref.partition("@")[0])


class ClientLogParser(LineParser):
    """A saved docker / podman / BuildKit log: no line timestamps, the file's time is used."""

    keywords = KEYWORDS

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime, name: str) -> None:
        super().__init__(emit, stats, default_time)
        self.name = name
        self.client = ClientOutput(emit, source=name, runs=name == "docker")

    def feed(self, line: str) -> None:
        self.client.feed(strip_ansi(line).strip(), None)

    def recognized(self) -> int:
        return self.client.recognized()

    def finish(self) -> None:
        self.client.finish()
