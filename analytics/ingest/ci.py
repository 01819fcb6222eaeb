"""CI job logs: GitHub Actions, GitLab Runner, Jenkins console, CircleCI, Google Cloud Build,
AWS CodeBuild (Buildkite: ``analytics.ingest.buildkite_job``).

Each strips its own line prefix (timestamp, section markers, timestamper) and hands the
content to ``ClientOutput`` for the docker/podman/BuildKit lines inside, adding what only
the CI system prints: runner name, pipeline identity, job and service containers.
"""

from __future__ import annotations

import re
from datetime import datetime

from analytics.ingest.base import (
    Emit,
    Hit,
    from_unix,
    parse_iso,
    plain_ref,
    repository,
    split_digest,
    strip_ansi,
)
from analytics.ingest.cilog import ClientLog, HeldLog
from analytics.ingest.clients import KEYWORDS as CLIENT_KEYWORDS
from analytics.ingest.reader import ReadStats

_GH_LINE = re.compile(r"^\ufeff?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) ?(.*)$")
_GH_RUNNER = re.compile(
    r"^(?:Runner name: '([^']+)'|Job is about to start running on the runner: (.+?) \()"
)
_GH_DEFINED = re.compile(r"^Job defined at: (\S+?)(?:@\S*)?$")
_GH_STEP_TITLE = re.compile(r"(?:^|\]|Z )(?:Pull|Pulling) (?:container|down action) image '")


class GitHubParser(ClientLog):
    """GitHub Actions job log: every line starts with an RFC 3339 UTC timestamp."""

    name = "github"
    keywords = (
        *CLIENT_KEYWORDS,
        b"Runner name:",
        b"Job defined at:",
        b"about to start running",
        b"container image",
        b"action image",
    )

    def feed(self, line: str) -> None:
        if (" container image '" in line or " action image '" in line) and _GH_STEP_TITLE.search(
            line
        ):
            self.known += 1  # the step title; the pull is the docker command that follows
            return
        m = _GH_LINE.match(line)
        if m:
            ts = parse_iso(m.group(1))
            content = m.group(2)
        else:
            ts, content = None, line
        content = strip_ansi(content).strip()
        for marker in ("##[command]", "##[group]"):
            if content.startswith(marker):
                content = content[len(marker) :]
        if content.startswith(("Runner name:", "Job is about")):
            r = _GH_RUNNER.match(content)
            if r:
                self.client.runner = r.group(1) or r.group(2)
            return
        if content.startswith("Job defined at:"):
            d = _GH_DEFINED.match(content)
            if d:
                self.client.pipeline = d.group(1)
            return
        self.client.feed(content, ts)


# GitLab: optional "2024-05-01T10:00:00.123456Z 00O+ " prefix (runner 17 timestamps) and
# "section_start:1714557600:name[collapsed=true]\r\x1b[0K" markers that carry unix time.
_GL_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) [0-9a-f]{2}[OE]\+? ?")
_GL_SECTION = re.compile(r"section_(?:start|end):(\d+):[^\r\x1b\s]*")
_GL_PULLING = re.compile(r"Pulling docker image (\S+) \.\.\.")
_GL_USING = re.compile(
    r"Using docker image (sha256:[0-9a-f]{64}) for (\S+)(?: with digest (\S+))?(?: \.\.\.)?$"
)
# The job image and service lines (any executor: Docker, Docker Machine, Kubernetes...).
_GL_ANNOUNCE = re.compile(r"^(?:Using [\w +-]*executor with image|Starting service) (\S+)")
_GL_KNOWN = (
    "Using effective pull policy",
    "Using locally found image",
    "WARNING: Failed to pull image",
    "Pulling docker image",
)
_GL_RUNNER = re.compile(r"^on (\S+) [0-9A-Za-z_-]{8}\b")
_GL_GIT = re.compile(
    r"(?:Initialized empty|Reinitialized existing) Git repository in /builds/(.+?)/\.git/"
)
_GL_BUILDS_PREFIX = re.compile(r"^[0-9A-Za-z_-]{8}/\d+/")


