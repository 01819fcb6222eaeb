"""Image builders other than BuildKit: Dockerfile steps (podman/buildah, the classic docker
builder) and kaniko, as the few facts ``ClientOutput`` folds into hits.

``STEP 1/8: FROM IMAGE`` (podman, buildah), ``STEP 1: FROM IMAGE`` (older buildah) and
``Step 1/8 : FROM IMAGE`` (the classic docker builder) name the base image; the pull, if
any, is printed right after (``Trying to pull``, ``Pulling from``). A ``FROM`` of an
earlier stage (``FROM build``), of ``scratch`` or of an unexpanded ``$ARG`` is no image.

kaniko prints ``Retrieving image manifest IMAGE`` (and ``Retrieving image IMAGE from
registry HOST``) for each base image, more than once per build (again when it builds the
stage): one use per image per build. Its ``INFO[0012]`` counter is seconds since its
start, so a counter that goes back starts a new build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_STEP = re.compile(r"(?:^|\s)(?:STEP|Step) (\d+)(?:/\d+)? ?: ?(\w+)(?:\s+(.*))?$")
_KANIKO_CLOCK = re.compile(r"\b(?:INFO|WARN|DEBU|ERRO)\[(\d+)\]")
_KANIKO = re.compile(
    r"Retrieving image (?:manifest (\S+)|(\S+) from (?:registry|mapped registry) )"
)


@dataclass
class StepFrom:
    """What a Dockerfile step line says: a base image to pull, or nothing."""

    stages: set[str] = field(default_factory=set)
    last: int = 0

    def feed(self, line: str) -> tuple[bool, str | None] | None:
        """None: not a step line; (True, image or None) for a step line, image for a FROM
        of a real image."""
        m = _STEP.search(line)
        if not m:
            return None
        n = int(m.group(1))
        if n <= self.last:  # numbering restarted: a new build, its own stages
            self.stages.clear()
        self.last = n
        if m.group(2).upper() != "FROM":
            return True, None
        words = (m.group(3) or "").split()
        while words and words[0].startswith("--"):
            words.pop(0)
        if not words:
            return True, None
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            self.stages.add(words[2].lower())
        if image.lower() in self.stages or image == "scratch" or "$" in image:
            return True, None
        return True, image


@dataclass
class Kaniko:
    """Folds kaniko's ``Retrieving image`` lines: one image once per build."""

    seen: set[str] = field(default_factory=set)
    clock: int = -1

    def feed(self, line: str) -> tuple[bool, str | None] | None:
        """None: not a kaniko image line; (True, image or None): image on its first mention
        in the build."""
        if "Retrieving image" not in line:
            return None
        m = _KANIKO.search(line)
        if not m:
            return None
        c = _KANIKO_CLOCK.search(line)
        if c:
            clock = int(c.group(1))
            if clock < self.clock:
                self.seen.clear()
            self.clock = clock
        image = m.group(1) or m.group(2)
        if image in self.seen:
            return True, None
        self.seen.add(image)
        return True, image
