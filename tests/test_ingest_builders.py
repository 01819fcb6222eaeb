"""Build and runtime output beyond the basic formats: BuildKit builds cut or concatenated,
the tty screen, bake; kaniko; podman/buildah and classic builder steps; client global
options; GitLab executors and services; containerd, CRI-O and Kubernetes event JSON
documents."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from analytics.events import Event
from analytics.ingest import Options, scan_file

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def scan(tmp_path: Path, text: str, fmt: str | None = None) -> tuple[list[Event], object]:
    path = tmp_path / "x.log"
    path.write_text(text)
    out: list[Event] = []
    result = scan_file(path, Options(default_time=AT, format=fmt), out.append)
    return out, result


def refs(evs: list[Event]) -> list[tuple[str, str | None, bool | None]]:
    return sorted(((str(e.reference), e.digest, e.pulled) for e in evs), key=str)


def build(first: int, image: str, digest: str, header: bool = True, done: bool = True) -> str:
    """One build's plain progress, numbered from ``first`` (2 when the header is cut)."""
    n = first
    lines = []
    if header:
        lines += ['#0 building with "default" instance using docker driver', ""]
        lines += [f"#{n} [internal] load build definition from Dockerfile", f"#{n} DONE 0.0s", ""]
        n += 1
    lines += [f"#{n} [internal] load metadata for {image}", f"#{n} DONE 0.5s", ""]
    n += 1
    lines += [f"#{n} [1/2] FROM {image}@{digest}", f"#{n} resolve {image}@{digest} done"]
    lines += [f"#{n} CACHED" if done else f"#{n} sha256:{'a' * 64} 1MB / 5MB 0.2s", ""]
    n += 1
    lines += [f"#{n} [2/2] RUN make", f"#{n} DONE 1.0s", ""]
    return "\n".join(lines) + "\n"


def test_buildkit_concatenated_builds_without_header_each_count(tmp_path: Path) -> None:
    img = "docker.io/library/golang:1.22"
    text = build(1, img, D1) + build(2, img, D1, header=False) + build(2, img, D2, header=False)
    evs, res = scan(tmp_path, text, "buildkit")
    assert refs(evs) == [(img, D1, False), (img, D1, False), (img, D2, False)]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_buildkit_cut_build_then_new_build_with_lower_numbers(tmp_path: Path) -> None:
    # The first build is cut while pulling (no DONE): the next build's #2 starts anew.
    img = "docker.io/library/node:20"
    text = build(1, img, D1, done=False) + build(2, img, D1, header=False)
    evs, _ = scan(tmp_path, text, "buildkit")
    assert refs(evs) == sorted([(img, D1, False), (img, D1, None)], key=str)


def test_buildkit_second_metadata_after_from_is_a_new_build(tmp_path: Path) -> None:
    img = "docker.io/library/alpine:3.19"
    text = (
        f"#5 [internal] load metadata for {img}\n#6 [1/1] FROM {img}@{D1}\n#6 CACHED\n"
        f"#7 [internal] load metadata for {img}\n#8 [1/1] FROM {img}@{D1}\n#8 CACHED\n"
    )
    evs, _ = scan(tmp_path, text, "buildkit")
    assert refs(evs) == [(img, D1, False), (img, D1, False)]


def test_buildkit_truncated_from_takes_the_resolve_line(tmp_path: Path) -> None:
    img = "docker.io/library/python:3.12-slim"
    text = f"#4 [1/3] FROM {img}@{D1[:20]}...\n#4 resolve {img}@{D1} 0.0s done\n#4 DONE 2.1s\n"
    evs, res = scan(tmp_path, text, "buildkit")
    assert refs(evs) == [(img, D1, False)]
    assert res.stats.malformed == 0  # type: ignore[attr-defined]