class GitLabParser(HeldLog):
    """GitLab Runner job log (docker executor): job image, services, pull policy."""

    RUNS = True  # its log echoes the commands it runs
    name = "gitlab"
    keywords = (
        *CLIENT_KEYWORDS,
        b"section_start:",
        b"Pulling docker image",
        b"Using docker image",
        b"Git repository in",
        b" on ",
        b"executor with image",
        b"Starting service",
        b"pull policy",
        b"Failed to pull image",
    )

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        # The executor pulls the job and service images before it fetches the sources,
        # which name the project: hold the (few) hits until the end to attach it.
        super().__init__(emit, stats, default_time)
        self.section_time: datetime | None = None
        self.pulling: dict[str, datetime | None] = {}
        self.announced: dict[str, datetime | None] = {}  # job and service images named

    def feed(self, line: str) -> None:
        ts: datetime | None = None
        m = _GL_TS.match(line)
        if m:
            ts = parse_iso(m.group(1))
            line = line[m.end() :]
        if "section_" in line:
            for s in _GL_SECTION.finditer(line):
                self.section_time = from_unix(s.group(1))
            line = _GL_SECTION.sub("", line)
        ts = ts or self.section_time
        content = strip_ansi(line).strip()
        if content.startswith(_GL_KNOWN):
            self.known += 1
            p = _GL_PULLING.match(content)
            if p:
                self.pulling[p.group(1)] = ts
            return
        if content.startswith("Starting service") or (
            content.startswith("Using") and "executor with image" in content
        ):
            a = _GL_ANNOUNCE.match(content)
            if a:
                self.known += 1
                if "$" not in a.group(1):
                    self.announced.setdefault(a.group(1), ts)
                return
        if content.startswith("Using docker image"):
            u = _GL_USING.match(content)
            if u:
                self.known += 1
                image = u.group(2)
                pulled = image in self.pulling
                start = self.pulling.pop(image, None) or self.announced.pop(image, None) or ts
                self.announced.pop(image, None)
                digest = (u.group(3) or "").rpartition("@")[2] or None
                self._hold(
                    Hit(
                        image,
                        start,
                        digest if digest and digest.startswith("sha256:") else None,
                        pulled,
                        pipeline=self.client.pipeline,
                        runner=self.client.runner,
                    )
                )
            return
        if content.startswith("on "):
            r = _GL_RUNNER.match(content)
            if r:
                self.client.runner = r.group(1)
            return
        if "Git repository in" in content:
            g = _GL_GIT.search(content)
            if g:
                self.client.pipeline = _GL_BUILDS_PREFIX.sub("", g.group(1))
            return
        if content.startswith("$ "):
            content = content[2:]
        self.client.feed(content, ts)

    def finish(self) -> None:
        for image, ts in self.pulling.items():  # a pull with no outcome printed
            self._hold(
                Hit(image, ts, None, None, pipeline=self.client.pipeline, runner=self.client.runner)
            )
        for image, ts in self.announced.items():  # named, no pull line (Kubernetes, cut)
            if image not in self.pulling:
                self._hold(
                    Hit(
                        image, ts, None, None, pipeline=self.client.pipeline,
                        runner=self.client.runner,
                    )
                )  # fmt: skip
        self.pulling.clear()
        self.announced.clear()
        super().finish()
        self._release()


_JK_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\] ")
_JK_RUNNING = re.compile(r"^Running on (.+?) in (\S+)")
_JK_INSPECT = re.compile(r"docker inspect -f \. (\S+)")
_JK_NO_SUCH = re.compile(r"No such object: (\S+)")


