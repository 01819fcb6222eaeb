"""What a warm run did: the counts and bytes the executor keeps, printed as the summary,
stored with the run, and added up over a warm's passes.

Requests are counted where they are sent (``RegistryTransport.requests``) and added up here
per tier (``"upstream"``, ``"0"`` central, ``"1"`` regional ...) and per registry, by kind
(``manifest``, ``blob``, ``ping``, ``token`` ...) and method: each one through a mirror can
cost its parent a round trip (distribution 2.8 re-pings an anonymous parent before each),
so the summary shows what a run asked for, not only what it moved."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from warmer.store.ledger import RunItem


@dataclass(frozen=True)
class MovedTag:
    """A tag that resolved to ``got`` at fetch time where the plan had ``planned``."""

    image: str  # as planned, with its tag
    tag: str
    planned: str
    got: str

    def as_dict(self) -> dict[str, str]:
        return {"image": self.image, "tag": self.tag, "planned": self.planned, "got": self.got}


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
    # The rate reserve's count of manifest requests it let through during the whole warm:
    # per image its index and one manifest per platform, an upper bound (see reserve.py).
    upstream_requests_reserved: int = 0
    manifest_requests: int = 0  # made to resolve this run's images (see Prepared)
    seconds: float = 0.0
    deadline_hit: bool = False
    restored: int = 0
    # Large cold blobs read from the mirrors' storage (warmer.warm.coldread): how many, the
    # asks they took (one each when the first came after the store), and the ones still
    # relayed after every ask and read from the relay instead.
    stored_reads: int = 0
    stored_asks: int = 0
    stored_fallbacks: int = 0
    moved: list[MovedTag] = field(default_factory=list)
    # Requests sent: (tier, kind, method) and (registry, kind, method); see add_requests.
    requests_by_tier: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    requests_by_registry: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # Manifest items done without a request: the top tier answered them while resolving.
    manifests_from_resolve: int = 0

    def add_requests(
        self, tier: int | str, registry: str, requests: Mapping[tuple[str, str], int]
    ) -> None:
        """Add one client's ``requests`` ({(kind, method): n}) under ``tier`` (``"upstream"``
        or a mirror's tier number) and ``registry`` (a mirror or an upstream's name)."""
        for (kind, method), n in requests.items():
            self.requests_by_tier[(str(tier), kind, method)] += n
            self.requests_by_registry[(registry, kind, method)] += n

    def learned(self, size: int) -> int:
        """Count a manifest item answered while resolving (not asked again); its size."""
        self.manifests_from_resolve += 1
        return size

    def merge_requests(self, other: RunStats) -> None:
        self.requests_by_tier.update(other.requests_by_tier)
        self.requests_by_registry.update(other.requests_by_registry)

    def count_run(self, items: Sequence[RunItem]) -> None:
        """Counts and bytes from the run's items as the ledger has them: a resumed run's
        summary includes what the processes before this one did."""
        final = Counter(i.state for i in items)
        self.done, self.failed = final["done"], final["failed"]
        self.skipped, self.pending = final["skipped"], final["pending"]
        self.bytes_by_mirror, self.bytes_by_tier = Counter(), Counter()
        self.parent_bytes_by_mirror = Counter()
        for item in items:
            if item.state == "done":
                self.bytes_by_mirror[item.mirror] += item.bytes
                self.bytes_by_tier[item.tier] += item.bytes
                self.parent_bytes_by_mirror[item.mirror] += item.parent_cost

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
            "manifest_requests": self.manifest_requests,
            "upstream_manifest_requests_reserved": self.upstream_requests_reserved,
            "seconds": round(self.seconds, 3),
            "deadline_hit": self.deadline_hit,
            "restored": self.restored,
            "stored_reads": {
                "read": self.stored_reads,
                "asks": self.stored_asks,
                "fallbacks": self.stored_fallbacks,
            },
            "moved": [m.as_dict() for m in self.moved],
            "requests_by_tier": nest_requests(self.requests_by_tier),
            "requests_by_registry": nest_requests(self.requests_by_registry),
            "manifests_from_resolve": self.manifests_from_resolve,
        }


def nest_requests(counts: Mapping[tuple[str, str, str], int]) -> dict[str, Any]:
    """``{(where, kind, method): n}`` as ``{where: {kind: {method: n}}}`` (the sandbox
    front's ``requests`` shape), sorted."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (where, kind, method), n in sorted(counts.items()):
        if n:
            out.setdefault(where, {}).setdefault(kind, {})[method] = n
    return out
