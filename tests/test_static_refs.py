"""Static references in Dockerfiles, compose, Kubernetes, GitHub and GitLab files."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.staticrefs import StaticRef, classify, scan_paths
from analytics.staticrefs.gitlog import GitError, parse_log
from analytics.staticrefs.history import Revision, intervals, merge
from warmer.oci.reference import parse

REPO = Path(__file__).parent / "data" / "static" / "repo"


def scan(path: Path) -> tuple[list[tuple[int, str, str]], list[str]]:
    found: list[StaticRef] = []
    warnings = list(scan_paths([path], found.append))
    return [(r.line, r.context, str(r.reference)) for r in found], warnings


def test_dockerfile_args_stages_platform_copy_mount_heredoc() -> None:
    found: list[StaticRef] = []
    assert list(scan_paths([REPO / "Dockerfile"], found.append)) == []
    assert [(r.line, r.context, str(r.reference), r.platform) for r in found] == [
        (1, "syntax", "docker.io/docker/dockerfile:1.7", None),
        (5, "FROM", "docker.io/library/python:3.12-slim", None),  # ARG default in ARG default
        (7, "RUN --mount", "ghcr.io/acme/wheels:3.12", None),  # stage-scoped ARG
        (17, "FROM", "registry.example.com/base/runtime:1.4", "linux/arm64"),  # ${X:-default}
        (20, "COPY --from", "docker.io/library/nginx:1.25-alpine", None),
    ]  # not: `FROM build` (a stage), COPY --from=build / =0, the heredoc's "FROM alpine:3.0"


def test_dockerfile_escape_directive() -> None:
    refs, warnings = scan(REPO / "docker" / "Dockerfile.windows")
    assert warnings == []
    assert refs == [
        (2, "FROM", "mcr.microsoft.com/windows/servercore:ltsc2022"),
        (5, "COPY --from", "mcr.microsoft.com/dotnet/sdk:8.0"),
    ]


def test_compose_images_with_defaults_and_platform() -> None:
    found: list[StaticRef] = []
    assert list(scan_paths([REPO / "docker-compose.yml"], found.append)) == []
    assert [(r.line, str(r.reference), r.platform) for r in found] == [
        (4, "ghcr.io/acme/web:2.3.1", None),
        (7, "docker.io/library/postgres:16", "linux/amd64"),
        (10, "docker.io/library/redis:7.2-alpine", None),
    ]
    assert {r.kind for r in found} == {"compose"}


def test_kubernetes_multi_document_pod_templates() -> None:
    refs, warnings = scan(REPO / "k8s" / "deploy.yaml")
    assert warnings == []
    assert refs == [
        (10, "initContainers", "ghcr.io/acme/migrate:2.3.1"),
        (13, "containers", "ghcr.io/acme/web:2.3.1"),
        (15, "containers", "docker.io/envoyproxy/envoy:v1.30.1"),
        (
            36,
            "containers",
            "docker.io/library/busybox@sha256:9d75f0d7c398df565d7ac04c6819b62d6d8f9560f5eb4672596ecd8f7e96ae91",
        ),
        (45, "containers", "docker.io/library/alpine:3.19"),
    ]


def test_github_workflow_container_services_and_docker_uses() -> None:
    refs, warnings = scan(REPO / ".github" / "workflows" / "ci.yml")
    assert refs == [
        (6, "container", "docker.io/library/node:20-bookworm"),
        (9, "service", "docker.io/library/postgres:16"),
        (11, "service", "docker.io/library/redis:7"),
        (14, "uses", "docker.io/library/alpine:3.19"),
        (20, "container", "ghcr.io/acme/builder:2024.05"),
    ]
    assert len(warnings) == 1 and "ci.yml:24" in warnings[0]


def test_gitlab_ci_image_services_both_forms_and_variables() -> None:
    refs, warnings = scan(REPO / ".gitlab-ci.yml")
    assert warnings == []
    assert refs == [
        (8, "image", "docker.io/library/python:3.12"),
        (15, "service", "docker.io/library/postgres:16"),
        (16, "service", "docker.io/library/redis:7"),
        (23, "image", "docker.io/library/docker:26.1"),
        (25, "service", "docker.io/library/docker:26.1-dind"),
    ]


def test_bad_files_warn_once_each_and_the_rest_goes_on() -> None:
    refs, warnings = scan(REPO / "broken")
    assert refs == [(3, "FROM", "docker.io/library/debian:12")]
    assert len(warnings) == 3
    assert any("broken/Dockerfile:1" in w and "UNSET_BASE" in w for w in warnings)
    assert any("broken/Dockerfile:2" in w and "invalid reference" in w for w in warnings)
    assert any("docker-compose.yaml:4" in w and "invalid YAML" in w for w in warnings)


def test_classify_by_name() -> None:
    assert classify(Path("a/Dockerfile.prod")) == "dockerfile"
    assert classify(Path("a/Containerfile")) == "dockerfile"
    assert classify(Path("compose.override.yaml")) == "compose"
    assert classify(Path("x/.gitlab-ci.yml")) == "gitlab"
    assert classify(Path("r/.github/workflows/a.yaml")) == "github"
    assert classify(Path("deploy/app.yml")) == "kubernetes"
    assert classify(Path("README.md")) is None


# -- property-based: the static-ref parsers never raise on hostile text ---------------------

SAMPLE_FILES = {
    "dockerfile": ["Dockerfile", "docker/Dockerfile.windows", "broken/Dockerfile"],
    "compose": ["docker-compose.yml", "broken/docker-compose.yaml"],
    "kubernetes": ["k8s/deploy.yaml"],
    "github": [".github/workflows/ci.yml"],
    "gitlab": [".gitlab-ci.yml"],
}


def _hostile_text(kind: str) -> st.SearchStrategy[str]:
    """A real file of ``kind`` cut, spliced with arbitrary text (NUL, ANSI, "${", YAML
    anchors, CRLF, a BOM), or arbitrary text alone."""
    texts = [(REPO / name).read_text() for name in SAMPLE_FILES[kind]]
    junk = st.one_of(
        st.text(max_size=60),
        st.sampled_from(
            ["\x00", "\x1b[31m", "${", "${A:-", "$$", "&a", "*a", "<<", "\r\n", "\ufeff", "\\\n"]
        ),
    )
    spliced = st.builds(
        lambda t, i, j, x: t[: i % (len(t) + 1)] + x + t[j % (len(t) + 1) :],
        st.sampled_from(texts),
        st.integers(0, 2000),
        st.integers(0, 2000),
        junk,
    )
    lines = st.lists(st.one_of(junk, st.sampled_from(texts[0].splitlines())), max_size=20)
    return st.one_of(spliced, lines.map("\n".join), st.text(max_size=300))


@pytest.mark.parametrize("kind", sorted(SAMPLE_FILES))
def test_static_parsers_survive_hostile_text(kind: str) -> None:
    from analytics.staticrefs.dockerfiles import scan_dockerfile
    from analytics.staticrefs.yamlfiles import scan_yaml

    @settings(max_examples=150, deadline=None)
    @given(_hostile_text(kind))
    def check(text: str) -> None:
        found: list[StaticRef] = []
        warnings: list[str] = []
        if kind == "dockerfile":
            scan_dockerfile("f", text, found.append, warnings.append)
        else:
            scan_yaml("f", text, kind, found.append, warnings.append)
        assert all(w.startswith("f") and "\n" not in w.rstrip() for w in warnings)
        assert all(r.file == "f" and r.line >= 1 for r in found)

    check()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["Dockerfile", "compose.yaml", "deploy.yaml"]))
def test_scan_file_survives_arbitrary_bytes(data: bytes, name: str) -> None:
    from analytics.staticrefs import scan_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        warnings: list[str] = []
        assert scan_file(path, lambda r: None, warnings.append)
    assert all(w.startswith(str(path)) for w in warnings)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="${}:-+AB_ab$", max_size=60),
    st.dictionaries(st.sampled_from(["A", "B", "a"]), st.one_of(st.none(), st.text(max_size=5))),
)
def test_substitute_only_raises_unresolved(text: str, values: dict[str, str | None]) -> None:
    from analytics.staticrefs.variables import Unresolved, substitute

    try:
        assert isinstance(substitute(text, values), str)
    except Unresolved as exc:
        assert exc.name in text


@pytest.mark.timeout(10)  # a hang guard, not a measurement: the regression took 11 s
def test_unclosed_substitutions_and_continuation_only_lines_are_fast_and_clean() -> None:
    # Found by the tests above: "${A:-" repeated took 11 s (the regex rescanned to the end
    # from each "${"), and a Dockerfile line of only "\" continuations crashed the scan.
    from analytics.staticrefs.dockerfiles import scan_dockerfile
    from analytics.staticrefs.yamlfiles import scan_yaml

    warnings: list[str] = []
    scan_yaml(
        "c",
        "services:\n  a:\n    image: " + "${A:-" * 20000 + "\n",
        "compose",
        lambda r: None,
        warnings.append,
    )
    assert len(warnings) == 1 and warnings[0].startswith("c:3:")
    found: list[StaticRef] = []
    warnings.clear()
    scan_dockerfile("d", "FROM alpine:3\nRUN x\n" + "\\\n" * 3, found.append, warnings.append)
    assert [str(r.reference) for r in found] == ["docker.io/library/alpine:3"]


def _rev(day: int, *images: str) -> Revision:
    """A Dockerfile revision naming ``images``; ``"-"`` alone: the file is absent."""
    when = datetime(2024, 5, day, tzinfo=UTC)
    if images == ("-",):
        return Revision(f"c{day}", when, None)
    refs = [
        StaticRef("Dockerfile", i, parse(x), "dockerfile", "FROM") for i, x in enumerate(images)
    ]
    return Revision(f"c{day}", when, refs)


def test_history_spans_removals_re_additions_and_absent_files() -> None:
    spans = intervals(
        [
            _rev(1, "alpine:3.19"),
            _rev(2, "alpine:3.19", "redis:7"),
            _rev(3, "-"),
            _rev(4, "redis:7"),
        ]
    )
    got = [
        (s.reference.rsplit("/", 1)[1], s.first.day, s.last.day if s.last else None) for s in spans
    ]
    assert got == [("alpine:3.19", 1, 3), ("redis:7", 2, 3), ("redis:7", 4, None)]
    assert spans[0].removed_in == "c3" and spans[2].added_in == "c4"


def test_merge_dates_the_working_tree_by_history_and_keeps_removals() -> None:
    now = datetime(2024, 6, 1, tzinfo=UTC)
    spans = intervals([_rev(1, "alpine:3.19", "redis:7"), _rev(2, "alpine:3.20", "redis:7")])
    tree = [  # redis removed and node added in the working tree, not committed
        StaticRef("Dockerfile", 1, parse("alpine:3.20"), "dockerfile", "FROM"),
        StaticRef("Dockerfile", 2, parse("node:22"), "dockerfile", "FROM"),
    ]
    got = {
        (str(d.ref.reference).rsplit("/", 1)[1], d.present): (
            d.first_seen.day,
            d.last_seen,
            d.dated_by,
        )
        for d in merge(tree, spans, now)
    }
    assert got == {
        ("alpine:3.20", True): (2, now, "git"),
        ("node:22", True): (1, now, "scan"),  # first_seen = now: June 1st
        ("alpine:3.19", False): (1, datetime(2024, 5, 2, tzinfo=UTC), "git"),
        ("redis:7", False): (1, now, "git"),  # removed since HEAD: at the scan time
    }


def test_git_log_records_parse_with_odd_file_names() -> None:
    raw = b"\x01abc 1714557600\x00\nDockerfile\x00a b/\xc3\xa9\nx.yml\x00\x01def 1714471200\x00\x00"
    commits = parse_log(raw)
    assert [(c.sha, c.when.day, c.paths) for c in commits] == [
        ("abc", 1, ("Dockerfile", "a b/\xe9\nx.yml")),
        ("def", 30, ()),
    ]
    with pytest.raises(GitError):
        parse_log(b"\x01abc notanumber\x00")
