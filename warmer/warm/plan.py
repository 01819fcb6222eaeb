"""The planner: wanted images + topology + ledger + budget -> an ordered list of fetches.

Pure: no network, clock or database; ``now`` is passed in. The executor carries the plan out.

Cost model
    Every item is one object (manifest or blob) made warm in one cache: a mirror, or one
    instance of a mirror whose instances keep separate caches. Caches are keyed per
    (mirror, instance, repository, digest) under ``cache_scope="repository"`` (CNCF
    distribution: the same blob under two repositories is fetched twice) and per
    (mirror, instance, digest) under ``"global"``. A cold item costs its bytes on the
    mirror's parent link (``parent_cost``): ``size`` when its stored copy is read,
    ``size * fetch_multiplicity`` when its relayed copy is (CNCF distribution 2.8 fetches
    a blob twice for a relayed read: ``MirrorNode.parent_cost``). An image's cost is the sum of
    ``parent_cost`` over the items it would add across every mirror of the target chains;
    what the ledger holds or the plan already has costs nothing.

Value
    The plan is worth the bytes the predicted pulls get from warm objects, as the byte hit
    rate counts them. A pull is served by every warm object of its image in the target
    cache it pulls from, whoever brought the object there: a base layer another image
    planned serves it, as does one the ledger holds. So each object an image needs in a
    target cache is worth its size times the predicted pulls (``score``) of every wanted
    image it would serve there (caches keyed per repository or by digest: see the cost
    model), split evenly over the target caches those pulls are spread over. A tag expected
    to move during the period (``stay`` below 1: the share of its pulls made before the
    move) still finds the objects it shares with other wanted images (base layers) after
    the move, but not its own (top layers, manifests): an object no other wanted image holds
    counts its image's pulls at ``stay``. An image's value at a step of the greedy is what
    the objects it still needs are worth, so it falls as other images bring the ones it
    shares; the plan's value, the sum over what it makes warm, is what the retries compare.
    Objects in a tier above the targets (central) serve no pull themselves: they are cost.

    Bytes, not pulls: a cold pull costs time and parent bytes in proportion to its size (a
    2 GB image missed costs minutes, a 5 MB one a second), so the plan maximises the bytes
    pulled warm. Per new byte, an image that shares nothing is then worth its pulls,
    whatever its size. Valuing pulls per byte, or each image by its own pulls alone, measured
    worse in the backtest (``bench/backtest.py``; docs/benchmarks.md, sessions 28 and 35).

Order
    Greedy by value per new byte: at each step the image with the highest
    ``value / marginal cost`` that still fits is taken, then the marginal cost and value of
    every image sharing its objects are lowered (a base layer planned makes the next image
    that shares it cheap, and no longer counts in its value). Ties are
    broken by image name. Within an image, items go top tier first, so a parent's fetch of an
    object always precedes (and is in ``depends_on`` of) its child's request for it.

Retries
    Greedy alone can leave one large, valuable image out at the budget (or window) edge and
    fill the room with smaller, lesser ones. So when images are left out, the greedy is run
    again with each of the ``RETRIES`` most valuable of them (that fit on their own) taken
    first, and the set of images worth most in total value is kept (ties: the plain greedy).
    A retried set is then ordered by the same greedy restricted to it, which takes all of it
    (the set fits, so every marginal cost on the way does too).

Aliases
    Tags of one repository that resolve to one manifest (``latest``, ``3``, ``3.12``) share
    its items, but a pull-through mirror keeps a tag only when it is asked for that tag
    (CNCF distribution stores the tag when it resolves it through its parent). Central is
    asked for every tag when they are resolved; at a child tier, each further tag of a
    manifest this plan fetches there gets an item of its own: the manifest by that tag, no
    parent bytes, after the first tag's item (the executor GETs the manifest, which the
    mirror holds by then, and HEADs the tag). A tag whose manifest a mirror already held
    before the plan is not asked again.

Continuation
    ``plan(..., after=earlier)`` plans more images into a run that already has ``earlier``'s
    items (the warm run starts fetching its first images while the rest still resolve):
    ``earlier``'s objects count as planned (they cost nothing again, a child tier's item
    depends on them), their bytes count against the budget and the window, the new items
    are numbered after them, and images ``earlier`` planned are not planned again.

Artifacts
    An image's ``artifacts`` (signatures, attestations, SBOMs, referrers: see
    ``warmer.warm.artifacts``) are planned with it, as part of it: same tiers, same budget
    and window, same greedy (they add to its cost). A manifest with a ``reference`` is
    fetched by that tag (a cosign ``sha256-<hex>.sig``, a referrers fallback tag), so each
    mirror keeps the tag a client looks up; its items are marked ``artifact``.

Limits
    ``Budget.bytes`` counts the bytes crossing the links of the target chains: the sum of
    ``parent_cost`` over all planned items (central's upstream link and the regional links).
    ``Budget.window`` limits each capped link: the time estimate is, per link, parent bytes /
    ``link_rate`` (links run in parallel, a child waiting on its parent is ignored), and the
    plan's estimate is the maximum over links. Instances of one mirror share its link.
    An image that does not fit is left out with its reason and smaller ones may still fit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from warmer.units import format_duration, format_size
from warmer.warm.topology import (
    Held,
    Key,
    MirrorNode,
    PlanError,
    Slot,
    Topology,
    is_held,
)

__all__ = [
    "Blob",
    "Budget",
    "Held",
    "MirrorNode",
    "Plan",
    "PlanError",
    "PlanItem",
    "Skipped",
    "WantedImage",
    "merge",
    "plan",
]

ALREADY_WARM = "already warm"
RETRIES = 8  # left-out images tried first; each try is one more greedy pass


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    kind: Literal["manifest", "blob"]
    media_type: str = ""
    reference: str = ""  # a manifest fetched by this tag (an artifact's cosign/fallback tag)
    artifact: bool = False  # attached to the image (warmer.warm.artifacts), not part of it


@dataclass(frozen=True)
class WantedImage:
    image: str  # canonical reference, e.g. "docker.io/library/python:3.12"
    upstream: str  # upstream name in config
    repository: str  # repository path at the upstream, e.g. "library/python"
    tag: str | None
    digest: str  # resolved top digest
    score: float  # predicted pulls
    manifests: tuple[Blob, ...]  # index first (if any), then platform manifests, fetch order
    blobs: tuple[Blob, ...]  # configs + layers of the selected platforms, de-duplicated
    stay: float = 1.0  # share of the pulls before the tag's expected move (see Value)
    artifacts: tuple[Blob, ...] = ()  # signatures, SBOMs... (warmer.warm.artifacts.plan_blobs)


@dataclass(frozen=True)
class Budget:
    bytes: int | None
    window: timedelta | None


@dataclass(frozen=True)
class PlanItem:
    order: int
    mirror: str
    instance: str | None
    tier: int  # 0 = top (central)
    repository: str  # path to request at this mirror, prefixes applied
    upstream_repository: str
    kind: Literal["manifest", "blob"]
    digest: str
    size: int
    media_type: str
    image: str
    reference: str  # tag for the top manifest (the mirror records the tag), else the digest
    parent_cost: int  # bytes on the mirror's parent link
    depends_on: tuple[int, ...]  # orders of the parent tier's items for the same object
    artifact: bool = False  # an artifact attached to ``image`` (a signature, an SBOM...)


@dataclass(frozen=True)
class Skipped:
    image: str
    reason: str


@dataclass(frozen=True)
class Plan:
    items: tuple[PlanItem, ...]
    skipped: tuple[Skipped, ...]
    images: tuple[str, ...]  # planned images, in pick order
    bytes_by_mirror: Mapping[str, int]  # bytes read through each mirror
    parent_bytes_by_mirror: Mapping[str, int]  # bytes each mirror pulls over its parent link
    created_at: datetime
    estimated_seconds: float = 0.0  # max over capped links of parent bytes / link_rate


@dataclass
class _Candidate:
    """Mutable greedy state for one wanted image."""

    want: WantedImage
    worth: float  # marginal value: what its needed serving objects are worth (see Value)
    needed: dict[Key, tuple[Slot, Blob]]  # not held and not yet planned, in emit order
    cost: int = 0
    link: dict[str, int] = field(default_factory=dict)  # marginal parent bytes per link
    version: int = 0

    def value(self) -> float:
        return math.inf if self.cost == 0 else max(self.worth, 0.0) / self.cost

    def copy(self) -> _Candidate:
        return _Candidate(self.want, self.worth, dict(self.needed), self.cost, dict(self.link))


def _contents(want: WantedImage) -> list[Blob]:
    seen: set[str] = set()
    out: list[Blob] = []
    for item in (*want.manifests, *want.blobs, *want.artifacts):
        if item.size < 0:
            raise PlanError(f"{want.image}: {item.digest} has a negative size")
        if item.digest not in seen:
            seen.add(item.digest)
            out.append(item)
    return out


def _holders(wanted: Sequence[WantedImage]) -> dict[str, int]:
    """How many wanted images hold each digest: one that only its image holds is its own
    (see Value)."""
    holders: dict[str, int] = {}
    for want in wanted:
        if not 0.0 <= want.stay <= 1.0:
            raise PlanError(f"{want.image}: stay must be between 0 and 1, not {want.stay}")
        for digest in {item.digest for item in (*want.manifests, *want.blobs, *want.artifacts)}:
            holders[digest] = holders.get(digest, 0) + 1
    return holders


def _unique(wanted: Sequence[WantedImage]) -> list[WantedImage]:
    """One entry per image; a repeated image keeps its highest score."""
    best: dict[str, WantedImage] = {}
    for want in wanted:
        if want.image not in best or want.score > best[want.image].score:
            best[want.image] = want
    return sorted(best.values(), key=lambda w: w.image)


class _Pool:
    """The wanted images as candidates before anything is planned; each greedy pass works on
    its own copy, so retries do not recompute what every image needs."""

    def __init__(
        self,
        topo: Topology,
        held: set[Key],
        wanted: list[WantedImage],
        holders: Mapping[str, int],
        after: Plan | None,
    ) -> None:
        self.topo = topo
        self.held = held
        # An earlier plan of the same run: its objects are planned already (see Continuation).
        self.prior: dict[Key, int] = {}
        self.tagged: set[tuple[Key, str]] = set()  # (object, reference) of manifest items
        self.offset = 0
        self.spent = 0
        self.link_bytes: dict[str, int] = dict.fromkeys(topo.warm, 0)
        if after is not None:
            for item in after.items:
                repo = topo.scope_repo(item.mirror, item.upstream_repository)
                key = (item.mirror, item.instance, repo, item.digest)
                self.prior.setdefault(key, item.order)
                if item.kind == "manifest":
                    self.tagged.add((key, item.reference))
                self.offset = max(self.offset, item.order + 1)
                self.spent += item.parent_cost
                if item.mirror in self.link_bytes:
                    self.link_bytes[item.mirror] += item.parent_cost
        self.skipped: dict[str, str] = {}  # images that are no candidates at all
        self.cands: list[_Candidate] = []
        self.by_key: dict[Key, list[int]] = {}
        # What making each needed object warm at a target is worth: the bytes of the pulls
        # it serves, summed over the images whose pulls it serves (see Value).
        self.key_value: dict[Key, float] = {}
        for want in wanted:
            self._add(want, holders)
        for cand in self.cands:
            cand.worth = math.fsum(self.key_value.get(key, 0.0) for key in cand.needed)

    def _add(self, want: WantedImage, holders: Mapping[str, int]) -> None:
        if not want.manifests:
            self.skipped[want.image] = "nothing to fetch: no manifest resolved"
            return
        mirrors = self.topo.mirrors_for(want.upstream)
        if not mirrors:
            self.skipped[want.image] = f"no target mirror proxies upstream {want.upstream!r}"
            return
        cand = _Candidate(want, 0.0, {})
        contents = _contents(want)
        planned = False  # some of it is in the earlier plan of the run
        # Its pulls are spread over the caches of the target mirrors that serve it.
        serving = max(1, sum(len(self.topo.slots(n)) for n in mirrors if n in self.topo.chains))
        for name in mirrors:
            repo = self.topo.scope_repo(name, want.repository)
            node = self.topo.by_name[name]
            for slot in self.topo.slots(name):
                for blob in contents:
                    key = (name, slot.instance, repo, blob.digest)
                    if key in self.prior:
                        planned = True
                    elif not is_held(self.held, key):
                        cand.needed[key] = (slot, blob)
                        cand.cost += node.parent_cost(blob.size)
                        cand.link[name] = cand.link.get(name, 0) + node.parent_cost(blob.size)
                        if name in self.topo.chains:
                            stay = 1.0 if holders.get(blob.digest, 0) > 1 else want.stay
                            worth = want.score * blob.size * stay / serving
                            self.key_value[key] = self.key_value.get(key, 0.0) + worth
        if not cand.needed and not planned:
            self.skipped[want.image] = ALREADY_WARM
            return
        cid = len(self.cands)
        self.cands.append(cand)
        for key in cand.needed:
            self.by_key.setdefault(key, []).append(cid)


class _Planner:
    """One greedy pass over a copy of the pool. A pass with ``emit`` False only chooses the
    images (a retry that loses needs no items, and building them is most of a pass's time)."""

    def __init__(self, pool: _Pool, budget: Budget, *, emit: bool = True) -> None:
        self.emit = emit
        self.topo = pool.topo
        self.held = pool.held
        self.by_key = pool.by_key
        self.budget = budget
        self.planned: dict[Key, int] = dict(pool.prior)
        self.offset = pool.offset
        self.items: list[PlanItem] = []
        self.spent = pool.spent
        self.link_bytes: dict[str, int] = dict(pool.link_bytes)
        self.images: list[str] = []
        self.picked: set[int] = set()
        self.skipped: dict[str, str] = dict(pool.skipped)
        self.cands = [cand.copy() for cand in pool.cands]
        self.tagged = set(pool.tagged)  # (object, reference) of every manifest item
        self.key_value = pool.key_value
        self.gained: list[float] = []  # each pick's marginal value

    def worth(self) -> float:
        """The value of everything planned: the bytes of the predicted pulls it serves."""
        return math.fsum(self.gained)

    def misfit(self, cand: _Candidate) -> str | None:
        """Why ``cand`` does not fit what is left, or None when it does."""
        if self.budget.bytes is not None:
            left = max(self.budget.bytes - self.spent, 0)
            if cand.cost > left:
                return f"over budget: needs {format_size(cand.cost)}, {format_size(left)} left"
        window = self.budget.window
        if window is None:
            return None
        for name in sorted(cand.link):
            rate = self.topo.by_name[name].link_rate
            if rate is None:
                continue
            needed = (self.link_bytes[name] + cand.link[name]) / rate
            if needed > window.total_seconds():
                used = timedelta(seconds=self.link_bytes[name] / rate)
                return (
                    f"window too short: {format_size(cand.link[name])} more on {name}'s "
                    f"parent link at {format_size(rate)}/s needs "
                    f"{format_duration(timedelta(seconds=cand.link[name] / rate))}, "
                    f"{format_duration(window - used)} of {format_duration(window)} left"
                )
        return None

    def run(self, first: int | None = None, only: set[int] | None = None) -> _Planner:
        """Greedy by value per new byte over the candidates in ``only`` (default: all),
        after taking ``first`` (which must fit alone); the rest get their reasons."""
        active = set(range(len(self.cands))) if only is None else only
        if first is not None:
            assert self.misfit(self.cands[first]) is None, "a first image fits alone"
            self._pick(first)
        heap = [
            (-c.value(), c.want.image, c.version, cid)
            for cid, c in enumerate(self.cands)
            if cid in active and cid not in self.picked
        ]
        heapq.heapify(heap)
        while heap:
            _, _, version, cid = heapq.heappop(heap)
            cand = self.cands[cid]
            if cid in self.picked or version != cand.version or self.misfit(cand) is not None:
                # Stale, or too big now: it is pushed again if its marginal cost drops.
                continue
            for cid2 in self._pick(cid) & active:
                other = self.cands[cid2]
                heapq.heappush(heap, (-other.value(), other.want.image, other.version, cid2))
        for cid, cand in enumerate(self.cands):
            if cid not in self.picked:
                reason = self.misfit(cand)
                assert reason is not None, "a fitting image is always picked"
                self.skipped[cand.want.image] = reason
        return self

    def _pick(self, cid: int) -> set[int]:
        self.gained.append(max(self.cands[cid].worth, 0.0))
        self.picked.add(cid)
        self.images.append(self.cands[cid].want.image)
        return self._take(self.cands[cid])

    def _take(self, cand: _Candidate) -> set[int]:
        """Plan all of ``cand``'s new items; return the candidates whose cost dropped."""
        touched: set[int] = set()
        for key, (slot, blob) in list(cand.needed.items()):
            name = slot.node.name
            cost = slot.node.parent_cost(blob.size)
            if self.emit:
                self._emit(cand.want, key, slot, blob, cost)
            self.spent += cost
            self.link_bytes[name] += cost
            for cid in self.by_key[key]:
                other = self.cands[cid]
                if key in other.needed:
                    del other.needed[key]
                    other.cost -= cost
                    other.link[name] -= cost
                    other.worth -= self.key_value.get(key, 0.0)
                    other.version += 1
                    touched.add(cid)
        if self.emit and cand.want.tag:
            self._alias(cand.want, cand.want.tag)
        return touched

    def _alias(self, want: WantedImage, tag: str) -> None:
        """A tag whose top manifest another tag's item of this plan fetches through a
        child-tier mirror gets its own item there (see "Aliases")."""
        top = next(m for m in want.manifests if m.digest == want.digest)
        for name in self.topo.mirrors_for(want.upstream):
            repo = self.topo.scope_repo(name, want.repository)
            for slot in self.topo.slots(name):
                key = (name, slot.instance, repo, want.digest)
                if slot.tier == 0 or key not in self.planned or (key, tag) in self.tagged:
                    continue
                self._emit(want, key, slot, top, 0, reference=tag, after=self.planned[key])

    def _emit(
        self,
        want: WantedImage,
        key: Key,
        slot: Slot,
        blob: Blob,
        cost: int,
        reference: str = "",
        after: int | None = None,
    ) -> None:
        name = slot.node.name
        top = blob.kind == "manifest" and blob.digest == want.digest
        order = self.offset + len(self.items)
        self.items.append(
            PlanItem(
                order=order,
                mirror=name,
                instance=slot.instance,
                tier=slot.tier,
                repository=self.topo.path(name, want.repository),
                upstream_repository=want.repository,
                kind=blob.kind,
                digest=blob.digest,
                size=blob.size,
                media_type=blob.media_type,
                image=want.image,
                reference=reference
                or blob.reference
                or (want.tag if top and want.tag else blob.digest),
                parent_cost=cost,
                depends_on=(
                    (after,)
                    if after is not None
                    else self._parents(name, want.repository, blob.digest)
                ),
                artifact=blob.artifact,
            )
        )
        if after is None:
            self.planned[key] = order
        if blob.kind == "manifest":
            self.tagged.add((key, self.items[-1].reference))

    def _parents(self, name: str, repository: str, digest: str) -> tuple[int, ...]:
        """Orders of the parent's items for this object (every parent instance, since the
        child reaches its parent through the balancer)."""
        parent = self.topo.by_name[name].parent
        if parent is None:
            return ()
        deps: list[int] = []
        for slot in self.topo.slots(parent):
            key = (parent, slot.instance, self.topo.scope_repo(parent, repository), digest)
            if key in self.planned:
                deps.append(self.planned[key])
            else:
                assert is_held(self.held, key), f"{parent} would not hold {digest}"
        return tuple(deps)


def _best(pool: _Pool, budget: Budget) -> _Planner:
    """The plain greedy, or a retry worth more in total value; see "Retries" above."""
    greedy = _Planner(pool, budget).run()
    left = [cid for cid in range(len(pool.cands)) if cid not in greedy.picked]
    if not left:
        return greedy
    empty = _Planner(pool, budget, emit=False)
    firsts = sorted(
        (cid for cid in left if pool.cands[cid].worth > 0),
        key=lambda cid: (-pool.cands[cid].worth, pool.cands[cid].want.image),
    )
    best, worth = greedy, greedy.worth()
    for cid in [c for c in firsts if empty.misfit(empty.cands[c]) is None][:RETRIES]:
        trial = _Planner(pool, budget, emit=False).run(first=cid)
        if trial.worth() > worth * (1 + 1e-9):  # not a tie lost to rounding
            best, worth = trial, trial.worth()
    if best is greedy:
        return greedy
    ordered = _Planner(pool, budget).run(only=best.picked)
    assert ordered.picked == best.picked, "a set that fits is taken whole"
    return ordered


def plan(
    wanted: Sequence[WantedImage],
    mirrors: Sequence[MirrorNode],
    targets: Sequence[str],
    holdings: Iterable[Held],
    budget: Budget,
    now: datetime,
    after: Plan | None = None,
) -> Plan:
    """Plan warming ``targets`` and their chains up to the upstream; see the module doc.

    With ``after``, only the continuation is returned (see Continuation above): its items,
    images, skipped images and bytes; :func:`merge` makes the whole.
    Raises :class:`PlanError` when the topology is inconsistent.
    """
    topo = Topology(mirrors, targets)
    earlier = set(after.images) if after is not None else set()
    every = _unique(wanted)
    # Over every wanted image: a layer shared with one ``after`` planned is no one's own.
    holders = _holders(every)
    fresh = [w for w in every if w.image not in earlier]
    pool = _Pool(topo, topo.held_keys(holdings), fresh, holders, after)
    planner = _best(pool, budget)
    bytes_by_mirror = dict.fromkeys(topo.warm, 0)
    for item in planner.items:
        bytes_by_mirror[item.mirror] += item.size
    parent_bytes = {name: sent - pool.link_bytes[name] for name, sent in planner.link_bytes.items()}
    return Plan(
        items=tuple(planner.items),
        skipped=tuple(Skipped(image, planner.skipped[image]) for image in sorted(planner.skipped)),
        images=tuple(planner.images),
        bytes_by_mirror=bytes_by_mirror,
        parent_bytes_by_mirror=parent_bytes,
        created_at=now,
        estimated_seconds=_estimate(topo, parent_bytes),
    )


def _estimate(topo: Topology, parent_bytes: Mapping[str, int]) -> float:
    """The longest capped link's time: links run in parallel."""
    estimate = 0.0
    for name, sent in parent_bytes.items():
        rate = topo.by_name[name].link_rate
        if rate is not None:
            estimate = max(estimate, sent / rate)
    return estimate


def merge(first: Plan, then: Plan) -> Plan:
    """``first`` and its continuation ``then`` (``plan(..., after=first)``) as one plan.

    Its ``estimated_seconds`` is the sum of both: an upper bound (the slowest link of each
    part may differ), since a plan keeps no link rates.
    """
    again = {s.image for s in then.skipped}
    bytes_by_mirror = dict(first.bytes_by_mirror)
    parent_bytes = dict(first.parent_bytes_by_mirror)
    for name, n in then.bytes_by_mirror.items():
        bytes_by_mirror[name] = bytes_by_mirror.get(name, 0) + n
    for name, n in then.parent_bytes_by_mirror.items():
        parent_bytes[name] = parent_bytes.get(name, 0) + n
    return Plan(
        items=first.items + then.items,
        skipped=tuple(
            sorted(
                (*(s for s in first.skipped if s.image not in again), *then.skipped),
                key=lambda s: s.image,
            )
        ),
        images=first.images + then.images,
        bytes_by_mirror=bytes_by_mirror,
        parent_bytes_by_mirror=parent_bytes,
        created_at=first.created_at,
        estimated_seconds=first.estimated_seconds + then.estimated_seconds,
    )
