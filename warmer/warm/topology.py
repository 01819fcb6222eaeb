"""The mirror topology as the planner sees it: chains, tiers, path prefixes, cache keys.

Pure helpers for :mod:`warmer.warm.plan`, and the two values that describe the mirrors to it:
``MirrorNode`` (a mirror as configured) and ``Held`` (an object the ledger says a mirror
holds). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# (mirror, instance, repository or "" under global scope, digest): one cached object.
Key = tuple[str, str | None, str, str]

# A cold blob read from the mirror's storage (``cold_blobs = "stored"``, see
# warmer.warm.coldread) still costs what the mirror relayed of the dropped copy before it
# noticed: measured on distribution 2.8 behind a 100 MB/s link, from 32 kB alone to 4 MB
# (whole 4 MB blobs) in a busy run. ``DROP_TAIL`` is that allowance; a blob under
# ``STORED_MIN`` is read from the relay, where it costs at most a quarter more and one
# round trip less.
DROP_TAIL = 4 << 20
STORED_MIN = 8 << 20


@dataclass(frozen=True)
class MirrorNode:
    name: str
    parent: str | None  # parent mirror name; None when its parent is the upstream
    path_prefix: str  # "" plain; "dockerhub-proxy" for Harbor-style "<prefix>/<repository>"
    cache_scope: Literal["repository", "global"]
    fetch_multiplicity: int  # bytes pulled over its parent link per cold byte
    link_rate: int | None  # bytes/s cap on its parent link (None = uncapped)
    instances: tuple[str, ...] = ()  # replicas with their own caches (each is warmed)
    upstreams: tuple[str, ...] = ()  # upstream names it proxies (empty = any)
    stored_from: int | None = None  # blobs this big are read from storage (None: relayed)

    def parent_cost(self, size: int) -> int:
        """Bytes its parent link carries for a cold blob of ``size`` as the warmer reads
        it: once and what a dropped relay sends (``DROP_TAIL`` at most) when its stored
        copy is read, ``fetch_multiplicity`` times when its relayed copy is."""
        if self.stored_from is not None and size >= self.stored_from:
            return size + min(size, DROP_TAIL)
        return size * self.fetch_multiplicity


def stored_from(cold_blobs: str, fetch_multiplicity: int) -> int | None:
    """The least size of a blob read from a mirror's storage (None: every blob relayed):
    only where a relayed read costs its parent more than one fetch."""
    return STORED_MIN if cold_blobs == "stored" and fetch_multiplicity > 1 else None


@dataclass(frozen=True)
class Held:
    """Warm and unexpired per the ledger. ``repository`` is as seen at the upstream and is
    ignored under global scope; ``instance`` None means every instance of the mirror."""

    mirror: str
    repository: str
    digest: str
    instance: str | None = None


class PlanError(ValueError):
    """Planner input that cannot describe a real topology (unknown mirror, a cycle ...)."""


@dataclass(frozen=True)
class Slot:
    """One cache to fill: a mirror, or one instance of a mirror with per-instance caches."""

    node: MirrorNode
    instance: str | None
    tier: int


class Topology:
    """The mirrors to warm for a set of targets: each target's chain up to its upstream."""

    def __init__(self, mirrors: Sequence[MirrorNode], targets: Sequence[str]) -> None:
        self.by_name: dict[str, MirrorNode] = {}
        for node in mirrors:
            if node.name in self.by_name:
                raise PlanError(f"mirror {node.name!r} is listed twice")
            if node.fetch_multiplicity < 1:
                raise PlanError(f"mirror {node.name!r}: fetch_multiplicity must be at least 1")
            if node.link_rate is not None and node.link_rate <= 0:
                raise PlanError(f"mirror {node.name!r}: link_rate must be positive")
            if len(set(node.instances)) != len(node.instances):
                raise PlanError(f"mirror {node.name!r}: an instance is listed twice")
            self.by_name[node.name] = node
        self.tier: dict[str, int] = {}
        self.chains: dict[str, tuple[str, ...]] = {}
        for target in targets:
            if target not in self.by_name:
                raise PlanError(f"target {target!r} is not a configured mirror")
            self.chains[target] = self._chain(target)
        warm = {name for chain in self.chains.values() for name in chain}
        for name in warm:
            self.tier[name] = len(self._chain(name)) - 1
        # Top tier first, then by name: the order items are emitted in.
        self.warm: tuple[str, ...] = tuple(sorted(warm, key=lambda n: (self.tier[n], n)))

    def _chain(self, name: str) -> tuple[str, ...]:
        """``name`` and its parents, child first, up to the mirror whose parent is an upstream."""
        chain = [name]
        seen = {name}
        parent = self.by_name[name].parent
        while parent is not None:
            if parent not in self.by_name:
                raise PlanError(
                    f"mirror {chain[-1]!r}: parent {parent!r} is not a configured mirror"
                )
            if parent in seen:
                raise PlanError(f"mirror {name!r}: its parents form a cycle through {parent!r}")
            chain.append(parent)
            seen.add(parent)
            parent = self.by_name[parent].parent
        return tuple(chain)

    def serves(self, name: str, upstream: str) -> bool:
        node = self.by_name[name]
        return not node.upstreams or upstream in node.upstreams

    def mirrors_for(self, upstream: str) -> tuple[str, ...]:
        """The mirrors to warm for an image of ``upstream``: every target chain that serves it
        from top to bottom (a child cannot get what its parent does not proxy)."""
        chosen: set[str] = set()
        for chain in self.chains.values():
            if all(self.serves(name, upstream) for name in chain):
                chosen.update(chain)
        return tuple(name for name in self.warm if name in chosen)

    def slots(self, name: str) -> tuple[Slot, ...]:
        node = self.by_name[name]
        instances: tuple[str | None, ...] = node.instances or (None,)
        return tuple(Slot(node, instance, self.tier[name]) for instance in instances)

    def path(self, name: str, repository: str) -> str:
        """The repository path to request at mirror ``name``.

        Prefixes compose down the chain: a mirror names its parent's repositories under its
        own prefix, so a plain child of a Harbor-style parent ("dockerhub-proxy") asks for
        ``dockerhub-proxy/library/python``, and a child with prefix ``r`` for
        ``r/dockerhub-proxy/library/python``.
        """
        parts = [self.by_name[n].path_prefix.strip("/") for n in self._chain(name)]
        return "/".join([p for p in parts if p] + [repository])

    def scope_repo(self, name: str, repository: str) -> str:
        return repository if self.by_name[name].cache_scope == "repository" else ""

    def held_keys(self, holdings: Iterable[Held]) -> set[Key]:
        """Ledger holdings as cache keys. A holding without an instance counts for every
        instance of the mirror (a ledger that does not track instances); so does ``""``."""
        keys: set[Key] = set()
        for h in holdings:
            if h.mirror not in self.tier:
                continue
            keys.add(
                (h.mirror, h.instance or None, self.scope_repo(h.mirror, h.repository), h.digest)
            )
        return keys


def is_held(held: set[Key], key: Key) -> bool:
    mirror, instance, repo, digest = key
    return key in held or (instance is not None and (mirror, None, repo, digest) in held)