def test_buildkit_one_image_once_per_build_across_platforms(tmp_path: Path) -> None:
    img = "docker.io/library/debian:12"
    text = (
        f"#3 [linux/amd64 internal] load metadata for {img}\n"
        f"#4 [linux/arm64 internal] load metadata for {img}\n"
        f"#5 [linux/amd64 1/2] FROM {img}@{D1}\n#6 [linux/arm64 1/2] FROM {img}@{D1}\n"
        "#5 CACHED\n#6 CACHED\n"
    )
    evs, _ = scan(tmp_path, text, "buildkit")
    assert refs(evs) == [(img, D1, False)]


def test_buildx_bake_targets_and_screen_output(tmp_path: Path) -> None:
    bake = (
        "#1 [internal] load local bake definitions\n#1 DONE 0.0s\n"
        "#2 [app internal] load build definition from Dockerfile\n#2 DONE 0.0s\n"
        "#3 [api internal] load build definition from Dockerfile\n#3 DONE 0.0s\n"
        "#4 [app internal] load metadata for docker.io/library/nginx:1.27\n#4 DONE 1.0s\n"
        "#5 [api internal] load metadata for docker.io/library/python:3.12\n#5 DONE 1.0s\n"
        f"#6 [app 1/2] FROM docker.io/library/nginx:1.27@{D1}\n#6 CACHED\n"
    )
    evs, _ = scan(tmp_path, bake, "buildkit")
    assert refs(evs) == [
        ("docker.io/library/nginx:1.27", D1, False),
        ("docker.io/library/python:3.12", None, None),  # resolved, its FROM cut off
    ]
    screen = (  # a terminal redraws the screen: each step once, from its last state
        "[+] Building 1.0s (3/5)\n => [internal] load metadata for docker.io/library/redis:7  0.9s\n"
        f" => [1/2] FROM docker.io/library/redis:7@{D1}  0.1s\n"
        "[+] Building 2.0s (5/5) FINISHED\n"
        " => [internal] load metadata for docker.io/library/redis:7  0.9s\n"
        f" => [1/2] FROM docker.io/library/redis:7@{D1}  1.0s\n"
        f" => => sha256:{'b' * 64} 5MB / 5MB  0.8s\n"
    )
    evs, _ = scan(tmp_path, screen)
    assert refs(evs) == [("docker.io/library/redis:7", D1, True)]


def test_kaniko_builds_concatenated(tmp_path: Path) -> None:
    one = (
        "INFO[0000] Retrieving image manifest golang:1.22\n"
        "INFO[0000] Retrieving image golang:1.22 from registry index.docker.io\n"
        "INFO[0001] Retrieving image manifest alpine:3.19\n"
        "INFO[0002] Built cross stage deps: map[0:[/app]]\n"
        "INFO[0002] Retrieving image manifest golang:1.22\n"
        "INFO[0002] Returning cached image manifest\n"
    )
    evs, res = scan(tmp_path, one + one)
    assert res.format == "kaniko"  # type: ignore[attr-defined]
    assert [str(e.reference) for e in evs] == [
        "docker.io/library/golang:1.22",
        "docker.io/library/alpine:3.19",
        "docker.io/library/golang:1.22",
        "docker.io/library/alpine:3.19",
    ]


def test_dockerfile_steps_podman_and_classic(tmp_path: Path) -> None:
    podman = (
        "STEP 1/4: FROM registry.fedoraproject.org/fedora:40 AS build\n"
        "Trying to pull registry.fedoraproject.org/fedora:40...\n"
        "Getting image source signatures\nCopying blob 1a2b3c4d5e6f done\n"
        "Writing manifest to image destination\n"
        "STEP 2/4: RUN make\n"
        "STEP 3/4: FROM build\n"  # an earlier stage: no image
        "STEP 4/4: FROM quay.io/acme/base:2\n"  # present: nothing pulled
        "COMMIT app\n"
    )
    evs, res = scan(tmp_path, podman)
    assert res.format == "podman"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("quay.io/acme/base:2", None, False),
        ("registry.fedoraproject.org/fedora:40", None, True),
    ]
    classic = (
        "Sending build context to Docker daemon  2.048kB\n"
        "Step 1/3 : FROM alpine:3.19\n3.19: Pulling from library/alpine\n"
        f"Digest: {D1}\nStatus: Downloaded newer image for alpine:3.19\n ---> 05455a08881e\n"
        "Step 2/3 : RUN true\n"
    )
    evs, _ = scan(tmp_path, classic)
    assert refs(evs) == [("docker.io/library/alpine:3.19", D1, True)]


