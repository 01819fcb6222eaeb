"""Each log format on a hand-written sample shaped like the real tool's output."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.events import Event
from analytics.ingest import Options, detect, ingest
from analytics.regions import RegionRules, parse_rule

LOGS = Path(__file__).parent / "data" / "logs"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PY = "sha256:d90b4e163831ab7fd23f007fff33badd3a1c350defbe2aace02b0a0c610ef67d"


def events(name: str, **kw: object) -> list[Event]:
    out: list[Event] = []
    ingest([LOGS / name], Options(default_time=AT, **kw), on_event=out.append)  # type: ignore[arg-type]
    return out


def brief(evs: list[Event]) -> list[tuple[str, bool | None]]:
    return [(str(e.reference), e.pulled) for e in evs]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("docker-pull.log", "docker"),
        ("podman-pull.log", "podman"),
        ("buildkit-plain.log", "buildkit"),
        ("github-job.log", "github"),
        ("gitlab-job.log", "gitlab"),
        ("jenkins-console.log", "jenkins"),
        ("circleci-job.log", "circleci"),
        ("jib-build.log", "jib"),
        ("cloudbuild.log", "cloudbuild"),
        ("codebuild.log", "codebuild"),
        ("buildkite-job.log", "buildkite"),
        ("kubelet-journal.log", "kubelet"),
        ("crio-journal.log", "kubelet"),
        ("kubectl-events.txt", "kubelet"),
        ("k8s-events.jsonl", "kubelet"),
        ("registry-text.log", "distribution"),
        ("registry-access.log", "distribution"),
        ("registry-json.log", "distribution"),
        ("notifications.jsonl", "distribution"),
    ],
)
def test_detected_per_file(name: str, fmt: str) -> None:
    head = (LOGS / name).read_bytes()[:65536].decode("utf-8", "replace")
    assert detect(head) == fmt
    assert {e.source for e in events(name)} == {fmt}


def test_docker_cli_pulls_fold_command_progress_and_status() -> None:
    evs = events("docker-pull.log")
    assert brief(evs) == [
        ("docker.io/library/python:3.12", True),
        ("ghcr.io/acme/tools/builder:2024.05", False),
        ("docker.io/library/alpine:3.19", True),
        ("docker.io/library/redis:7", None),  # `pull -q` prints no status
        (
            "docker.io/library/node@sha256:402699de92fc20f3eaa1098d108a1ff2cab5245f8984d858a772572fb932dcc0",
            True,
        ),
    ]
    assert evs[0].digest == PY
    assert all(e.timestamp == AT for e in evs)  # no line timestamps: the --at time


def test_podman_pulls_and_skipped_blobs_mean_present() -> None:
    assert brief(events("podman-pull.log")) == [
        ("docker.io/library/python:3.12", True),
        ("quay.io/prometheus/node-exporter:v1.8.0", False),
        ("registry.access.redhat.com/ubi9/ubi-minimal:9.4", True),
    ]


def test_buildkit_from_steps_cached_and_metadata_only() -> None:
    evs = events("buildkit-plain.log")
    assert [(e.reference.name, e.reference.tag, e.pulled) for e in evs] == [
        ("docker.io/library/golang", "1.22", True),  # layers downloaded
        ("gcr.io/distroless/static-debian12", "nonroot", False),  # CACHED
        ("docker.io/docker/dockerfile", "1.7", None),  # syntax frontend, resolved only
    ]
    assert (
        evs[0].digest == "sha256:69b14e6ad02264b0752a6424eb66aca39a86006334a6e76eb9916bb981a204a2"
    )


def test_github_job_container_services_action_image_and_step_pull() -> None:
    evs = events("github-job.log", rules=RegionRules([parse_rule("runner:eu-*=eu")]))
    assert brief(evs) == [
        ("docker.io/library/alpine:3.19", False),
        ("docker.io/library/node:20-bookworm", True),
        ("docker.io/library/postgres:16", True),
        ("ghcr.io/acme/base/python:3.12-slim", True),  # step title + script echo: one pull
    ]
    assert evs[1].timestamp == datetime(2024, 5, 1, 10, 0, 5, 713551, tzinfo=UTC)
    assert {e.pipeline for e in evs} == {"acme/shop/.github/workflows/ci.yml"}
    assert {e.region for e in evs} == {"eu"}


def test_gitlab_job_services_pull_policy_and_script() -> None:
    evs = events("gitlab-job.log")
    assert brief(evs) == [
        ("docker.io/library/postgres:16", True),
        ("docker.io/library/redis:7", False),  # if-not-present: used the local image
        ("docker.io/library/python:3.12", True),
        ("registry.gitlab.com/platform/tools/linter:1.4", True),
    ]
    assert (
        evs[0].digest == "sha256:189cdc39b4e0cea98c81f346471faecc2485f931f18c0f67a673e042ed33824d"
    )
    assert evs[0].timestamp == datetime.fromtimestamp(1714557600, UTC)  # section start time
    assert {e.pipeline for e in evs} == {"platform/payments/api"}


def test_jenkins_inspect_then_pull_and_inspect_present() -> None:
    evs = events("jenkins-console.log", rules=RegionRules([parse_rule("runner:agent-us-*=us")]))
    assert brief(evs) == [
        ("docker.io/library/maven:3.9-eclipse-temurin-21", True),
        ("docker.io/sonarsource/sonar-scanner-cli:5", False),
    ]
    assert evs[0].timestamp == datetime(2024, 5, 2, 2, 0, 5, 400000, tzinfo=UTC)
    assert {e.pipeline for e in evs} == {"team_app_main"}
    assert {e.region for e in evs} == {"us"}


def test_kubelet_journal_pulled_present_and_never_finished() -> None:
    evs = events("kubelet-journal.log")
    assert brief(evs) == [
        ("docker.io/library/nginx:1.25", True),
        ("docker.io/library/busybox:1.36", False),
        ("registry.example.com/team/tool:9.9", None),
    ]
    assert evs[0].timestamp == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert evs[0].pipeline == "ci/runner"  # replica-set pod suffixes stripped


def test_kubectl_table_and_json_events() -> None:
    assert brief(events("kubectl-events.txt")) == [
        ("ghcr.io/acme/web:2.3.1", True),
        ("ghcr.io/acme/web:2.3.1", False),
    ]
    out: list[Event] = []
    report = ingest([LOGS / "k8s-events.jsonl"], Options(default_time=AT), on_event=out.append)
    assert brief(out) == [
        ("docker.io/library/redis:7.2", True),
        ("docker.io/library/redis:7.2", False),
    ]
    assert out[0].timestamp == datetime(2024, 5, 3, 4, 0, 2, tzinfo=UTC)
    assert report.stats.malformed == 1  # the truncated last line


def test_distribution_text_log_folds_head_and_digest_gets() -> None:
    rules = RegionRules([parse_rule("mirror:mirror-eu.*=eu")])
    evs = events("registry-text.log", rules=rules)
    # HEAD tag + GET index + GET manifest = one pull; a HEAD alone = present; 404 and
    # the warmer's own request ignored; the combined access-log twins not counted again.
    assert brief(evs) == [
        ("docker.io/library/python:3.12", True),
        ("docker.io/library/python:3.12", False),
        (
            "docker.io/library/alpine@sha256:76065e508328578ed740e2c0dbbac03d1f5002506642125e181833b7e79be49f",
            True,
        ),
    ]
    assert evs[0].digest == PY
    assert {e.region for e in evs} == {"eu"}


def test_distribution_access_json_and_notifications() -> None:
    assert brief(events("registry-access.log")) == [("docker.io/library/golang:1.22", True)]
    assert brief(events("registry-json.log", upstream="ghcr.io")) == [
        ("ghcr.io/acme/web:2.3.1", True)
    ]
    evs = events("notifications.jsonl")
    assert brief(evs) == [("docker.io/library/python:3.12", True)]  # blob pull, push ignored
    assert evs[0].digest == PY


# -- property-based: no parser raises on hostile text --------------------------------------
# Each parser gets its own sample lines, mutated (cut, spliced with arbitrary text, wrapped
# in ANSI escapes, NUL bytes, huge), mixed with arbitrary text: lines that reach the deep
# paths of the parser, not only lines it rejects at the first keyword test.

SAMPLES = {
    "docker": ["docker-pull.log"],
    "podman": ["podman-pull.log"],
    "buildkit": ["buildkit-plain.log"],
    "github": ["github-job.log"],
    "gitlab": ["gitlab-job.log"],
    "jenkins": ["jenkins-console.log"],
    "circleci": ["circleci-job.log"],
    "jib": ["jib-build.log"],
    "cloudbuild": ["cloudbuild.log"],
    "codebuild": ["codebuild.log"],
    "buildkite": ["buildkite-job.log"],
    "kubelet": [
        "kubelet-journal.log",
        "kubectl-events.txt",
        "k8s-events.jsonl",
        "crio-journal.log",
    ],
    "distribution": [
        "registry-text.log",
        "registry-access.log",
        "registry-json.log",
        "notifications.jsonl",
    ],
}


def _sample_lines(fmt: str) -> list[str]:
    return [
        line
        for name in SAMPLES[fmt]
        for line in (LOGS / name).read_text().splitlines()
        if line.strip()
    ]


def _hostile_lines(samples: list[str]) -> st.SearchStrategy[list[str]]:
    sample = st.sampled_from(samples)
    junk = st.text(max_size=40)
    mutated = st.builds(
        lambda s, i, j, t: s[: i % (len(s) + 1)] + t + s[j % (len(s) + 1) :],
        sample,
        st.integers(0, 400),
        st.integers(0, 400),
        junk,
    )
    wrapped = st.builds(
        lambda s, w: w.replace("X", s),
        sample,
        st.sampled_from(["\x1b[31mX\x1b[0m", "X\x00", "\x00X", "X" * 3, "X" + "y" * 20000]),
    )
    return st.lists(st.one_of(sample, mutated, wrapped, junk), max_size=25)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_parser_survives_hostile_lines(fmt: str) -> None:
    from analytics.ingest.base import Hit
    from analytics.ingest.reader import ReadStats
    from analytics.ingest.run import make_parser

    @settings(max_examples=120, deadline=None)
    @given(_hostile_lines(_sample_lines(fmt)))
    def check(lines: list[str]) -> None:
        hits: list[Hit] = []
        parser = make_parser(fmt, hits.append, ReadStats(), AT, Options())
        if hasattr(parser, "prime"):
            parser.prime("\n".join(lines))
        for line in lines:  # every line, not only the selected ones: harsher than ingest
            parser.feed(line)
        parser.finish()
        assert all(isinstance(h.reference, str) for h in hits)

    check()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([line.encode() for fmt in SAMPLES for line in _sample_lines(fmt)[:15]]),
        ),
        max_size=30,
    ),
    st.sampled_from([None, *sorted(SAMPLES)]),
)
def test_scan_file_survives_arbitrary_bytes(chunks: list[bytes], fmt: str | None) -> None:
    # The whole driver (reader, detection, selection, parser, normaliser) on invalid UTF-8,
    # NUL bytes and binary mixed with real lines: never raises, every event is counted.
    from analytics.ingest.run import scan_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.log"
        path.write_bytes(b"\n".join(chunks))
        out: list[Event] = []
        result = scan_file(path, Options(default_time=AT, format=fmt), out.append)
    # Bytes that happen to start with a gzip or zstd magic number are read as compressed
    # and found damaged: the policy for damaged input, not an exception.
    assert result.problem in (None, "unknown-format", "damaged")
    assert result.events == len(out)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_detection_and_helpers_survive_arbitrary_input(data: bytes) -> None:
    from analytics.ingest.base import from_unix, parse_iso, pull_target, strip_ansi
    from analytics.ingest.detect import FORMATS, detect_bytes

    text = data.decode("utf-8", "replace")
    assert detect_bytes(data) in (None, *FORMATS)
    assert detect(text) in (None, *FORMATS)
    assert "\x1b[" not in strip_ansi("\x1b[1m" + text + "\x1b[0m") or "\x1b[" in text
    assert parse_iso(text) is None or parse_iso(text).tzinfo is not None  # type: ignore[union-attr]
    from_unix(text)
    target = pull_target(text)
    assert target is None or isinstance(target, str)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(8, 64), st.integers(4, 40))
def test_block_reader_yields_only_whole_valid_lines(data: bytes, block: int, cap: int) -> None:
    import io

    from analytics.ingest.reader import BlockReader, ReadStats

    stats = ReadStats()
    blocks = list(BlockReader(io.BytesIO(data), stats, block_size=block, max_line=cap))
    for b in blocks:
        assert b.endswith(b"\n")
        b.decode("utf-8")  # never invalid UTF-8
        assert all(len(line) <= cap for line in b.split(b"\n"))
    assert stats.bytes == len(data)


LONG_RUNS = ["y" * 60000, "." * 60000, " " * 60000, "[" * 60000, '{"a":' * 10000, "a=" * 30000]


@pytest.mark.timeout(30)  # a hang guard, not a measurement: each regression took 7-18 s per line
@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_no_parser_is_quadratic_on_a_line_near_the_length_cap(fmt: str) -> None:
    # Lines up to reader.MAX_LINE (64 KiB) reach the parsers. A lazy token before `\.*$`
    # (podman's "Trying to pull") took 7 s on a run of dots, logrus field matching 18 s on a
    # run of word characters, and arrays nested 60000 deep raised RecursionError.
    from analytics.ingest.reader import ReadStats
    from analytics.ingest.run import make_parser

    for line in _sample_lines(fmt)[:8]:
        for run in LONG_RUNS:
            half = len(line) // 2
            for text in (line + run, run + line, line[:half] + run + line[half:]):
                parser = make_parser(fmt, lambda h: None, ReadStats(), AT, Options())
                if hasattr(parser, "prime"):
                    parser.prime(text)
                parser.feed(text)
                parser.finish()
