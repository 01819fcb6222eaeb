"""The planner on plain values: dedupe, tier order, value per new byte, limits, replanning."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from warmer.warm.plan import (
    Blob,
    Budget,
    Held,
    MirrorNode,
    Plan,
    PlanError,
    PlanItem,
    WantedImage,
    merge,
    plan,
)
from warmer.warm.topology import Topology

NOW = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
NO_LIMIT = Budget(bytes=None, window=None)


def blob(name: str, size: int) -> Blob:
    return Blob(f"sha256:{name}", size, "blob", "application/vnd.oci.image.layer.v1.tar")


def image(
    name: str,
    layers: dict[str, int],
    score: float = 1.0,
    repository: str | None = None,
    tag: str | None = "latest",
    upstream: str = "docker.io",
    manifest_size: int = 10,
    platforms: int = 0,
) -> WantedImage:
    """An image whose top manifest is ``sha256:m-<name>`` (an index when ``platforms``)."""
    repo = repository or f"library/{name}"
    top = Blob(f"sha256:m-{name}", manifest_size, "manifest", "application/vnd.oci.image.index")
    subs = tuple(Blob(f"sha256:m-{name}-p{i}", manifest_size, "manifest") for i in range(platforms))
    return WantedImage(
        image=f"{upstream}/{repo}:{tag}" if tag else f"{upstream}/{repo}@{top.digest}",
        upstream=upstream,
        repository=repo,
        tag=tag,
        digest=top.digest,
        score=score,
        manifests=(top, *subs),
        blobs=tuple(blob(d, s) for d, s in layers.items()),
    )


def mirror(
    name: str,
    parent: str | None = None,
    scope: Literal["repository", "global"] = "repository",
    mult: int = 1,
    rate: int | None = None,
    prefix: str = "",
    instances: tuple[str, ...] = (),
    upstreams: tuple[str, ...] = (),
) -> MirrorNode:
    return MirrorNode(name, parent, prefix, scope, mult, rate, instances, upstreams)


CHAIN = (mirror("central", mult=2), mirror("regional", "central", mult=2))


def holdings_after(result: Plan) -> list[Held]:
    """What the ledger holds after the executor carried ``result`` out successfully."""
    return [Held(i.mirror, i.upstream_repository, i.digest, i.instance) for i in result.items]


def at(result: Plan, mirror_name: str) -> list[PlanItem]:
    return [i for i in result.items if i.mirror == mirror_name]


def reasons(result: Plan) -> dict[str, str]:
    return {s.image: s.reason for s in result.skipped}


@pytest.mark.parametrize(
    ("scope", "base_fetches"),
    [("repository", 2), ("global", 1)],
)
def test_dedupe_per_repository_or_global(
    scope: Literal["repository", "global"], base_fetches: int
) -> None:
    wanted = [
        image("python", {"base": 100, "py": 50}),
        image("node", {"base": 100, "nd": 50}),
        image("python2", {"base": 100, "py": 50}, repository="library/python", tag="3.12"),
    ]
    result = plan(wanted, [mirror("m", scope=scope)], ["m"], [], NO_LIMIT, NOW)
    counts = Counter(i.digest for i in result.items)
    assert counts["sha256:base"] == base_fetches
    assert counts["sha256:py"] == 1  # same repository: once in either scope
    keys = [(i.mirror, i.instance, i.upstream_repository, i.digest) for i in result.items]
    assert len(keys) == len(set(keys))
    assert result.created_at == NOW


def test_top_down_order_and_depends_on() -> None:
    wanted = [image("python", {"base": 100, "py": 50}, platforms=2)]
    result = plan(wanted, CHAIN, ["regional"], [], NO_LIMIT, NOW)
    central, regional = at(result, "central"), at(result, "regional")
    assert [i.digest for i in central] == [i.digest for i in regional]
    assert {i.tier for i in central} == {0} and {i.tier for i in regional} == {1}
    by_order = {i.order: i for i in result.items}
    assert [i.order for i in result.items] == list(range(len(result.items)))
    for item in central:
        assert item.depends_on == ()
    for item in regional:
        (dep,) = item.depends_on
        assert dep < item.order
        assert by_order[dep].mirror == "central" and by_order[dep].digest == item.digest


def test_top_manifest_by_tag_the_rest_by_digest() -> None:
    wanted = [
        image("python", {"l": 5}, platforms=2, tag="3.12"),
        image("node", {"n": 5}, tag=None),
    ]
    result = plan(wanted, [mirror("m")], ["m"], [], NO_LIMIT, NOW)
    refs = {(i.image, i.digest): i.reference for i in result.items}
    assert refs[("docker.io/library/python:3.12", "sha256:m-python")] == "3.12"
    assert refs[("docker.io/library/python:3.12", "sha256:m-python-p0")] == "sha256:m-python-p0"
    assert refs[("docker.io/library/python:3.12", "sha256:l")] == "sha256:l"
    node = "docker.io/library/node@sha256:m-node"
    assert refs[(node, "sha256:m-node")] == "sha256:m-node"
    first = [i.digest for i in result.items if i.image.endswith("python:3.12")]
    assert first[:3] == ["sha256:m-python", "sha256:m-python-p0", "sha256:m-python-p1"]


def short(name: str) -> str:
    """``docker.io/library/a:latest`` -> ``a``."""
    return name.rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def test_a_shared_base_layer_is_worth_every_pull_it_serves_once() -> None:
    # a and b (one repository) share a base layer that serves a's 10 pulls and b's 6: a
    # is worth (1000 x 16 + 20 x 10) / 1020 per byte, c 7. Once a is planned, b's pulls
    # get the base already: b adds only its manifest and own layer, 6 per byte: a, c, b.
    wanted = [
        image("c", {"c": 510}, score=7),
        image("b", {"base": 1000, "b": 10}, score=6, repository="library/a", tag="b"),
        image("a", {"base": 1000, "a": 10}, score=10),
    ]
    result = plan(wanted, [mirror("m")], ["m"], [], NO_LIMIT, NOW)
    assert result.images == (
        "docker.io/library/a:latest",
        "docker.io/library/c:latest",
        "docker.io/library/a:b",
    )
    b_digests = [i.digest for i in result.items if i.image.endswith(":b")]
    assert b_digests == ["sha256:m-b", "sha256:b"]  # the base layer is not fetched again


def test_a_base_layer_counts_for_the_pulls_of_an_image_left_out() -> None:
    # Room for one of a (1020 B) and c (1010 B). a's base layer also serves b's 5 pulls,
    # whether or not b fits: 10 x 1000 + 5 x 20 B of pulls served, against c's 8 x 1010.
    # Valued by a's own pulls alone (5 per byte), c (8) would have been taken.
    wanted = [
        image("a", {"base": 1000, "a": 10}, score=5),
        image("b", {"base": 1000, "b": 2000}, score=5, repository="library/a", tag="b"),
        image("c", {"c": 1000}, score=8),
    ]
    result = plan(wanted, [mirror("m")], ["m"], [], Budget(1100, None), NOW)
    assert [short(i) for i in result.images] == ["a"]


def test_shared_layers_in_another_repository_serve_nothing_under_repository_scope() -> None:
    # Room for about one image. Cached per repository, a's base layer serves a's 5 pulls
    # only (5 per byte, c 8): c. Cached by digest, it serves b's 5 pulls too (about 10 per
    # byte), and b then costs only its manifest and own layer: a and b.
    wanted = [
        image("a", {"base": 1000, "a": 10}, score=5),
        image("b", {"base": 1000, "b": 10}, score=5),
        image("c", {"c": 1000}, score=8),
    ]
    per_repo = plan(wanted, [mirror("m")], ["m"], [], Budget(1100, None), NOW)
    assert [short(i) for i in per_repo.images] == ["c"]
    shared = plan(wanted, [mirror("m", scope="global")], ["m"], [], Budget(1100, None), NOW)
    assert [short(i) for i in shared.images] == ["a", "b"]


@pytest.mark.parametrize(
    ("budget", "planned", "skipped"),
    [
        (None, ["a", "c", "b"], {}),
        (3280, ["a", "c", "b"], {}),
        (2260, ["a", "b"], {"c": "over budget: needs 1020 B, 0 B left"}),
        (
            1200,
            ["c"],
            {
                "a": "over budget: needs 2.0 KiB, 180 B left",
                "b": "over budget: needs 2.2 KiB, 180 B left",
            },
        ),
        (100, [], {"c": "over budget: needs 1020 B, 100 B left"}),
    ],
)
def test_budget_cut_with_reasons(
    budget: int | None, planned: list[str], skipped: dict[str, str]
) -> None:
    # Multiplicity 2. a: 10+1000+10 -> 2040. b shares a's repository and base layer:
    # 2220 alone, 220 after a. c: 10+500 -> 1020. Value order: a (its base serves b's pull
    # too), c (1 per byte), then b (after a, its own 110 B at 1 pull: 0.5 per byte).
    wanted = [
        image("a", {"base": 1000, "a": 10}, score=100),
        image("b", {"base": 1000, "b": 100}, score=1, repository="library/a", tag="b"),
        image("c", {"c": 500}, score=2),
    ]
    result = plan(wanted, [mirror("m", mult=2)], ["m"], [], Budget(budget, None), NOW)
    names = {"docker.io/library/a:latest": "a", "docker.io/library/a:b": "b"}
    names["docker.io/library/c:latest"] = "c"
    assert [names[i] for i in result.images] == planned
    got = {names[s.image]: s.reason for s in result.skipped}
    for name, reason in skipped.items():
        assert got[name] == reason
    assert set(got) | set(planned) == {"a", "b", "c"} and not set(got) & set(planned)
    spent = sum(i.parent_cost for i in result.items)
    assert spent == sum(result.parent_bytes_by_mirror.values())
    if budget is not None:
        assert spent <= budget


@pytest.mark.parametrize(
    ("window", "planned", "reason_start"),
    [
        (None, {"a", "b"}, None),
        (timedelta(seconds=100), {"a", "b"}, None),
        (timedelta(seconds=60), {"a"}, "window too short: 1020 B more on central's parent link"),
        (timedelta(seconds=5), set(), "window too short: "),
    ],
)
def test_window_cut(window: timedelta | None, planned: set[str], reason_start: str | None) -> None:
    # central pulls at 40 B/s with multiplicity 2: a costs 2040 B (51 s), b 1020 B (25.5 s).
    # The regional link is uncapped, so only central's link limits the window.
    mirrors = [mirror("central", mult=2, rate=40), mirror("regional", "central")]
    wanted = [image("a", {"a": 1010}, score=10), image("b", {"b": 500}, score=1)]
    result = plan(wanted, mirrors, ["regional"], [], Budget(None, window), NOW)
    assert {short(i) for i in result.images} == planned
    for s in result.skipped:
        assert reason_start is not None and s.reason.startswith(reason_start), s.reason
    assert result.estimated_seconds == result.parent_bytes_by_mirror["central"] / 40
    if window is not None:
        assert result.estimated_seconds <= window.total_seconds()


def test_window_limits_each_link_by_its_own_rate() -> None:
    # central fast, regional slow: the regional link decides.
    mirrors = [mirror("central", rate=1000), mirror("regional", "central", rate=10)]
    wanted = [image("a", {"a": 90}, score=2), image("b", {"b": 90}, score=1)]
    result = plan(wanted, mirrors, ["regional"], [], Budget(None, timedelta(seconds=15)), NOW)
    assert [short(i) for i in result.images] == ["a"]
    assert reasons(result)["docker.io/library/b:latest"].startswith(
        "window too short: 100 B more on regional's parent link at 10 B/s needs 10s, 5s of 15s"
    )
    assert result.estimated_seconds == 10.0


@pytest.mark.parametrize(
    "mirrors",
    [
        [mirror("m")],
        [mirror("m", scope="global")],
        list(CHAIN),
        [mirror("central", instances=("c1", "c2")), mirror("regional", "central", mult=2)],
        [mirror("central", prefix="hub"), mirror("regional", "central", instances=("r1", "r2"))],
    ],
)
def test_replanning_after_a_successful_run_yields_nothing(mirrors: list[MirrorNode]) -> None:
    wanted = [
        image("python", {"base": 100, "py": 50}, score=3, platforms=2),
        image("node", {"base": 100, "nd": 50}, score=2),
        image("py2", {"base": 100, "py": 50, "x": 5}, repository="library/python", tag="3"),
    ]
    target = mirrors[-1].name
    first = plan(wanted, mirrors, [target], [], NO_LIMIT, NOW)
    assert len(first.images) == 3 and first.items
    again = plan(wanted, mirrors, [target], holdings_after(first), NO_LIMIT, NOW)
    assert again.items == () and again.images == ()
    assert reasons(again) == dict.fromkeys((w.image for w in wanted), "already warm")
    assert sum(again.parent_bytes_by_mirror.values()) == 0


def test_holdings_make_held_objects_free() -> None:
    wanted = [image("python", {"base": 100, "py": 50})]
    held = [
        Held("central", "library/python", "sha256:base"),
        Held("central", "library/node", "sha256:py"),  # other repository: not held here
        Held("regional", "library/python", "sha256:py"),
    ]
    result = plan(wanted, CHAIN, ["regional"], held, NO_LIMIT, NOW)
    got = {(i.mirror, i.digest): i for i in result.items}
    assert set(got) == {
        ("central", "sha256:m-python"),
        ("central", "sha256:py"),
        ("regional", "sha256:m-python"),
        ("regional", "sha256:base"),
    }
    # The parent holds base already, so the regional fetch of it waits for nothing.
    assert got[("regional", "sha256:base")].depends_on == ()
    assert got[("regional", "sha256:m-python")].depends_on == (
        got[("central", "sha256:m-python")].order,
    )


def test_instances_are_warmed_one_by_one() -> None:
    mirrors = [
        mirror("central", instances=("c1", "c2")),
        mirror("regional", "central", instances=("r1", "r2", "r3")),
    ]
    wanted = [image("python", {"base": 100})]
    held = [Held("regional", "library/python", "sha256:base", "r2")]
    result = plan(wanted, mirrors, ["regional"], held, NO_LIMIT, NOW)
    per = Counter((i.mirror, i.instance, i.digest) for i in result.items)
    assert per == Counter(
        [("central", c, d) for c in ("c1", "c2") for d in ("sha256:m-python", "sha256:base")]
        + [("regional", r, "sha256:m-python") for r in ("r1", "r2", "r3")]
        + [("regional", r, "sha256:base") for r in ("r1", "r3")]
    )
    # A child reaches its parent through the balancer: it waits for every parent instance.
    central = {(i.instance, i.digest): i.order for i in result.items if i.mirror == "central"}
    for item in at(result, "regional"):
        assert item.depends_on == (central[("c1", item.digest)], central[("c2", item.digest)])
    # Instances pull over the mirror's one link: their parent bytes add up.
    assert result.parent_bytes_by_mirror["central"] == 2 * 110
    # A holding without an instance covers every instance.
    assert (
        plan(
            wanted,
            mirrors,
            ["regional"],
            [Held("regional", "library/python", "sha256:base", "")],
            NO_LIMIT,
            NOW,
        ).parent_bytes_by_mirror["regional"]
        == 30
    )
    all_held = [Held("regional", "library/python", d) for d in ("sha256:m-python", "sha256:base")]
    again = plan(wanted, mirrors, ["regional"], all_held, NO_LIMIT, NOW)
    assert {i.mirror for i in again.items} == {"central"}


def test_harbor_style_prefix_applies_to_repository_only() -> None:
    mirrors = [
        mirror("central", prefix="dockerhub-proxy"),
        mirror("regional", "central"),
        mirror("edge", "regional", prefix="/cache/"),
    ]
    result = plan([image("python", {"l": 1})], mirrors, ["edge"], [], NO_LIMIT, NOW)
    paths = {i.mirror: i.repository for i in result.items}
    assert paths == {
        "central": "dockerhub-proxy/library/python",
        "regional": "dockerhub-proxy/library/python",
        "edge": "cache/dockerhub-proxy/library/python",
    }
    assert {i.upstream_repository for i in result.items} == {"library/python"}
    assert {i.mirror: i.tier for i in result.items} == {"central": 0, "regional": 1, "edge": 2}


def test_multiplicity_in_parent_cost() -> None:
    mirrors = [mirror("central", mult=2), mirror("regional", "central", mult=1)]
    result = plan([image("python", {"l": 1000})], mirrors, ["regional"], [], NO_LIMIT, NOW)
    costs = {(i.mirror, i.digest): i.parent_cost for i in result.items}
    assert costs == {
        ("central", "sha256:m-python"): 20,
        ("central", "sha256:l"): 2000,
        ("regional", "sha256:m-python"): 10,
        ("regional", "sha256:l"): 1000,
    }
    assert result.parent_bytes_by_mirror == {"central": 2020, "regional": 1010}
    assert result.bytes_by_mirror == {"central": 1010, "regional": 1010}
    # The budget counts the bytes on both links: 3030 fits, 3029 does not.
    assert plan(
        [image("python", {"l": 1000})], mirrors, ["regional"], [], Budget(3030, None), NOW
    ).items
    cut = plan([image("python", {"l": 1000})], mirrors, ["regional"], [], Budget(3029, None), NOW)
    assert cut.items == () and cut.skipped[0].reason.startswith("over budget: needs 3.0 KiB")


def test_two_regions_share_the_central_fetch() -> None:
    mirrors = [*CHAIN, mirror("regional-b", "central")]
    result = plan(
        [image("python", {"l": 100})], mirrors, ["regional", "regional-b"], [], NO_LIMIT, NOW
    )
    assert Counter(i.mirror for i in result.items) == {"central": 2, "regional": 2, "regional-b": 2}


def test_upstreams_a_chain_does_not_proxy_are_skipped() -> None:
    mirrors = [mirror("hub", upstreams=("docker.io",)), mirror("gh", upstreams=("ghcr.io",))]
    wanted = [
        image("python", {"l": 1}),
        image("tool", {"t": 1}, upstream="ghcr.io", repository="org/tool"),
        image("x", {"x": 1}, upstream="quay.io", repository="org/x"),
    ]
    result = plan(wanted, mirrors, ["hub", "gh"], [], NO_LIMIT, NOW)
    assert {(i.mirror, i.upstream_repository) for i in result.items} == {
        ("hub", "library/python"),
        ("gh", "org/tool"),
    }
    assert reasons(result) == {
        "quay.io/org/x:latest": "no target mirror proxies upstream 'quay.io'"
    }


def test_nothing_resolved_is_skipped_with_a_reason() -> None:
    empty = WantedImage("docker.io/library/gone:1", "docker.io", "library/gone", "1", "", 5, (), ())
    result = plan([empty], [mirror("m")], ["m"], [], NO_LIMIT, NOW)
    assert result.items == ()
    assert reasons(result) == {"docker.io/library/gone:1": "nothing to fetch: no manifest resolved"}


def test_same_content_under_two_tags_is_fetched_once() -> None:
    a = image("python", {"l": 100}, tag="3.12", score=1)
    b = WantedImage(
        "docker.io/library/python:3",
        a.upstream,
        a.repository,
        "3",
        a.digest,
        2,
        a.manifests,
        a.blobs,
    )
    result = plan([a, b], [mirror("m")], ["m"], [], NO_LIMIT, NOW)
    assert len(result.items) == 2
    assert result.images == ("docker.io/library/python:3", "docker.io/library/python:3.12")
    assert result.items[0].reference == "3"


@pytest.mark.parametrize(
    ("mirrors", "targets", "message"),
    [
        ([mirror("m")], ["nope"], "target 'nope' is not a configured mirror"),
        ([mirror("m", "ghost")], ["m"], "mirror 'm': parent 'ghost' is not a configured mirror"),
        ([mirror("a", "b"), mirror("b", "a")], ["a"], "its parents form a cycle"),
        ([mirror("m"), mirror("m")], ["m"], "mirror 'm' is listed twice"),
        ([mirror("m", mult=0)], ["m"], "fetch_multiplicity must be at least 1"),
        ([mirror("m", rate=0)], ["m"], "link_rate must be positive"),
    ],
)
def test_bad_topology_is_a_clear_error(
    mirrors: list[MirrorNode], targets: list[str], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        plan([image("python", {"l": 1})], mirrors, targets, [], NO_LIMIT, NOW)


def test_ties_are_broken_by_image_name_whatever_the_input_order() -> None:
    wanted = [image(n, {n: 100}, score=1) for n in ("delta", "alpha", "charlie", "bravo")]
    results = [
        plan(order, CHAIN, ["regional"], [], NO_LIMIT, NOW) for order in (wanted, wanted[::-1])
    ]
    assert len({r.items for r in results}) == 1
    (first,) = {r.images for r in results}
    assert [short(i) for i in first] == ["alpha", "bravo", "charlie", "delta"]


# Property-style check on seeded random inputs: the invariants every plan must keep.

SIZES = {f"l{i}": (i * 37) % 500 + 1 for i in range(12)}


def random_case(
    rng: random.Random,
) -> tuple[list[WantedImage], list[MirrorNode], list[str], list[Held], Budget]:
    mirrors: list[MirrorNode] = []
    for n in range(rng.randint(1, 5)):
        parent = rng.choice([None, *[m.name for m in mirrors]])
        inst = tuple(f"i{k}" for k in range(rng.choice([0, 0, 2, 3])))
        ups = rng.choice([(), ("docker.io",), ("docker.io", "ghcr.io")])
        scope: Literal["repository", "global"] = rng.choice(["repository", "global"])
        rate = rng.choice([None, 50, 500])
        prefix = rng.choice(["", "", "hub"])
        mirrors.append(mirror(f"m{n}", parent, scope, rng.randint(1, 3), rate, prefix, inst, ups))
    targets = rng.sample([m.name for m in mirrors], rng.randint(1, len(mirrors)))
    wanted: list[WantedImage] = []
    for k in range(rng.randint(1, 10)):
        layers = {d: SIZES[d] for d in rng.sample(sorted(SIZES), rng.randint(0, 4))}
        wanted.append(
            image(
                f"img{k}",
                layers,
                score=rng.choice([0.0, 1.0, 2.5, 10.0]),
                repository=rng.choice(["library/a", "library/b", "org/c"]),
                tag=rng.choice([None, f"t{k}"]),
                upstream=rng.choice(["docker.io", "docker.io", "ghcr.io"]),
                platforms=rng.randint(0, 2),
            )
        )
    holdings = [
        Held(
            rng.choice(mirrors).name,
            rng.choice(["library/a", "library/b", "org/c"]),
            "sha256:" + rng.choice([*SIZES, "m-img0", "m-img1"]),
            rng.choice([None, "i0", "i1"]),
        )
        for _ in range(rng.randint(0, 8))
    ]
    budget = Budget(
        rng.choice([None, 500, 3000, 20000]),
        rng.choice([None, timedelta(seconds=5), timedelta(seconds=60)]),
    )
    return wanted, mirrors, targets, holdings, budget


def check_invariants(
    result: Plan,
    wanted: list[WantedImage],
    mirrors: list[MirrorNode],
    targets: list[str],
    holdings: list[Held],
    budget: Budget,
) -> None:
    nodes = {m.name: m for m in mirrors}

    def chain(name: str) -> list[str]:
        out = [name]
        while (parent := nodes[out[-1]].parent) is not None:
            out.append(parent)
        return out

    def key(m: str, inst: str | None, repo: str, digest: str) -> tuple[str, str | None, str, str]:
        return (m, inst, repo if nodes[m].cache_scope == "repository" else "", digest)

    held = {key(h.mirror, h.instance, h.repository, h.digest) for h in holdings}

    def is_held(k: tuple[str, str | None, str, str]) -> bool:
        return k in held or (k[0], None, k[2], k[3]) in held

    warm = {n for t in targets for n in chain(t)}
    by_image = {w.image: w for w in wanted}
    assert [i.order for i in result.items] == list(range(len(result.items)))
    seen: dict[tuple[str, str | None, str, str], int] = {}
    aliases: set[tuple[tuple[str, str | None, str, str], str]] = set()
    for item in result.items:
        w = by_image[item.image]
        node = nodes[item.mirror]
        k = key(item.mirror, item.instance, item.upstream_repository, item.digest)
        if k in seen:
            # Only another tag of a top manifest fetched there already ("Aliases"): its own
            # item at a child tier, after the first, with no parent bytes.
            assert item.kind == "manifest" and item.digest == w.digest and w.tag, k
            assert item.reference == w.tag and (k, w.tag) not in aliases, f"{k} planned twice"
            assert node.parent is not None and item.parent_cost == 0
            assert item.depends_on == (seen[k],)
            aliases.add((k, w.tag))
            continue
        assert not is_held(k), f"{k} is held already"
        seen[k] = item.order
        assert item.mirror in warm and item.image in result.images
        assert item.instance in (node.instances or (None,))
        assert item.tier == len(chain(item.mirror)) - 1
        assert item.upstream_repository == w.repository
        assert item.repository.endswith(w.repository)
        assert item.parent_cost == item.size * node.fetch_multiplicity
        top = item.kind == "manifest" and item.digest == w.digest
        assert item.reference == (w.tag if top and w.tag else item.digest)
        assert all(dep < item.order for dep in item.depends_on)
        if node.parent is None:
            assert item.depends_on == ()
            continue
        expected = []
        for inst in nodes[node.parent].instances or (None,):
            pk = key(node.parent, inst, item.upstream_repository, item.digest)
            assert pk in seen or is_held(pk), f"child asks {pk} its parent will not hold"
            if pk in seen:
                expected.append(seen[pk])
        assert item.depends_on == tuple(expected)
    skipped = [s.image for s in result.skipped]
    assert len(skipped) == len(set(skipped)) and len(result.images) == len(set(result.images))
    assert set(skipped) | set(result.images) == set(by_image)
    assert not set(skipped) & set(result.images)
    spent = sum(i.parent_cost for i in result.items)
    assert spent == sum(result.parent_bytes_by_mirror.values())
    if budget.bytes is not None:
        assert spent <= budget.bytes
    for name, sent in result.parent_bytes_by_mirror.items():
        rate = nodes[name].link_rate
        if budget.window is not None and rate is not None:
            assert sent / rate <= budget.window.total_seconds()


@pytest.mark.parametrize("seed", range(300))
def test_random_plans_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    wanted, mirrors, targets, holdings, budget = random_case(rng)
    result = plan(wanted, mirrors, targets, holdings, budget, NOW)
    check_invariants(result, wanted, mirrors, targets, holdings, budget)

    shuffled = plan(
        rng.sample(wanted, len(wanted)), mirrors, targets[::-1], holdings[::-1], budget, NOW
    )
    assert shuffled == result

    # Carry out an unlimited plan, record it as held, plan again: nothing left to do.
    full = plan(wanted, mirrors, targets, holdings, NO_LIMIT, NOW)
    check_invariants(full, wanted, mirrors, targets, holdings, NO_LIMIT)
    after = [*holdings, *holdings_after(full)]
    again = plan(wanted, mirrors, targets, after, budget, NOW)
    assert again.items == () and again.images == ()
    for s in again.skipped:
        assert s.reason == "already warm" or s.reason.startswith("no target mirror proxies")


# Retries: the greedy again with each of the most valuable left-out images taken first.


def big_and_smalls(big_score: float, big_layer: int = 790) -> list[WantedImage]:
    """big costs 10 + ``big_layer``; s1..s3 cost 200 each and are worth 3 pulls of their
    200 B (600 each, 3 per byte)."""
    smalls = [image(f"s{k}", {f"s{k}": 190}, score=3) for k in (1, 2, 3)]
    return [image("big", {"big": big_layer}, score=big_score), *smalls]


OVER = "over budget: needs 200 B, 0 B left"
WINDOW = "window too short: 200 B more on m's parent link at 10 B/s needs 20s, 0s of 1m40s left"


@pytest.mark.parametrize(
    ("big_score", "big_layer", "budget", "planned", "skipped"),
    [
        # Greedy takes s1..s3 (3 per byte: 600 B, worth 1800) and has 400 B left for big
        # (800 B, 2.5 per byte). Big first leaves room for s1: worth 2000 + 600. Inside the
        # set, s1 (3 per byte) still goes first.
        (2.5, 790, Budget(1000, None), ["s1", "big"], {"s2": OVER, "s3": OVER}),
        (2, 790, Budget(1000, None), ["s1", "big"], {"s2": OVER, "s3": OVER}),
        # The same cut by the window: 100 s at 10 B/s is 1000 B on m's link.
        (2.5, 790, Budget(None, timedelta(seconds=100)), ["s1", "big"], {"s2": WINDOW}),
        # big + s1 = 1200 + 600 ties the greedy's 1800: the greedy is kept; 1000 + 600 < 1800.
        (1.5, 790, Budget(1000, None), ["s1", "s2", "s3"], {"big": "over budget: needs 800 B"}),
        (1.25, 790, Budget(1000, None), ["s1", "s2", "s3"], {"big": "over budget: needs 800 B"}),
        # big alone is over the budget: nothing to retry.
        (50, 1000, Budget(1000, None), ["s1", "s2", "s3"], {"big": "over budget: needs 1010 B"}),
    ],
)
def test_retry_takes_a_big_image_worth_more_than_the_small_ones(
    big_score: float,
    big_layer: int,
    budget: Budget,
    planned: list[str],
    skipped: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wanted = big_and_smalls(big_score, big_layer)
    mirrors = [mirror("m", rate=10)]
    result = plan(wanted, mirrors, ["m"], [], budget, NOW)
    assert [short(i) for i in result.images] == planned
    got = {short(image): reason for image, reason in reasons(result).items()}
    assert set(got) | set(planned) == {"big", "s1", "s2", "s3"}
    for name, reason in skipped.items():
        assert got[name].startswith(reason), got[name]
    spent = sum(i.parent_cost for i in result.items)
    assert spent == sum(result.parent_bytes_by_mirror.values()) <= 1000
    assert [i.order for i in result.items] == list(range(len(result.items)))
    # Without retries, the plain greedy keeps the small ones.
    monkeypatch.setattr("warmer.warm.plan.RETRIES", 0)
    greedy = plan(wanted, mirrors, ["m"], [], budget, NOW)
    assert [short(i) for i in greedy.images] == ["s1", "s2", "s3"]


def test_retry_only_tries_the_most_valuable_left_out_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wanted = big_and_smalls(2.5)
    budget = Budget(1000, None)
    monkeypatch.setattr("warmer.warm.plan.RETRIES", 1)
    assert [short(i) for i in plan(wanted, [mirror("m")], ["m"], [], budget, NOW).images] == [
        "s1",
        "big",
    ]
    # A left-out image worth more than big that fills the budget on its own (2200 beats
    # the greedy's 1800, not big + s1 = 2600) is tried first; with one try, big is never tried.
    decoy = image("decoy", {"decoy": 990}, score=2.2)
    result = plan([*wanted, decoy], [mirror("m")], ["m"], [], budget, NOW)
    assert [short(i) for i in result.images] == ["decoy"]
    monkeypatch.setattr("warmer.warm.plan.RETRIES", 2)
    result = plan([*wanted, decoy], [mirror("m")], ["m"], [], budget, NOW)
    assert [short(i) for i in result.images] == ["s1", "big"]


@pytest.mark.parametrize("seed", range(100))
def test_no_binding_budget_plans_exactly_as_the_plain_greedy(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted, mirrors, targets, holdings, _ = random_case(random.Random(seed))
    full = plan(wanted, mirrors, targets, holdings, NO_LIMIT, NOW)
    spent = sum(full.parent_bytes_by_mirror.values())
    roomy = Budget(spent, timedelta(days=1))  # exactly the bytes of everything: fits
    results = [plan(wanted, mirrors, targets, holdings, b, NOW) for b in (NO_LIMIT, roomy)]
    assert results[1].items == full.items and results[1].skipped == full.skipped
    monkeypatch.setattr("warmer.warm.plan.RETRIES", 0)
    assert [plan(wanted, mirrors, targets, holdings, b, NOW) for b in (NO_LIMIT, roomy)] == results


def worth(
    result: Plan, wanted: list[WantedImage], mirrors: list[MirrorNode], targets: list[str]
) -> float:
    """The plan's value (the planner's "Value"): for every wanted image, planned or not, its
    pulls times the bytes of the objects the plan makes warm in the target caches that
    serve it (its pulls split evenly over them); an object no other wanted image has
    counts at ``stay``."""
    topo = Topology(mirrors, targets)
    contents = {w.image: {b.digest: b.size for b in (*w.manifests, *w.blobs)} for w in wanted}
    holders = Counter(d for c in contents.values() for d in c)
    warm = {
        (i.mirror, i.instance, topo.scope_repo(i.mirror, i.upstream_repository), i.digest)
        for i in result.items
    }
    total = 0.0
    for w in wanted:
        slots = [s for n in topo.mirrors_for(w.upstream) if n in targets for s in topo.slots(n)]
        for digest, size in contents[w.image].items():
            share = 1.0 if holders[digest] > 1 else w.stay
            for s in slots:
                key = (s.node.name, s.instance, topo.scope_repo(s.node.name, w.repository), digest)
                total += w.score * size * share / len(slots) if key in warm else 0.0
    return total


def binding_case(
    seed: int,
) -> tuple[list[WantedImage], list[MirrorNode], list[str], list[Held], Budget]:
    """A random case whose budget or window leaves out part of what it wants."""
    rng = random.Random(seed)
    wanted, mirrors, targets, holdings, _ = random_case(rng)
    # More images, some large, so that the edge of the budget matters.
    for k in range(len(wanted), len(wanted) + rng.randint(2, 8)):
        layers = {d: SIZES[d] for d in rng.sample(sorted(SIZES), rng.randint(1, 3))}
        if rng.random() < 0.4:
            layers[f"big{k}"] = rng.randint(500, 3000)
        wanted.append(
            image(
                f"img{k}",
                layers,
                score=rng.choice([1.0, 2.0, 3.0, 5.0, 8.0, 20.0]),
                repository=rng.choice(["library/a", "library/b", "org/c"]),
                tag=f"t{k}",
            )
        )
    full = plan(wanted, mirrors, targets, holdings, NO_LIMIT, NOW)
    spent = sum(full.parent_bytes_by_mirror.values())
    sent = full.parent_bytes_by_mirror
    times = [sent[m.name] / m.link_rate for m in mirrors if m.link_rate and sent.get(m.name)]
    share = rng.uniform(0.15, 0.8)
    if times and rng.random() < 0.4:
        longest = max(times)
        return wanted, mirrors, targets, holdings, Budget(None, timedelta(seconds=longest * share))
    return wanted, mirrors, targets, holdings, Budget(int(spent * share), None)


@pytest.mark.parametrize("seed", range(200))
def test_random_binding_budgets_keep_the_invariants_with_retries(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted, mirrors, targets, holdings, budget = binding_case(seed)
    result = plan(wanted, mirrors, targets, holdings, budget, NOW)
    check_invariants(result, wanted, mirrors, targets, holdings, budget)
    shuffled = plan(
        random.Random(seed).sample(wanted, len(wanted)),
        mirrors,
        targets[::-1],
        holdings,
        budget,
        NOW,
    )
    assert shuffled == result
    # The chosen set fits: the plain greedy on the chosen images alone takes them all, with
    # the same objects (its order may differ: alone, a shared layer is worth only the chosen
    # images' pulls).
    chosen = [w for w in wanted if w.image in result.images]
    alone = plan(chosen, mirrors, targets, holdings, budget, NOW)
    assert set(alone.images) == set(result.images)
    topo = Topology(mirrors, targets)

    def keys(p: Plan) -> set[tuple[str, str | None, str, str]]:
        return {
            (i.mirror, i.instance, topo.scope_repo(i.mirror, i.upstream_repository), i.digest)
            for i in p.items
        }

    assert keys(alone) == keys(result)
    monkeypatch.setattr("warmer.warm.plan.RETRIES", 0)
    greedy = plan(wanted, mirrors, targets, holdings, budget, NOW)
    check_invariants(greedy, wanted, mirrors, targets, holdings, budget)
    value, plain = worth(result, wanted, mirrors, targets), worth(greedy, wanted, mirrors, targets)
    assert value >= plain * (1 - 1e-9)
    if math.isclose(value, plain, rel_tol=1e-9):
        assert result == greedy  # ties keep the plain greedy
    # Carry the plan out, plan again with the same budget: what was planned is not planned.
    again = plan(wanted, mirrors, targets, [*holdings, *holdings_after(result)], budget, NOW)
    assert not set(again.images) & set(result.images)
    check_invariants(again, wanted, mirrors, targets, [*holdings, *holdings_after(result)], budget)


def test_random_binding_budgets_do_exercise_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seeds above include cut plans where a retry wins (else they would prove little)."""
    cut = won = 0
    for seed in range(200):
        wanted, mirrors, targets, holdings, budget = binding_case(seed)
        result = plan(wanted, mirrors, targets, holdings, budget, NOW)
        with monkeypatch.context() as m:
            m.setattr("warmer.warm.plan.RETRIES", 0)
            greedy = plan(wanted, mirrors, targets, holdings, budget, NOW)
        cut += any(s.reason.startswith(("over budget", "window too short")) for s in greedy.skipped)
        value, plain = (
            worth(result, wanted, mirrors, targets),
            worth(greedy, wanted, mirrors, targets),
        )
        won += value > plain * (1 + 1e-9)
    assert cut >= 190 and won >= 10, (cut, won)