def test_client_global_options_before_the_subcommand(tmp_path: Path) -> None:
    lines = [
        "$ docker -H tcp://10.0.0.5:2376 --tls --tlscacert /certs/ca.pem pull a/one:1",
        "$ docker --context prod -D pull b/two:2",
        "$ docker --log-level=debug image pull c/three:3",
        "$ podman --root /var/lib/x --log-level debug pull quay.io/d/four:4",
        "$ nerdctl -n k8s.io pull e/five:5",
        "$ sudo ctr -n k8s.io images pull docker.io/f/six:6",
        "$ docker --config /tmp/cfg pull --platform linux/arm64 g/seven:7",
    ]
    evs, res = scan(tmp_path, "\n".join(lines) + "\n", "docker")
    assert [str(e.reference) for e in evs] == [
        "docker.io/a/one:1",
        "docker.io/b/two:2",
        "docker.io/c/three:3",
        "quay.io/d/four:4",
        "docker.io/e/five:5",
        "docker.io/f/six:6",
        "docker.io/g/seven:7",
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_gitlab_executors_and_services(tmp_path: Path) -> None:
    text = (
        "Running with gitlab-runner 16.11.0 (91a27b2a)\n"
        "Using Kubernetes executor with image alpine:3.19 ...\n"
        "Using attach strategy to execute scripts...\n"
    )
    evs, _ = scan(tmp_path, text)
    assert refs(evs) == [("docker.io/library/alpine:3.19", None, None)]
    old = (
        "Running with gitlab-runner 12.0.0 (abcdef12)\n"
        "Using Docker executor with image ruby:3.3 ...\n"
        "Starting service postgres:16 ...\n"
        "Pulling docker image postgres:16 ...\n"
        f"Using docker image sha256:{'c' * 64} for postgres:16 ...\n"
        "Pulling docker image ruby:3.3 ...\n"
        f"Using docker image sha256:{'d' * 64} for ruby:3.3 with digest ruby@{D2} ...\n"
    )
    evs, res = scan(tmp_path, old)
    assert refs(evs) == [
        ("docker.io/library/postgres:16", None, True),
        ("docker.io/library/ruby:3.3", D2, True),
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_kubectl_events_json_document_and_events_v1(tmp_path: Path) -> None:
    items = [
        {
            "kind": "Event",
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "api-7d4b9c8f6-x2k9p"},
            "reason": "Pulled",
            "message": 'Successfully pulled image "nginx:1.27" in 2.3s (2.3s including waiting)',
            "source": {"component": "kubelet", "host": "node-1"},
            "lastTimestamp": "2024-05-01T10:00:00Z",
        },
        {
            "kind": "Event",
            "apiVersion": "events.k8s.io/v1",
            "regarding": {"kind": "Pod", "namespace": "shop", "name": "web-5f6d7c8b9-abcde"},
            "reason": "Pulled",
            "note": 'Container image "redis:7" already present on machine',
            "eventTime": "2024-05-01T10:01:00.000000Z",
            "reportingInstance": "node-2",
        },
    ]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=4)
    evs, res = scan(tmp_path, doc)
    assert res.format == "kubelet"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/nginx:1.27", None, True),
        ("docker.io/library/redis:7", None, False),
    ]
    assert {e.pipeline for e in evs} == {"shop/api", "shop/web"}
    assert evs[0].timestamp == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    # `kubectl get events -w -o json`: pretty-printed objects one after the other
    evs, _ = scan(tmp_path, "\n".join(json.dumps(i, indent=2) for i in items))
    assert len(evs) == 2


