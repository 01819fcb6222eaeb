"""Which log format a file holds, from its first lines (cheap substring checks, in order).

CI formats are checked before the client tools because CI logs contain client output.
"""

from __future__ import annotations

import re

FORMATS = (
    "distribution",
    "gitlab",
    "github",
    "jenkins",
    "kubelet",
    "buildkit",
    "podman",
    "docker",
)

_GH_PREFIX = re.compile(r"^\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z ", re.MULTILINE)
_BK_STEP = re.compile(r"^#\d+ (?:\[|FROM |DONE|CACHED)", re.MULTILINE)
_ACCESS = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]+\] "(?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/', re.MULTILINE
)


def detect(head: str) -> str | None:
    """The format name for a file starting with ``head`` (a few KiB of text), or None."""
    if (
        'msg="response completed' in head
        or '"http.request.uri"' in head
        or '{"events":' in head
        or ("go.version=" in head and "instance.id=" in head)
        or _ACCESS.search(head)
    ):
        return "distribution"
    if "gitlab-runner" in head or "section_start:" in head or "Using Docker executor" in head:
        return "gitlab"
    lines = [ln for ln in head.splitlines()[:50] if ln.strip()]
    if lines and (
        "##[group]" in head
        or "##[command]" in head
        or len(_GH_PREFIX.findall(head[:8192])) * 2 >= min(len(lines), 20)
    ):
        return "github"
    if "[Pipeline]" in head or "Started by " in head or "Running in Durability level" in head:
        return "jenkins"
    if (
        "kubelet[" in head
        or '"involvedObject"' in head
        or ("LAST SEEN" in head and "REASON" in head)
        or "already present on machine" in head
        or 'Pulling image "' in head
        or 'Pulling image \\"' in head
    ):
        return "kubelet"
    if _BK_STEP.search(head):
        return "buildkit"
    if "Trying to pull" in head or "Getting image source signatures" in head:
        return "podman"
    if (
        "Pulling from " in head
        or "Status: Downloaded newer image" in head
        or "Status: Image is up to date" in head
        or "Using default tag:" in head
    ):
        return "docker"
    return None
