"""The usage event: one image use seen in a log (a pull, or a use of an image already present)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from warmer.oci.reference import Reference

SOURCES = (
    "docker",
    "podman",
    "buildkit",
    "kaniko",
    "github",
    "gitlab",
    "jenkins",
    "kubelet",
    "distribution",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One image use.

    ``timestamp`` is timezone-aware UTC; ``reference`` is normalised (``str()`` canonical);
    ``digest`` is the manifest digest when the log printed one; ``source`` is the log
    format it came from (one of ``SOURCES``); ``pipeline`` names the pipeline or job
    definition when the format says it; ``region`` comes from the region rules;
    ``pulled`` is True for a real pull, False when the image was already present, None
    when the log does not say.
    """

    timestamp: datetime
    reference: Reference
    digest: str | None
    source: str
    pipeline: str | None = None
    region: str | None = None
    pulled: bool | None = None

    def to_json(self) -> dict[str, object]:
        """The ``--dry-run --json`` shape: plain JSON types, canonical reference."""
        return {
            "timestamp": self.timestamp.isoformat(),
            "reference": str(self.reference),
            "digest": self.digest,
            "source": self.source,
            "pipeline": self.pipeline,
            "region": self.region,
            "pulled": self.pulled,
        }