def test_containerd_pull_with_repo_digest(tmp_path: Path) -> None:
    text = (
        'time="2024-05-01T10:00:00.123456789Z" level=info msg="PullImage \\"nginx:1.27\\""\n'
        'time="2024-05-01T10:00:02Z" level=info msg="Pulled image \\"nginx:1.27\\" with image id '
        f'\\"sha256:{"e" * 64}\\", repo tag \\"docker.io/library/nginx:1.27\\", repo digest '
        f'\\"docker.io/library/nginx@{D1}\\", size \\"1\\" in 2s"\n'
        'time="2024-05-01T10:00:02Z" level=info msg="PullImage \\"nginx:1.27\\" returns image '
        f'reference \\"sha256:{"e" * 64}\\""\n'
    )
    evs, res = scan(tmp_path, text)
    assert res.format == "kubelet"  # type: ignore[attr-defined]
    assert refs(evs) == [("docker.io/library/nginx:1.27", D1, True)]
    assert evs[0].timestamp == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def crio(stamp: str, msg: str, rid: str, cut: int | None = None) -> str:
    """A CRI-O journal line (as ``journalctl -u crio`` prints it), cut to ``cut``
    characters and ``>`` as ``journalctl`` does in a narrow pager."""
    line = (
        f'Oct 12 {stamp[11:19]} node-1 crio[1566]: time="{stamp}" level=info msg="{msg}" '
        f"id={rid} name=/runtime.v1.ImageService/PullImage"
    )
    return (line[:cut] + ">" if cut else line) + "\n"


