"""The static reference record and the callbacks scanners report through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from warmer.oci.reference import Reference


@dataclass(frozen=True, slots=True)
class StaticRef:
    file: str
    line: int
    reference: Reference
    kind: str  # dockerfile, compose, kubernetes, github, gitlab
    context: str  # FROM, COPY --from, RUN --mount, syntax, image, container, service, uses ...
    platform: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "reference": str(self.reference),
            "kind": self.kind,
            "context": self.context,
            "platform": self.platform,
        }


Found = Callable[[StaticRef], None]
Warn = Callable[[str], None]
