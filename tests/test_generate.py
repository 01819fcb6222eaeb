"""The workload generator: deterministic, shaped like registry workloads, and its files read
back through the project's own ingest and static-reference scanners."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analytics.events import Event
from analytics.generate.catalogue import Catalogue
from analytics.generate.variants import variant
from analytics.generate.workload import Params, Workload, generate
from analytics.generate.write import load_labels, write_logs, write_meta, write_repos
from analytics.ingest import Options, scan_file, walk
from analytics.regions import RegionRules, parse_rule
from analytics.staticrefs import StaticRef, scan_paths

SMALL = Params(weeks=2, seed=5, pipelines_per_region=10)


@pytest.fixture(scope="module")
def small() -> Workload:
    return generate(SMALL)


def test_same_seed_same_workload(small: Workload) -> None:
    again = generate(SMALL)
    pd.testing.assert_frame_equal(small.pulls, again.pulls)
    pd.testing.assert_frame_equal(small.static, again.static)
    other = generate(Params(weeks=2, seed=6, pipelines_per_region=10))
    assert not small.pulls[["image", "tag"]].equals(other.pulls[["image", "tag"]])


def test_shape_follows_registry_workload_facts() -> None:
    work = generate(Params(weeks=4, seed=1))
    p = work.pulls
    per_image = p.groupby(["image", "tag"]).size().sort_values(ascending=False)
    top = per_image.head(max(1, len(per_image) // 5)).sum()
    assert top / per_image.sum() > 0.5  # heavy tail: a fifth of the images, most pulls
    weekday = p[p["timestamp"].dt.dayofweek < 5].shape[0] / 5
    weekend = p[p["timestamp"].dt.dayofweek >= 5].shape[0] / 2
    assert weekday > 4 * weekend  # weekly cycle
    eu = p[p["region"] == "eu"]["timestamp"].dt.hour.value_counts()
    assert eu.loc[8:16].sum() > 3 * eu.drop(range(8, 17), errors="ignore").sum()  # office hours
    kinds = Counter(k for ks in work.labels.values() for k in ks)
    assert kinds["adoption"] > 0 and kinds["migration"] > 0 and kinds["release"] > 0
    assert p.groupby(["image", "tag"])["digest"].nunique().max() > 1  # tags move


def test_logs_parse_back_to_the_ground_truth(small: Workload, tmp_path: Path) -> None:
    written = write_logs(small, tmp_path, noise=3)
    assert set(written.per_source) == {
        "github",
        "gitlab",
        "jenkins",
        "docker",
        "podman",
        "buildkit",
        "kubelet",
        "distribution",
    }
    assert any(f.suffix == ".gz" for f in (tmp_path / "logs").rglob("*"))
    rules = RegionRules(
        rules=[parse_rule("path:*/logs/eu/*=eu"), parse_rule("path:*/logs/us/*=us")]
    )
    events: list[Event] = []
    for path in walk([tmp_path / "logs"]):
        result = scan_file(path, Options(rules=rules), events.append)
        assert result.warning is None
    got = Counter(
        (
            e.region,
            e.source,
            e.reference.name + ":" + str(e.reference.tag),
            e.timestamp.strftime("%Y-%m-%d %H"),
            e.pulled,
        )
        for e in events
    )
    want = Counter(
        (r.region, r.source, f"{r.image}:{r.tag}", r.timestamp.strftime("%Y-%m-%d %H"), r.pulled)
        for r in small.pulls.itertuples()
    )
    assert got == want
    digests = {(f"{r.image}:{r.tag}", r.digest) for r in small.pulls.itertuples()}
    printed = {(f"{e.reference.name}:{e.reference.tag}", e.digest) for e in events if e.digest}
    assert printed and printed <= digests


def test_variant_formats_parse_back_to_the_ground_truth(tmp_path: Path) -> None:
    # The same runs, a third of GitHub, Jenkins and docker pipelines written as a CircleCI,
    # Cloud Build, CodeBuild or Buildkite log: each pull read back once, with its hour,
    # whether it was pulled and its digest.
    small = generate(Params(weeks=1, seed=5, pipelines_per_region=20))  # every variant
    written = write_logs(small, tmp_path, noise=3, variants=True)
    assert {"circleci", "cloudbuild", "codebuild", "buildkite"} <= set(written.pulls)
    assert sum(written.pulls.values()) == len(small.pulls)
    events: list[Event] = []
    formats: Counter[str | None] = Counter()
    for path in walk([tmp_path / "logs"]):
        result = scan_file(path, Options(), events.append)
        assert result.warning is None and result.unused.count == 0
        formats[result.format] += 1
    assert formats["circleci"] and formats["cloudbuild"] and formats["codebuild"]
    assert formats["buildkite"]

    def fmt(r: Any) -> str:
        return variant(str(r.source), str(r.pipeline))

    got = Counter(
        (
            e.source,
            e.reference.name + ":" + str(e.reference.tag),
            e.timestamp.strftime("%Y-%m-%d %H"),
            e.pulled,
        )
        for e in events
    )
    want = Counter(
        (fmt(r), f"{r.image}:{r.tag}", r.timestamp.strftime("%Y-%m-%d %H"), r.pulled)
        for r in small.pulls.itertuples()
    )
    assert got == want
    digests = Counter(
        (fmt(r), f"{r.image}:{r.tag}", r.digest)
        for r in small.pulls.itertuples()
        if fmt(r) in ("circleci", "codebuild")
        or (fmt(r) in ("cloudbuild", "buildkite") and r.pulled)
    )
    printed = Counter(
        (e.source, f"{e.reference.name}:{e.reference.tag}", e.digest)
        for e in events
        if e.source in ("circleci", "cloudbuild", "codebuild", "buildkite")
    )
    assert printed == digests + Counter(  # Cloud Build and Buildkite print no digest of
        (fmt(r), f"{r.image}:{r.tag}", None)  # what they have
        for r in small.pulls.itertuples()
        if fmt(r) in ("cloudbuild", "buildkite") and not r.pulled
    )


def test_cli_generate_writes_the_variants(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from warmer.cli.main import cli

    args = ["generate", "--out", str(tmp_path), "--weeks", "1", "--pipelines", "12", "--noise", "0"]
    done = CliRunner().invoke(cli, [*args, "--variants", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert {"circleci", "cloudbuild", "codebuild"} <= set(result["pulls_per_format"])
    assert sum(result["pulls_per_format"].values()) == result["pulls"]
    assert any((tmp_path / "logs" / "eu" / "circleci").rglob("*.log"))


def test_repositories_name_the_live_images(small: Workload, tmp_path: Path) -> None:
    write_repos(small, tmp_path)
    found: list[StaticRef] = []
    warnings = list(scan_paths([tmp_path / "repos"], found.append))
    assert warnings == []
    live = small.static[small.static["removed"].isna()]
    want = {(f"repos/{f}", r) for f, r in zip(live["file"], live["reference"], strict=True)}
    got = {
        (str(Path(s.file).relative_to(tmp_path)), str(s.reference))
        for s in found
        if s.context != "syntax"  # the `# syntax=` frontend image
    }
    assert got == want


def test_catalogue_and_labels_round_trip(small: Workload, tmp_path: Path) -> None:
    write_meta(small, tmp_path)
    cat = Catalogue.load(tmp_path / "catalogue.json")
    ref = "docker.io/library/node:20"
    at = small.pulls["timestamp"].iloc[-1].to_pydatetime()
    assert cat.version_at(ref, at) == small.catalogue.version_at(ref, at)
    assert load_labels(tmp_path / "labels.json") == small.labels