def test_crio_pulls_paired_by_request_id(tmp_path: Path) -> None:
    a, b = "9fd4db69-a648-421f-9a1e-0123456789ab", "dec01177-932e-45ff-aaf0-db38acd432fc"
    text = (
        # Two pulls at once: each Pulled line names the image by digest alone, qualified by
        # the registry an unqualified name resolved to; the request id pairs them.
        crio("2020-10-12 04:10:32.226414375Z", "Pulling image: team/api:1.4", a)
        + crio("2020-10-12 04:10:32.300000000Z", "Pulling image: quay.io/ns/web:2", b)
        + crio("2020-10-12 04:10:40.000000000Z", f"Pulled image: quay.io/ns/web@{D2}", b)
        + crio("2020-10-12 04:10:42.877396612Z", f"Pulled image: docker.io/team/api@{D1}", a)
        + crio("2020-10-12 04:10:42.878346566Z", "Checking image status: team/api:1.4", a)
        # Cut by journalctl: the digest and the id are lost, the repository pairs them.
        + crio("2020-10-12 04:11:00.000000000Z", "Pulling image: quay.io/ns/db:15", b, cut=150)
        + crio("2020-10-12 04:11:05.000000000Z", f"Pulled image: quay.io/ns/db@{D2}", b, cut=130)
        # A pull whose end is not in the file yet.
        + crio("2020-10-12 04:12:00.000000000Z", "Pulling image: quay.io/ns/cache:7", a)
    )
    evs, res = scan(tmp_path, text)
    assert res.format == "kubelet"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/team/api:1.4", D1, True),
        ("quay.io/ns/cache:7", None, None),
        ("quay.io/ns/db:15", None, True),
        ("quay.io/ns/web:2", D2, True),
    ]
    first = next(e for e in evs if e.digest == D1)  # CRI-O's time, the pull's start
    assert first.timestamp == datetime(2020, 10, 12, 4, 10, 32, 226414, tzinfo=UTC)
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_circleci_containers_once_each_with_digest_and_pull(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "Build-agent version 1.0.187186-94b07954 (2023-06-27T15:43:38+0000)",
            "Starting container cimg/python:3.12",
            "cimg/python:3.12:",
            f"  using image cimg/python@{D1}",
            "  pull stats: download 245.9MiB in 2.703s (90.96MiB/s)",
            "  time to create container: 2.315s",
            "Starting container postgres:16",
            "  Did not get image metadata for postgres:16: context deadline exceeded",
            "WARNING: docker image postgres:16 does not specify an architecture",
            "postgres:16:",
            f"  using image postgres@{D2}",
            "  pull stats: Image was already available so the image was not pulled",
            "  time to create container: 69ms",
            # The agent refreshes a cached image afterwards; this one had moved.
            "  image is cached as postgres:16, but refreshing...",
            "16: Pulling from library/postgres",
            "Digest: sha256:" + "3" * 64,
            "Status: Downloaded newer image for postgres:16",
            "  CIRCLE_REPOSITORY_URL=git@github.com:team/shop.git",
            # A step's own pull is a use of its own.
            "docker pull redis:7",
            "7: Pulling from library/redis",
            "Digest: sha256:" + "4" * 64,
            "Status: Image is up to date for redis:7",
        ]
    )
    evs, res = scan(tmp_path, text + "\n")
    assert res.format == "circleci"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/cimg/python:3.12", D1, True),
        ("docker.io/library/postgres:16", D2, True),
        ("docker.io/library/redis:7", "sha256:" + "4" * 64, False),
    ]
    assert {e.pipeline for e in evs} == {"team/shop"}
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_compose_v1_names_the_service_image_before_the_pull(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "Pulling db (postgres:16)...",
            "16: Pulling from library/postgres",
            f"Digest: {D1}",
            "Status: Downloaded newer image for postgres:16",
            # `image: ghcr.io/acme/api` without a tag prints an empty one; the engine's
            # output names the repository without its registry, and no status was printed.
            "Pulling api (ghcr.io/acme/api:)...",
            "latest: Pulling from acme/api",
            "Pulling cache (redis:7)...",
            "7: Pulling from library/redis",
            f"Digest: {D2}",
            "Status: Image is up to date for redis:7",
        ]
    )
    evs, _ = scan(tmp_path, text + "\n")
    assert refs(evs) == [
        ("docker.io/library/postgres:16", D1, True),
        ("docker.io/library/redis:7", D2, False),
        ("ghcr.io/acme/api:latest", None, None),
    ]


def test_jib_base_image_per_build_in_maven_and_ci_logs(tmp_path: Path) -> None:
    build = [
        "[INFO] --- jib-maven-plugin:3.4.0:build (default-cli) @ api ---",
        "[INFO] Containerizing application to registry.example:5000/team/api...",
        "[WARNING] Base image 'eclipse-temurin:21-jre' does not use a specific image digest"
        " - build may not be reproducible",
        "[INFO] Getting manifest for base image eclipse-temurin:21-jre...",
        f"[INFO] Using base image with digest: {D1}",
        "[INFO] Built and pushed image as registry.example:5000/team/api",
    ]
    cut = ["[INFO] Getting manifest for base image gcr.io/distroless/java21:nonroot..."]
    evs, res = scan(tmp_path, "\n".join(build + cut) + "\n")
    assert res.format == "jib"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/eclipse-temurin:21-jre", D1, None),
        ("gcr.io/distroless/java21:nonroot", None, None),  # the build stopped before its digest
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]
    # The same lines in a GitHub Actions job log.
    stamped = "\n".join(f"2024-05-01T10:00:0{i}.0000000Z {line}" for i, line in enumerate(build))
    evs, res = scan(tmp_path, stamped + "\n")
    assert res.format == "github"  # type: ignore[attr-defined]
    assert refs(evs) == [("docker.io/library/eclipse-temurin:21-jre", D1, None)]
    assert evs[0].timestamp == datetime(2024, 5, 1, 10, 0, 3, tzinfo=UTC)


