"""Which log format a file holds, from its first lines (cheap substring checks, in order).

CI formats are checked before the client tools because CI logs contain client output.

Detection runs once per file, and a walk over tens of thousands of small job logs spends a
large share of its time here, so the substring markers are all found in one pass (the
``hyperscan`` matcher of ``analytics.ingest.select``, else one ``in`` per marker) and the
regexes run only when a marker says they could match. The decision is the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from analytics.ingest.select import literal_set

FORMATS = (
    "distribution",
    "gitlab",
    "github",
    "jenkins",
    "buildkite",
    "circleci",
    "cloudbuild",
    "codebuild",
    "kubelet",
    "buildkit",
    "kaniko",
    "jib",
    "podman",
    "docker",
)

# ASCII digits only: a GitHub timestamp or a BuildKit step number is never in other scripts.
_GH_PREFIX = re.compile(r"\ufeff?[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]+Z ")
_GH_STAMP = rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]+Z "
_BK_STEP = re.compile(r"^#[0-9]+ (?:\[|FROM |DONE|CACHED)", re.MULTILINE)
_ACCESS = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/', re.MULTILINE
)

_DISTRIBUTION = ('msg="response completed', '"http.request.uri"', '{"events":')
_GITLAB = ("gitlab-runner", "section_start:", "Using Docker executor", "executor with image")
_JENKINS = ("[Pipeline]", "Started by ", "Running in Durability level")
# Buildkite: the agent's raw log starts each line with ESC _bk;t=<epoch ms> BEL; a log saved
# without those times still has the agent's hook headers.
_BUILDKITE = (
    "\x1b_bk;t=",
    "~~~ Running global environment hook",
    "~~~ Running global pre-checkout hook",
)
# CircleCI's Spin Up Environment step; its container lines alone when the header is cut.
_CIRCLECI = ("Build-agent version", "====>> Spin Up Environment")
_CIRCLECI_START = "Starting container "
_CIRCLECI_LINES = (
    "  using image ",
    "pull stats: ",
    "image cache not found on this host",
    "image is cached as ",
)
# Google Cloud Build: its phases and step markers (a step's "Pulling image: X" alone would
# read as CRI-O's).
_CLOUDBUILD = ("FETCHSOURCE", "Starting Step #", "Finished Step #", "Step #0: ")
# AWS CodeBuild: the agent's "[Container] 2025/12/02 03:40:40.4 ..." lines.
_CODEBUILD_AGENT = "[Container] "
_CODEBUILD = ("Running on CodeBuild", "Entering phase ", "Phase complete: ", "Running command ")
_KUBELET = (
    "kubelet[",
    '"involvedObject"',
    "already present on machine",
    'Pulling image "',
    'Pulling image \\"',
    'PullImage \\"',
    '"kind": "Event"',
    '"kind":"Event"',
    '"apiVersion": "events.k8s.io/',
    "Pulling image: ",
    'Successfully pulled image "',
)
_BUILDKIT = ("[+] Building", "=> [internal]", "=> CACHED")
_KANIKO = ("Retrieving image manifest", "Retrieving image ")
_JIB = ("Getting manifest for base image ",)
_PODMAN = ("Trying to pull", "Getting image source signatures", "STEP 1/", "STEP 1:")
_DOCKER = (
    "Pulling from ",
    "Status: Downloaded newer image",
    "Status: Image is up to date",
    "Using default tag:",
    "Sending build context to Docker daemon",
    "Step 1/",
    "Step 1 : FROM",
    "Unable to find image '",
    "index-sha256:",  # containerd's pull progress (ctr, nerdctl)
    "manifest-sha256:",
)
_OTHER = ("go.version=", "instance.id=", " /v2/", "##[group]", "##[command]", "LAST SEEN")
_OTHER2 = ("REASON", "\n#")
_MARKERS = (
    *_DISTRIBUTION,
    *_GITLAB,
    *_JENKINS,
    *_BUILDKITE,
    *_CIRCLECI,
    _CIRCLECI_START,
    *_CIRCLECI_LINES,
    *_CLOUDBUILD,
    _CODEBUILD_AGENT,
    *_CODEBUILD,
    *_KUBELET,
    *_BUILDKIT,
    *_KANIKO,
    *_JIB,
    *_PODMAN,
    *_DOCKER,
    *_OTHER,
    *_OTHER2,
)
# Every marker is ASCII, so it is in the decoded text exactly when it is in the bytes.
_find_markers = literal_set(
    [m.encode() for m in _MARKERS], regexes={"stamp": _GH_STAMP, "start#": rb"^#"}
)


def _first_lines(head: str, n: int) -> list[str]:
    """``head.splitlines()[:n]`` without splitting all of a 64 KiB head."""
    size = 4096
    while size < len(head):
        part = head[:size].splitlines()
        if len(part) > n + 1:  # the first n lines end before the cut, so they are whole
            return part[:n]
        size *= 4
    return head.splitlines()[:n]


def _stamped_lines(text: str, need: int) -> bool:
    """At least ``need`` lines of ``text`` start with a GitHub Actions timestamp.

    Line by line (``match`` fails at the first character of other lines) rather than a
    multi-line ``findall``, which tries the pattern at every position.
    """
    if need <= 0:
        return True
    match = _GH_PREFIX.match
    for line in text.split("\n"):
        if match(line):
            need -= 1
            if need == 0:
                return True
    return False


def detect(head: str) -> str | None:
    """The format name for a file starting with ``head`` (a few KiB of text), or None."""
    return _decide(_find_markers(head.encode("utf-8", "surrogatepass")), lambda: head)


def detect_bytes(head: bytes) -> str | None:
    """``detect`` of the head's text (decoded with replacement only if a regex needs it)."""
    text: list[str] = []

    def decoded() -> str:
        if not text:
            text.append(head.decode("utf-8", "replace"))
        return text[0]

    return _decide(_find_markers(head), decoded)


def _decide(found: set[str], text: Callable[[], str]) -> str | None:
    def has(markers: tuple[str, ...]) -> bool:
        return any(m in found for m in markers)

    if has(_BUILDKITE):  # before the others: its lines carry any tool's output
        return "buildkite"
    if (
        has(_DISTRIBUTION)
        or ("go.version=" in found and "instance.id=" in found)
        or (" /v2/" in found and _ACCESS.search(text()))
    ):
        return "distribution"
    if has(_GITLAB):
        return "gitlab"
    if has(("##[group]", "##[command]", "stamp")):
        head = text()
        lines = [ln for ln in _first_lines(head, 50) if ln.strip()]
        if lines and (
            "##[group]" in found
            or "##[command]" in found
            or _stamped_lines(head[:8192], (min(len(lines), 20) + 1) // 2)
        ):
            return "github"
    if has(_JENKINS):
        return "jenkins"
    if has(_CIRCLECI) or (_CIRCLECI_START in found and has(_CIRCLECI_LINES)):
        return "circleci"
    if has(_CLOUDBUILD):
        return "cloudbuild"
    if _CODEBUILD_AGENT in found and has(_CODEBUILD):
        return "codebuild"
    if has(_KUBELET) or ("LAST SEEN" in found and "REASON" in found):
        return "kubelet"
    if (("\n#" in found or "start#" in found) and _BK_STEP.search(text())) or has(_BUILDKIT):
        return "buildkit"
    if has(_KANIKO):
        return "kaniko"
    if has(_JIB):
        return "jib"
    if has(_PODMAN):
        return "podman"
    if has(_DOCKER):
        return "docker"
    return None