# Continuation: a run starts on its first images while the rest still resolve.


def test_a_continuation_depends_on_the_earlier_part_and_skips_what_it_planned() -> None:
    first = plan([image("a", {"base": 100, "a1": 5})], CHAIN, ["regional"], [], NO_LIMIT, NOW)
    rest = [
        image("a", {"base": 100, "a1": 5}),
        image("b", {"base": 100, "b1": 7}, repository="library/a", tag="b"),
    ]
    then = plan(rest, CHAIN, ["regional"], [], NO_LIMIT, NOW, after=first)
    assert then.images == (rest[1].image,)  # image a is planned already
    assert [i.order for i in then.items] == list(
        range(len(first.items), len(first.items) + len(then.items))
    )
    # b shares a's repository and base layer: only its manifest and own layer are new, and
    # the regional copies wait for central's items, whichever part planned them.
    assert {i.digest.removeprefix("sha256:") for i in then.items} == {"m-b", "b1"}
    for item in at(then, "regional"):
        (dep,) = item.depends_on
        assert dep < item.order
    assert then.parent_bytes_by_mirror == {"central": 2 * 17, "regional": 2 * 17}
    whole = merge(first, then)
    assert whole.images == (*first.images, *then.images)
    assert whole.parent_bytes_by_mirror["central"] == 2 * (100 + 5 + 10 + 17)