def test_cloud_build_step_images_pulled_or_already_there(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "BUILD",
            'Starting Step #0 - "test"',
            'Step #0 - "test": Pulling image: gcr.io/cloud-builders/npm:node-20.10.0',
            'Step #0 - "test": node-20.10.0: Pulling from cloud-builders/npm',
            f'Step #0 - "test": Digest: {D1}',
            'Step #0 - "test": Status: Downloaded newer image for '
            "gcr.io/cloud-builders/npm:node-20.10.0",
            'Finished Step #0 - "test"',
            "Starting Step #1",
            f"Step #1: Already have image (with digest): gcr.io/cloud-builders/docker@{D2}",
            "Step #1: Step 1/4 : FROM python:3.12-slim",
            "Step #1: 3.12-slim: Pulling from library/python",
            "Step #1: Status: Image is up to date for python:3.12-slim",
            "Finished Step #1",
        ]
    )
    evs, res = scan(tmp_path, text + "\n")
    assert res.format == "cloudbuild"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/python:3.12-slim", None, False),
        ("gcr.io/cloud-builders/docker@" + D2, D2, False),
        ("gcr.io/cloud-builders/npm:node-20.10.0", D1, True),
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_codebuild_commands_give_their_time_to_the_output(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "[Container] 2025/12/02 03:40:34.299176 Running on CodeBuild On-demand",
            "[Container] 2025/12/02 03:40:40.413190 Running command docker pull redis:7",
            "7: Pulling from library/redis",
            f"Digest: {D1}",
            "Status: Image is up to date for redis:7",
            "[Container] 2025/12/02 03:41:02.000001 Running command docker build -t app .",
            "Step 1/3 : FROM python:3.12-slim",
            "3.12-slim: Pulling from library/python",
            f"Digest: {D2}",
            "Status: Downloaded newer image for python:3.12-slim",
        ]
    )
    evs, res = scan(tmp_path, text + "\n")
    assert res.format == "codebuild"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/python:3.12-slim", D2, True),
        ("docker.io/library/redis:7", D1, False),
    ]
    times = {str(e.reference): e.timestamp for e in evs}
    assert times["docker.io/library/redis:7"] == datetime(
        2025, 12, 2, 3, 40, 40, 413190, tzinfo=UTC
    )
    assert times["docker.io/library/python:3.12-slim"] == datetime(
        2025, 12, 2, 3, 41, 2, 1, tzinfo=UTC
    )


def test_containerd_progress_gives_digest_and_whether_layers_came(tmp_path: Path) -> None:
    hexes = {n: str(n) * 64 for n in range(3, 8)}

    def table(ref: str, top: str, layer: str) -> list[str]:
        return [
            f"{ref}: resolved       |++++++++++++++++++++++++++++++++++++++|",
            f"index-sha256:{hexes[3]}:    done           |++++++++++++++++++++++++++++++++++++++|",
            f"manifest-sha256:{top}:     done           |++++++++++++++++++++++++++++++++++++++|",
            f"layer-sha256:{hexes[5]}:        {layer:<14} |++++++++++++++++++++++++++++++++++++++|",
            "elapsed: 2.1 s     total:  3.2 Mi (1.5 MiB/s)",
        ]

    text = "\n".join(
        [
            "$ nerdctl pull docker.io/library/redis:7",
            # Not a terminal: the table is printed again on each refresh (one pull).
            *table("docker.io/library/redis:7", hexes[4], "downloading"),
            *table("docker.io/library/redis:7", hexes[4], "done"),
            # ctr without its command line in the log: all layers were there already.
            *table("docker.io/library/nginx:1.27", hexes[6], "exists"),
        ]
    )
    evs, res = scan(tmp_path, text + "\n")
    assert res.format == "docker"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/nginx:1.27", "sha256:" + hexes[3], False),
        ("docker.io/library/redis:7", "sha256:" + hexes[3], True),
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def bk(ms: int, text: str) -> str:
    """A Buildkite raw log line: ``ESC _bk;t=<epoch ms> BEL`` then the text."""
    return f"\x1b_bk;t={ms}\x07{text}\n"


