"""Request economy of a warm run, counted at real fronts between every pair of parts.

The topology: the session sandbox's upstream front (with Docker Hub's token flow, or as a
plain anonymous registry) <- central <- a counting front <- eu, and a counting front between
the warmer and each mirror. Each front is the sandbox's real relay (``warmer.sandbox.front``,
a process of its own), so what it counts is what crossed that link; the run's own counters
(``warmer run --json``: ``requests_by_tier``) must agree with them.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from warmer.cli.main import cli
from warmer.sandbox.front import FrontControl
from warmer.sandbox.procs import Proc, free_port, spawn, wait_ready
from warmer.sandbox.topology import Sandbox
from warmer.store.ledger import Ledger

RegistryFactory = Callable[..., Proc]
ROOT = Path(__file__).resolve().parents[1]
# One tag per repository, no aliases: each image is an OCI index and one platform manifest.
# python and node share their Debian base layers (copies confirmed at the end of the run).
# Artifacts (signature lookups) are off: these counts are the warm's own.
IMAGES = ["python:3.12", "node:22", "redis:7.4"]


def counting_front(tmp: Path, name: str, upstream: str) -> Proc:
    """A counting relay in front of ``upstream`` (no token flow, no rate limit)."""
    port = free_port()
    argv = [sys.executable, "-m", "warmer.sandbox.front", "--listen", str(port)]
    argv += ["--upstream", upstream, "--ratelimit", "-1", "--auth", "none"]
    proc = spawn(name, argv, tmp / f"{name}.log", env={"PYTHONPATH": str(ROOT)})
    proc.url = f"http://127.0.0.1:{port}"
    wait_ready(proc.url, proc)
    return proc


@dataclass
class Chain:
    box: Sandbox
    tmp: Path
    central: Proc
    eu: Proc
    fronts: dict[str, Proc]  # "to_central", "to_eu" (the warmer's), "eu_parent" (eu's)

    def stats(self, name: str) -> dict[str, Any]:
        return FrontControl(self.fronts[name].url).stats()

    def warmer(self, *args: str) -> Any:
        config = str(self.tmp / "warmer.toml")
        return CliRunner().invoke(cli, ["--config", config, *args])


@pytest.fixture(params=["token", "none"])
def chain(
    request: pytest.FixtureRequest,
    sandbox: Sandbox,
    registry_factory: RegistryFactory,
    tmp_path: Path,
) -> Iterator[Chain]:
    """The upstream front asks for the token flow (``token``) or is anonymous (``none``)."""
    sandbox.front.configure(auth=request.param)
    procs: list[Proc] = []
    try:
        central = registry_factory("central", parent_url=sandbox.front_url)
        procs.append(central)
        fronts = {"eu_parent": counting_front(tmp_path, "eu-parent", central.url)}
        eu = registry_factory("eu", parent_url=fronts["eu_parent"].url)
        procs.append(eu)
        fronts["to_central"] = counting_front(tmp_path, "to-central", central.url)
        fronts["to_eu"] = counting_front(tmp_path, "to-eu", eu.url)
        procs += fronts.values()
        (tmp_path / "warmer.toml").write_text(
            f'[database]\nurl = "sqlite:///{tmp_path / "warmer.db"}"\n'
            f'[upstreams.dockerhub]\nurl = "{sandbox.front_url}"\naliases = ["docker.io"]\n'
            "ratelimit_reserve = 0\n"
            '[run]\nretries = 1\ntimeout = "20s"\n'
            f'[mirrors.central]\nurl = "{fronts["to_central"].url}"\nparent = "dockerhub"\n'
            f'[mirrors.eu]\nurl = "{fronts["to_eu"].url}"\nparent = "central"\n'
            '[regions.eu]\nmirrors = ["eu"]\n[regions.eu.artifacts]\nkinds = ["none"]\n'
        )
        sandbox.front.clear_faults()
        sandbox.front.reset()
        yield Chain(sandbox, tmp_path, central, eu, fronts)
    finally:
        sandbox.front.clear_faults()
        sandbox.front.configure(auth="token")
        for proc in reversed(procs):
            proc.stop()


def per_repository(stats: dict[str, Any], kind: str) -> dict[str, Counter[str]]:
    return {
        repo: Counter(r["requests"].get(kind, {}))
        for repo, r in stats["repositories"].items()
        if r["requests"].get(kind)
    }


@pytest.mark.timeout(240)
def test_one_manifest_request_per_manifest_per_mirror_and_no_head_before_a_get(
    chain: Chain,
) -> None:
    result = chain.warmer("run", "--region", "eu", *IMAGES, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    items = Ledger(f"sqlite:///{chain.tmp / 'warmer.db'}").items(summary["run"])
    manifests = Counter(
        i.upstream_repository for i in items if i.kind == "manifest" and i.tier == 1
    )
    assert manifests and set(manifests.values()) == {2}, manifests  # index + linux/amd64

    # What the warmer sent each mirror, counted on the wire: per repository exactly one GET
    # per manifest (central's while resolving, none again when warming). At eu the tag is
    # then asked for with a HEAD, after the GET by digest: eu keeps the tag and asks central
    # for it once (a GET by tag would ask twice, and central the upstream twice).
    sent = per_repository(chain.stats("to_central"), "manifest")
    assert sent == {r: Counter({"GET": n}) for r, n in manifests.items()}, sent
    sent = per_repository(chain.stats("to_eu"), "manifest")
    assert sent == {r: Counter({"GET": n, "HEAD": 1}) for r, n in manifests.items()}, sent
    assert summary["manifests_from_resolve"] == sum(manifests.values())

    # Blobs: one GET per (repository, blob) copy; a HEAD only to confirm, after its GET, a
    # copy of a blob that several repositories share (what the mirror's race could lose).
    for name, tier in (("to_central", 0), ("to_eu", 1)):
        copies = [
            (i.upstream_repository, i.digest) for i in items if i.kind == "blob" and i.tier == tier
        ]
        repos_of = Counter(d for _, d in copies)
        sent = chain.stats(name)["blobs"]
        assert {d: c.get("GET", 0) for d, c in sent.items()} == dict(repos_of), name
        shared = {d: n for d, n in repos_of.items() if n > 1}
        assert shared, "the images share no blob: the confirmation is not exercised"
        assert {d: c["HEAD"] for d, c in sent.items() if c.get("HEAD")} == shared, name
    assert summary["restored"] == 0

    # The run's own counters agree with the wire, tier by tier.
    by_tier = summary["requests_by_tier"]
    for name, level in (("to_central", "0"), ("to_eu", "1")):
        wire = chain.stats(name)["requests"]
        for kind in ("manifest", "blob"):
            assert by_tier[level][kind] == wire[kind], (level, kind)
    # The upstream directly: one HEAD that reads its rate limit (with the token flow, a
    # first HEAD answered 401 and the token request before it), nothing else.
    token = chain.box.front.stats()["status"].get("401", 0) > 0
    want = {"manifest": {"HEAD": 2}, "token": {"GET": 1}} if token else {"manifest": {"HEAD": 1}}
    assert by_tier["upstream"] == want

    # At the upstream: one GET per manifest; per tag, the HEAD central sends for resolving's
    # GET by tag and the one for eu's tag HEAD, plus the rate-limit HEAD; none for a digest.
    # (Before: a pinning HEAD, the executor's second GET by tag at central, eu's GET by tag
    # asking twice: five per tag, and a second rate-limit HEAD.) With the token flow the
    # front also counts what it answered 401.
    front = chain.box.front.stats()
    upstream = per_repository(front, "manifest")
    tags, refused = len(IMAGES), front["status"].get("401", 0)
    assert sum(c["GET"] for c in upstream.values()) - refused <= sum(manifests.values())
    heads = sum(c["HEAD"] for c in upstream.values())
    assert heads == 2 * tags + 1 if not token else 2 * tags + 1 <= heads <= 2 * tags + 1 + refused
    # eu's own requests to central (its proxy's doing): one GET per manifest it lacks.
    eu_sent = per_repository(chain.stats("eu_parent"), "manifest")
    assert {r: c["GET"] for r, c in eu_sent.items()} == dict(manifests)
    print(
        "upstream front:", chain.box.front.stats()["requests"],
        "| warmer -> central:", chain.stats("to_central")["requests"],
        "| eu -> central:", chain.stats("eu_parent")["requests"],
    )  # fmt: skip

    # Resolving asked central by tag, so central kept the tags: with the upstream down it
    # still answers them (the executor did not ask again to make it keep them).
    chain.box.front.add_fault("status", "", count=100_000, status=503)
    for image in IMAGES:
        repo, tag = image.split(":")
        url = f"{chain.central.url}/v2/library/{repo}/manifests/{tag}"
        accept = "application/vnd.oci.image.index.v1+json"
        assert httpx.get(url, headers={"Accept": accept}, timeout=20).status_code == 200, image
    chain.box.front.clear_faults()
    # And eu kept them from its HEADs: with central unreachable it still answers them.
    eu_parent = FrontControl(chain.fronts["eu_parent"].url)
    eu_parent.add_fault("status", "", count=100_000, status=503)
    for image in IMAGES:
        repo, tag = image.split(":")
        url = f"{chain.eu.url}/v2/library/{repo}/manifests/{tag}"
        accept = "application/vnd.oci.image.index.v1+json"
        assert httpx.get(url, headers={"Accept": accept}, timeout=20).status_code == 200, image
    assert eu_parent.stats()["faults_applied"].get("status", 0) > 0  # eu did ask central
    eu_parent.clear_faults()


ALIASES = ["alpine:3.20", "alpine:latest", "python:3.12", "python:3", "python:latest"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("chain", ["none"], indirect=True)
def test_every_alias_tag_is_kept_at_the_regional_mirror(chain: Chain) -> None:
    """Tags that resolve to one manifest share its fetch, but a pull-through mirror keeps a
    tag only when asked for it: with central down, eu must still answer every tag warmed."""
    result = chain.warmer("run", "--region", "eu", *ALIASES, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    items = Ledger(f"sqlite:///{chain.tmp / 'warmer.db'}").items(summary["run"])
    # Each alias has its own manifest item at eu, fetched with no parent bytes.
    tagged = {(i.upstream_repository, i.reference) for i in items if i.tier == 1}
    for image in ALIASES:
        repo, tag = image.split(":")
        assert (f"library/{repo}", tag) in tagged, image
    # At eu, per repository: one GET per distinct manifest and one HEAD per tag (a tag
    # whose manifest eu already holds from this run is asked for with its HEAD alone).
    sent = per_repository(chain.stats("to_eu"), "manifest")
    assert sent["library/alpine"]["HEAD"] == 2 and sent["library/python"]["HEAD"] == 3, sent
    held = {
        (i.upstream_repository, i.digest) for i in items if i.tier == 1 and i.kind == "manifest"
    }
    distinct = Counter(r for r, _ in held)
    assert {r: c["GET"] for r, c in sent.items()} == dict(distinct), sent

    eu_parent = FrontControl(chain.fronts["eu_parent"].url)
    eu_parent.add_fault("status", "", count=100_000, status=503)
    try:
        for image in ALIASES:
            repo, tag = image.split(":")
            url = f"{chain.eu.url}/v2/library/{repo}/manifests/{tag}"
            accept = "application/vnd.oci.image.index.v1+json"
            answer = httpx.get(url, headers={"Accept": accept}, timeout=20)
            assert answer.status_code == 200, image
        assert eu_parent.stats()["faults_applied"].get("status", 0) > 0  # eu asked central
    finally:
        eu_parent.clear_faults()


@pytest.mark.timeout(240)
def test_request_counts_reach_the_metrics(chain: Chain) -> None:
    result = chain.warmer("run", "--region", "eu", "redis:7.4", "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    from jobs.metrics import Metrics

    text = Metrics(f"sqlite:///{chain.tmp / 'warmer.db'}", ["eu"]).scrape().decode()
    gets = summary["requests_by_tier"]["1"]["manifest"]["GET"]
    line = f'warmer_run_requests{{kind="manifest",method="GET",region="eu",tier="1"}} {gets:.1f}'
    assert line in text, text
    # And the human summary names them.
    plain = chain.warmer("run", "--region", "eu", "node:22")
    assert plain.exit_code == 0, plain.stderr
    assert "requests to tier 1:" in plain.stdout and "manifest GET" in plain.stdout
