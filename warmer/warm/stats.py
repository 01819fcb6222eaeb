"""What a warm run did: the counts and bytes the executor keeps, printed as the summary,
stored with the run, and added up over a warm's passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunStats:
    """What a run did; printed as the summary and stored with the run."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0
    incidents: int = 0
    bytes_by_mirror: Counter[str] = field(default_factory=Counter)
    bytes_by_tier: Counter[int] = field(default_factory=Counter)
    parent_bytes_by_mirror: Counter[str] = field(default_factory=Counter)
    upstream_manifest_gets: int = 0
    seconds: float = 0.0
    deadline_hit: bool = False
    restored: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "pending": self.pending,
            "incidents": self.incidents,
            "bytes_by_mirror": dict(self.bytes_by_mirror),
            "bytes_by_tier": {str(k): v for k, v in sorted(self.bytes_by_tier.items())},
            "parent_bytes_by_mirror": dict(self.parent_bytes_by_mirror),
            "upstream_manifest_gets": self.upstream_manifest_gets,
            "seconds": round(self.seconds, 3),
            "deadline_hit": self.deadline_hit,
            "restored": self.restored,
        }