def test_buildkite_raw_log_times_and_the_docker_plugin_runs(tmp_path: Path) -> None:
    # Before: every line of a raw Buildkite log was dropped as binary (its BEL), so the
    # whole job counted nothing, and said nothing.
    t0 = 1745322209921  # 2025-04-22T11:43:29.921Z
    slug = "--label com.buildkite.pipeline_slug=acme-web --label com.buildkite.build_number=7"
    text = "".join(
        [
            bk(t0, "~~~ Running global environment hook"),
            bk(t0 + 10, "\x1b[90m$\x1b[0m /buildkite/agent/hooks/environment"),
            # always-pull: the plugin's pull, then its run of the same image (one use)
            bk(t0 + 1000, "--- :docker: Pulling node:20"),
            bk(t0 + 1100, "20: Pulling from library/node"),
            bk(t0 + 1200, f"Digest: {D1}"),
            bk(t0 + 1300, "Status: Downloaded newer image for node:20"),
            bk(t0 + 1400, "docker.io/library/node:20"),
            bk(t0 + 1500, "--- :docker: Running command in node:20"),
            bk(t0 + 1510, f"\x1b[90m$\x1b[0m docker run -t -i --rm --init {slug} node:20 npm"),
            # docker run pulls an absent image itself: one use, pulled
            bk(t0 + 60_000, "--- :docker: Running command in python:3.12"),
            bk(t0 + 60_010, "\x1b[90m$\x1b[0m docker run -t -i --rm python:3.12 make"),
            bk(t0 + 60_100, "Unable to find image 'python:3.12' locally"),
            bk(t0 + 60_200, "3.12: Pulling from library/python"),
            bk(t0 + 60_300, f"Digest: {D2}"),
            bk(t0 + 60_400, "Status: Downloaded newer image for python:3.12"),
            # no pull printed: the image was on the agent
            bk(t0 + 120_000, "--- :docker: Running command in postgres:16"),
            bk(t0 + 120_010, "\x1b[90m$\x1b[0m docker run -t -i --rm postgres:16 true"),
            bk(t0 + 180_000, "~~~ Running global pre-exit hook"),
        ]
    )
    evs, res = scan(tmp_path, text)
    assert res.format == "buildkite"  # type: ignore[attr-defined]
    assert res.stats.skipped == 0 and res.unused.count == 0  # type: ignore[attr-defined]
    got = sorted(
        (str(e.reference), e.digest, e.pulled, e.timestamp.isoformat(), e.pipeline) for e in evs
    )
    assert got == [
        ("docker.io/library/node:20", D1, True, "2025-04-22T11:43:30.921000+00:00", "acme-web"),
        ("docker.io/library/postgres:16", None, False, "2025-04-22T11:45:29.921000+00:00", "acme-web"),
        ("docker.io/library/python:3.12", D2, True, "2025-04-22T11:44:29.921000+00:00", "acme-web"),
    ]  # fmt: skip


def test_apc_and_bel_do_not_make_a_line_binary(tmp_path: Path) -> None:
    # The same markers in a log read as docker output: stripped like colours, not dropped.
    text = bk(1745322209921, "$ docker pull alpine:3.19") + bk(
        1745322209999, "Status: Image is up to date for alpine:3.19"
    )
    evs, res = scan(tmp_path, text, "docker")
    assert refs(evs) == [("docker.io/library/alpine:3.19", None, False)]
    assert res.stats.skipped == 0  # type: ignore[attr-defined]