class JenkinsParser(ClientLog):
    """Jenkins console: ``+ docker pull``, the Docker Pipeline plugin's inspect/run lines."""

    name = "jenkins"
    keywords = (
        *CLIENT_KEYWORDS,
        b"Running on ",
        b"docker inspect -f .",
        b"No such object",
        b"withDockerContainer",
        b"docker run ",
    )

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        super().__init__(emit, stats, default_time)
        self.inspect: tuple[str, datetime | None] | None = None

    def _flush_inspect(self) -> None:
        # `docker inspect -f . IMAGE` printed "." (no error followed): the image was there.
        if self.inspect is not None:
            image, ts = self.inspect
            self.emit(
                Hit(
                    image, ts, None, False, pipeline=self.client.pipeline, runner=self.client.runner
                )
            )
            self.inspect = None

    def feed(self, line: str) -> None:
        ts: datetime | None = None
        m = _JK_TS.match(line)
        if m:
            ts = parse_iso(m.group(1))
            line = line[m.end() :]
        content = strip_ansi(line).strip()
        if content.startswith(("+ ", "$ ")):
            content = content[2:]
        if content.startswith("Running on "):
            r = _JK_RUNNING.match(content)
            if r:
                self.client.runner = r.group(1)
                job = r.group(2).rstrip("/").rsplit("/", 1)[-1]
                self.client.pipeline = re.sub(r"@\d+$", "", job)
            return
        if "docker inspect -f ." in content:
            i = _JK_INSPECT.search(content)
            if i:
                self.known += 1
                self._flush_inspect()
                self.inspect = (i.group(1), ts)
            return
        if "No such object" in content:
            if self.inspect is not None and _JK_NO_SUCH.search(content):
                self.inspect = None  # absent: the plugin pulls it next (a normal pull line)
            return
        if " pull " in f" {content}":
            self.inspect = None
        else:
            self._flush_inspect()
        self.client.feed(content, ts)

    def finish(self) -> None:
        self._flush_inspect()
        super().finish()


_CC_START = re.compile(r"^Starting container (\S+)$")
_CC_USING = re.compile(r"^using image (\S+?)@(sha256:[0-9a-f]{64})$")
_CC_FETCH = re.compile(
    r"^(?:image cache not found on this host, downloading (\S+)"
    r"|image is cached as (\S+), but refreshing\.\.\.)$"
)
# The agent's notes about a container's image: not a use of their own.
_CC_NOT_A_USE = ("Did not get image metadata for ", "WARNING: docker image ")
_CC_REPO_URL = re.compile(r"^CIRCLE_REPOSITORY_URL=(?:\S+?[:/])?([\w.-]+/[\w.-]+?)(?:\.git)?/?$")


class CircleCIParser(ClientLog):
    """CircleCI job log (the Spin Up Environment step). Each ``Starting container X`` (the
    job's primary image, then each service) is one use of X; ``using image X@sha256:...``
    gives its digest, and whether it was downloaded comes from ``image cache not found on
    this host, downloading X`` or ``pull stats: download ...`` (``Image was already
    available so the image was not pulled`` and ``image is cached as X, but refreshing...``
    say it was not). The docker pull output that follows a fetch or a refresh is CircleCI's
    own pull of that container's image: it is folded into the container's use (a refresh
    that downloads a newer image is a pull), not counted again; any other pull in the job's
    steps is counted as in a plain docker log."""

    name = "circleci"
    keywords = (
        *CLIENT_KEYWORDS,
        b"Starting container ",
        b"using image ",
        b"pull stats:",
        b"image cache not found",
        b"image is cached as",
        b"CIRCLE_REPOSITORY_URL=",
        b"image metadata for",
        b"WARNING: docker image",
    )

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        super().__init__(emit, stats, default_time, client_emit=self._client_hit)
        self.containers: list[Hit] = []  # in start order; emitted at the end (pipeline)
        self.current: Hit | None = None  # the container the pull stats describe
        self.fetching: Hit | None = None  # whose pull the docker output that follows is

    def _container(self, ref: str) -> Hit | None:
        """The latest container started from ``ref`` (by repository when only that is
        given: ``using image`` names none of its tag)."""
        by_tag = "@" not in ref and ":" in ref.rsplit("/", 1)[-1]
        for hit in reversed(self.containers):
            if (
                (plain_ref(hit.reference) == plain_ref(ref))
                if by_tag
                else (repository(plain_ref(hit.reference)) == repository(plain_ref(ref)))
            ):
                return hit
        return None

    def feed(self, line: str) -> None:
        content = strip_ansi(line).strip()
        start = _CC_START.match(content)
        if start:
            self.known += 1
            self.current = Hit(start.group(1), None, None, None, source=self.name)
            self.containers.append(self.current)
            return
        if content.startswith(_CC_NOT_A_USE):
            self.known += 1
            return
        if content.startswith("using image "):
            using = _CC_USING.match(content)
            target = self._container(using.group(1)) if using else None
            if using and target is not None:
                self.known += 1
                target.digest = using.group(2)
                self.current = target  # its pull stats follow
            return
        if content.startswith("pull stats:"):
            if self.current is not None:
                self.known += 1
                if content.startswith("pull stats: download"):
                    self.current.pulled = True
                elif "not pulled" in content and self.current.pulled is None:
                    self.current.pulled = False
            return
        if content.startswith("image "):
            fetch = _CC_FETCH.match(content)
            target = self._container(fetch.group(1) or fetch.group(2)) if fetch else None
            if fetch and target is not None:
                self.known += 1
                if fetch.group(1):
                    target.pulled = True
                elif target.pulled is None:
                    target.pulled = False
                self.fetching = target
            return
        if content.startswith("CIRCLE_REPOSITORY_URL="):
            url = _CC_REPO_URL.match(content)
            if url:
                self.client.pipeline = url.group(1)
            return
        self.client.feed(content, None)

    def _client_hit(self, hit: Hit) -> None:
        fetching = self.fetching
        if fetching is not None and plain_ref(hit.reference) == plain_ref(fetching.reference):
            self.fetching = None
            fetching.digest = fetching.digest or hit.digest
            if hit.pulled:
                fetching.pulled = True
            return
        self.emit(hit)

    def finish(self) -> None:
        super().finish()
        for hit in self.containers:
            hit.pipeline = self.client.pipeline
            self.emit(hit)
        self.containers.clear()
        self.current = self.fetching = None