def test_an_alias_of_an_image_of_the_earlier_part_is_planned_as_in_one_plan() -> None:
    # python:3 resolves to the same manifest as python:3.12: in one plan it is picked at no
    # cost, its only item the regional mirror's request for its tag (a pull-through mirror
    # keeps a tag only when asked for it); in a continuation the same, not "already warm".
    first = plan([image("python", {"l1": 50}, tag="3.12")], CHAIN, ["regional"], [], NO_LIMIT, NOW)
    alias = image("python", {"l1": 50}, tag="3")
    then = plan([alias], CHAIN, ["regional"], [], NO_LIMIT, NOW, after=first)
    single = plan(
        [image("python", {"l1": 50}, tag="3.12"), alias], CHAIN, ["regional"], [], NO_LIMIT, NOW
    )
    assert then.skipped == ()
    (tag,) = then.items
    assert (tag.mirror, tag.reference, tag.parent_cost) == ("regional", "3", 0)
    assert tag.depends_on == tuple(
        i.order for i in first.items if i.mirror == "regional" and i.reference == "3.12"
    )
    tags = sorted((i.mirror, i.reference) for i in single.items if i.reference in ("3", "3.12"))
    assert len(tags) == 3 and tags[1:] == [("regional", "3"), ("regional", "3.12")]
    assert (
        set(merge(first, then).images)
        == set(single.images)
        == {
            "docker.io/library/python:3.12",
            "docker.io/library/python:3",
        }
    )