def test_buildkite_log_saved_without_its_times(tmp_path: Path) -> None:
    # The agent's hook headers name the format; the uses are the same, at the file's time.
    raw = (Path(__file__).parent / "data" / "logs" / "buildkite-job.log").read_text()
    plain = "".join(line.split("\x07", 1)[-1] + "\n" for line in raw.splitlines())
    evs, res = scan(tmp_path, plain)
    assert res.format == "buildkite"  # type: ignore[attr-defined]
    assert refs(evs) == [
        ("docker.io/library/node:20", "sha256:" + "7ce8b205d15e30fd395e5fa4000bcdf595fcff3f434fe75822e54e82a5f5cf82", True),
        ("docker.io/library/postgres:16", "sha256:" + "4aea012537edfad80f98d870a36e6b90b4c09b27be7f4b4759d72db863baeebb", True),
    ]  # fmt: skip
    assert {e.timestamp for e in evs} == {AT} and res.unused.count == 0  # type: ignore[attr-defined]


def test_docker_run_is_a_use_present_unless_it_pulls(tmp_path: Path) -> None:
    # Before: a `docker run` of an image already present gave no event, and was not even
    # counted as unused: those uses were lost in silence.
    text = "\n".join(
        [
            "$ docker run --rm -v /src:/src -e CI=true node:20 npm test",  # present
            "ok",
            "+ docker run -it --name db python:3.12 make",  # absent: docker run pulls it
            "Unable to find image 'python:3.12' locally",
            "3.12: Pulling from library/python",
            f"Digest: {D1}",
            "Status: Downloaded newer image for python:3.12",
            "$ docker pull alpine:3.19",  # a pull then a run of it: one use
            "3.19: Pulling from library/alpine",
            f"Digest: {D2}",
            "Status: Image is up to date for alpine:3.19",
            "$ docker run --rm alpine:3.19 echo hi",
            "$ docker run --rm redis:7 true",  # present, then another image's pull output
            "7.2: Pulling from library/golang",
            "Status: Downloaded newer image for golang:7.2",
            "$ docker run --rm $IMAGE make",  # a variable: no use
            "$ docker run --some-new-option x alpine:3.19 true",  # an option we cannot place
            "$ docker run --rm -d -p 80:80 --network=host nginx:1.25",
            "Use docker run to start a container",  # prose, not a command
            "See 'docker run --help'.",
        ]
    )
    evs, res = scan(tmp_path, text + "\n", "docker")
    assert refs(evs) == [
        ("docker.io/library/alpine:3.19", D2, False),
        ("docker.io/library/golang:7.2", None, True),
        ("docker.io/library/nginx:1.25", None, False),
        ("docker.io/library/node:20", None, False),
        ("docker.io/library/python:3.12", D1, True),
        ("docker.io/library/redis:7", None, False),
    ]
    assert res.unused.count == 0  # type: ignore[attr-defined]


def test_docker_run_in_ci_logs_counts_once(tmp_path: Path) -> None:
    # GitLab echoes the script's commands; Jenkins' docker plugin counts its container by
    # `docker inspect` and its `docker run` is not a second use.
    gitlab = "\n".join(
        [
            "Running with gitlab-runner 17.0.0 (44feccdf)",
            "section_start:1714557600:step_script\r\x1b[0K\x1b[0K\x1b[36;1mExecuting step\x1b[0m",
            "$ docker run --rm postgres:16 pg_isready",
            "$ docker run --rm postgres:16 pg_isready",  # a retried command: two uses
        ]
    )
    evs, _ = scan(tmp_path, gitlab + "\n", "gitlab")
    assert refs(evs) == [("docker.io/library/postgres:16", None, False)] * 2
    jenkins = "\n".join(
        [
            "[Pipeline] withDockerContainer",
            "+ docker inspect -f . node:20",
            ".",
            "+ docker run -t -d -u 1000:1000 -w /ws node:20 cat",
        ]
    )
    evs, _ = scan(tmp_path, jenkins + "\n", "jenkins")
    assert refs(evs) == [("docker.io/library/node:20", None, False)]