_GCB_STEP = re.compile(r'^Step #\d+(?: - "[^"]*")?: ?')
_GCB_HAVE = re.compile(r"^Already have image(?: \(with digest\))?: (\S+)$")


class CloudBuildParser(ClientLog):
    """Google Cloud Build (``gcloud builds submit``, ``gcloud builds log``, the console's
    raw log): each step's lines carry ``Step #N:`` (or ``Step #N - "id":``). A step's
    builder image is ``Pulling image: X`` then the engine's pull output (closed by its
    ``Status:`` line), or ``Already have image (with digest): X`` when the worker has it;
    the steps' own docker output (``docker build``'s ``FROM``, ``docker pull``) follows as in
    a docker log."""

    name = "cloudbuild"
    keywords = (*CLIENT_KEYWORDS, b"Pulling image: ", b"Already have image")

    def feed(self, line: str) -> None:
        content = strip_ansi(line).strip()
        step = _GCB_STEP.match(content)
        if step:
            content = content[step.end() :]
        if content.startswith("Pulling image: "):
            image = content[len("Pulling image: ") :].strip()
            if image and " " not in image:
                self.known += 1
                self.client.open_pull(image, None)
            return
        if content.startswith("Already have image"):
            have = _GCB_HAVE.match(content)
            if have:
                self.known += 1
                ref, digest = split_digest(have.group(1))
                self.emit(Hit(ref, None, digest, False, source=self.name))
            return
        self.client.feed(content, None)


_CB_LINE = re.compile(r"^\[Container\] (\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?) ?")


class CodeBuildParser(ClientLog):
    """AWS CodeBuild: the agent's lines carry ``[Container] 2025/12/02 03:40:40.413190`` (UTC)
    and name each command (``Running command docker pull X``); what the commands print has no
    time of its own and takes that of the command that printed it."""

    RUNS = True  # its log echoes the commands it runs
    name = "codebuild"
    keywords = (*CLIENT_KEYWORDS, b"[Container] ")

    def __init__(self, emit: Emit, stats: ReadStats, default_time: datetime) -> None:
        super().__init__(emit, stats, default_time)
        self.time: datetime | None = None

    def feed(self, line: str) -> None:
        content = strip_ansi(line).strip()
        m = _CB_LINE.match(content)
        if m:
            clock = m.group(4)[:15]  # HH:MM:SS.ffffff: what datetime holds
            self.time = parse_iso(f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{clock}+00:00")
            content = content[m.end() :]
            if content.startswith("Running command "):
                content = content[len("Running command ") :]
        self.client.feed(content, self.time)