def test_a_continuation_counts_the_earlier_bytes_against_the_budget() -> None:
    first = plan([image("a", {"a1": 100})], CHAIN, ["regional"], [], Budget(500, None), NOW)
    then = plan(
        [image("b", {"b1": 100}), image("c", {"c1": 20})],
        CHAIN,
        ["regional"],
        [],
        Budget(500, None),
        NOW,
        after=first,
    )
    # a took 2 x 2 x 110 = 440 of 500: b (440 more) is over budget, c (120) is not... nor
    # fits: only 60 are left.
    assert then.images == ()
    assert reasons(then)["docker.io/library/b:latest"].startswith("over budget")
    assert "60 B left" in reasons(then)["docker.io/library/c:latest"]


@pytest.mark.parametrize("seed", range(100))
def test_random_continuations_keep_the_invariants_of_one_plan(seed: int) -> None:
    rng = random.Random(1000 + seed)
    wanted, mirrors, targets, holdings, budget = random_case(rng)
    cut = rng.randint(0, len(wanted))
    first = plan(wanted[:cut], mirrors, targets, holdings, budget, NOW)
    # The rest, plus some of the first part again (a repeated request) and aliases of it
    # (another tag of the same manifest, resolved later).
    aliases = [
        dataclasses.replace(w, image=f"{w.image}-alias", tag=f"{w.tag}-alias")
        for w in rng.sample(wanted[:cut], rng.randint(0, cut))
    ]
    rest = wanted[cut:] + rng.sample(wanted[:cut], rng.randint(0, cut)) + aliases
    wanted = wanted + aliases
    whole = merge(first, plan(rest, mirrors, targets, holdings, budget, NOW, after=first))
    check_invariants(whole, wanted, mirrors, targets, holdings, budget)
    if budget == NO_LIMIT:
        # Nothing is cut: the same objects as one plan of everything, and nothing left over.
        single = plan(wanted, mirrors, targets, holdings, NO_LIMIT, NOW)
        assert set(whole.images) == set(single.images)
        assert sorted(i.digest + i.mirror + str(i.instance) for i in whole.items) == sorted(
            i.digest + i.mirror + str(i.instance) for i in single.items
        )
        again = plan(wanted, mirrors, targets, [*holdings, *holdings_after(whole)], budget, NOW)
        assert again.items == ()


@pytest.mark.parametrize(
    ("stay", "planned"),
    [
        (1.0, "a"),  # a's top layer serves 10 pulls, b's 8 (the base serves all 18 either way)
        # a's tag moves: its own 100 B serve only the ``stay`` share of its pulls, the shared
        # base all of them. stay 0.9: 10 x 0.9 x 100 = 900 B of pulls against b's 800;
        # a value of score x stay over all its bytes (0.9 x 10 x 200 = 1800 against 1600)
        # would say the same, but not at 0.7: 700 against 800.
        (0.9, "a"),
        (0.7, "b"),
    ],
)
def test_stay_discounts_only_the_images_own_bytes(stay: float, planned: str) -> None:
    a = dataclasses.replace(
        image("a", {"base": 100, "a": 100}, score=10, manifest_size=0), stay=stay
    )
    b = image("b", {"base": 100, "b": 100}, score=8, manifest_size=0)
    # Room for the base and one top layer.
    result = plan([a, b], [mirror("m", scope="global")], ["m"], [], Budget(200, None), NOW)
    assert [short(i) for i in result.images] == [planned]
    # Alone, a moving tag is still planned when it fits: stay lowers its value, not its place.
    alone = plan([a], [mirror("m", scope="global")], ["m"], [], Budget(200, None), NOW)
    assert [short(i) for i in alone.images] == ["a"]


def test_stay_outside_zero_to_one_is_a_clear_error() -> None:
    bad = dataclasses.replace(image("a", {"a": 1}), stay=1.5)
    with pytest.raises(PlanError, match="stay must be between 0 and 1"):
        plan([bad], [mirror("m")], ["m"], [], NO_LIMIT, NOW)
