"""Log text for generated pulls, one writer per format, as each tool prints it.

Each writer turns one run (a pipeline's pulls at one time) into lines. Formats with their
own timestamps (GitHub, GitLab runner 17, Jenkins timestamper, kubelet journal, registry
access log) carry them per line; docker, podman and BuildKit output has none, so those
runs go to small files whose modification time is the run's time (what ingest falls back
to). ``noise`` lines of build and test output around the pulls make the files the size
and texture of real job logs. ``buildkit_concatenated`` writes a day's builds of a pipeline
into one log, without the headers that separate builds (an option of ``write_logs``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from warmer.oci.reference import parse

_NOISE = [
    "npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks memory.",
    "added 1187 packages, and audited 1188 packages in 21s",
    "Collecting requests>=2.31 (from -r requirements.txt (line 4))",
    "  Downloading requests-2.31.0-py3-none-any.whl (62 kB)",
    "============================= test session starts ==============================",
    "tests/test_orders.py::test_refund_rounding PASSED                        [ 42%]",
    "[INFO] Building jar: /workspace/target/app-1.4.2-SNAPSHOT.jar",
    "[INFO] BUILD SUCCESS",
    "go: downloading github.com/prometheus/client_golang v1.19.0",
    "ok  \tgithub.com/acme/payments/internal/ledger\t0.412s\tcoverage: 81.3% of statements",
    "   Compiling serde_json v1.0.115",
    "Step 4/9 : RUN make build",
    "warning: unused variable: `retries`",
    "Uploading artifacts for successful job",
]


@dataclass
class Pull:
    ref: str  # canonical name:tag
    digest: str
    pulled: bool
    role: str
    layers: list[tuple[str, int]]

    @property
    def familiar(self) -> str:
        return parse(self.ref).familiar

    @property
    def path(self) -> str:
        r = parse(self.ref)
        return r.repository


@dataclass
class Run:
    t: datetime
    pipeline: str
    region: str
    runner: str
    pulls: list[Pull]
    noise: int
    run_id: int = 0

    def banner(self) -> str:
        """The CI wrapper's first line: makes every saved run log distinct, as real ones are."""
        return f"+ echo 'run {self.run_id} of {self.pipeline} at {self.t:%Y-%m-%dT%H:%M:%SZ}'"


def _hex(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _noise(run: Run, k: int) -> Iterator[str]:
    for i in range(run.noise):
        yield _NOISE[(i * 7 + k) % len(_NOISE)]


def docker_pull_output(p: Pull) -> list[str]:
    name = p.familiar
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    out = [f"{tag}: Pulling from {p.path}"]
    if p.pulled:
        shorts = [d.split(":")[1][:12] for d, _ in p.layers]
        out += [f"{s}: Pulling fs layer" for s in shorts]
        out += [f"{s}: Download complete" for s in shorts]
        out += [f"{s}: Pull complete" for s in shorts]
        out.append(f"Digest: {p.digest}")
        out.append(f"Status: Downloaded newer image for {name}")
    else:
        out.append(f"Digest: {p.digest}")
        out.append(f"Status: Image is up to date for {name}")
    out.append(p.ref)
    return out


def github(run: Run) -> Iterator[str]:
    t = run.t

    def ts(dt: datetime) -> str:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z "

    repo = run.pipeline.replace("/", "-")
    head = [
        "Requested labels: self-hosted, linux, " + run.region,
        f"Job defined at: acme/{repo}/.github/workflows/ci.yml@refs/heads/main",
        f"Job is about to start running on the runner: {run.runner} (self-hosted)",
        "Current runner version: '2.316.0'",
        f"Runner name: '{run.runner}'",
        "Prepare workflow directory",
    ]
    for line in head:
        yield ts(t) + line
    for i, p in enumerate(run.pulls):
        t += timedelta(milliseconds=300)
        yield ts(t) + f"##[group]Pull container image '{p.familiar}'"
        yield ts(t) + f"##[command]/usr/bin/docker pull {p.familiar}"
        for line in docker_pull_output(p):
            t += timedelta(milliseconds=40)
            yield ts(t) + line
        yield ts(t) + "##[endgroup]"
        for line in _noise(run, i):
            yield ts(t) + line
    yield ts(t) + "Cleaning up orphan processes"


def gitlab(run: Run) -> Iterator[str]:
    t = run.t

    def ts(dt: datetime) -> str:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z 00O "

    unix = int(t.timestamp())
    job, *services = sorted(run.pulls, key=lambda p: p.role != "job")
    yield (
        ts(t)
        + f"section_start:{unix}:prepare_executor\r\x1b[0K\x1b[0K\x1b[36;1m"
        + 'Preparing the "docker" executor\x1b[0;m'
    )
    yield ts(t) + "Running with gitlab-runner 17.0.0 (44feccdf)"
    yield ts(t) + f"  on {run.runner} xYz9AbC1, system ID: s_0e1f2a3b4c5d"
    yield ts(t) + f"Using Docker executor with image {job.familiar} ..."
    for p in [*services, job]:
        t += timedelta(milliseconds=500)
        if p.role != "job":
            yield ts(t) + f"Starting service {p.familiar} ..."
        if p.pulled:
            yield ts(t) + f"Pulling docker image {p.familiar} ..."
        else:
            yield ts(t) + 'Using locally found image version due to "if-not-present" pull policy'
        repo = p.familiar.rsplit(":", 1)[0]
        yield ts(t) + (
            f"Using docker image sha256:{_hex('cfg', p.digest)} for {p.familiar} "
            f"with digest {repo}@{p.digest} ..."
        )
    yield ts(t) + f"section_end:{unix}:prepare_executor\r\x1b[0K"
    yield (
        ts(t) + f"Reinitialized existing Git repository in /builds/xYz9AbC1/0/{run.pipeline}/.git/"
    )
    for line in _noise(run, 3):
        yield ts(t) + line
    yield ts(t) + "Job succeeded"


def jenkins(run: Run) -> Iterator[str]:
    t = run.t

    def ts(dt: datetime) -> str:
        return "[" + dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z] "

    job = run.pipeline.replace("/", "_")
    yield "Started by timer" if t.hour < 6 else "Started by an SCM change"
    yield "[Pipeline] Start of Pipeline"
    yield "[Pipeline] node"
    yield ts(t) + f"Running on {run.runner} in /home/jenkins/workspace/{job}"
    for i, p in enumerate(run.pulls):
        t += timedelta(seconds=2)
        yield "[Pipeline] sh"
        yield ts(t) + f"+ docker inspect -f . {p.familiar}"
        if not p.pulled:
            yield ts(t) + "."
        else:
            yield ts(t) + f"Error: No such object: {p.familiar}"
            yield "[Pipeline] sh"
            yield ts(t) + f"+ docker pull {p.familiar}"
            for line in docker_pull_output(p):
                yield ts(t) + line
        yield "[Pipeline] withDockerContainer"
        yield (
            ts(t)
            + f"$ docker run -t -d -u 1000:1000 -w /home/jenkins/workspace/{job} {p.familiar} cat"
        )
        for line in _noise(run, i):
            yield ts(t) + line
        yield "[Pipeline] // withDockerContainer"
    yield "[Pipeline] End of Pipeline"
    yield "Finished: SUCCESS"


def docker(run: Run) -> Iterator[str]:
    yield run.banner()
    for i, p in enumerate(run.pulls):
        yield f"$ docker pull {p.familiar}"
        yield from docker_pull_output(p)
        yield from _noise(run, i)


def podman(run: Run) -> Iterator[str]:
    yield run.banner()
    for i, p in enumerate(run.pulls):
        yield f"+ podman pull {p.familiar}"
        yield f"Trying to pull {p.ref}..."
        yield "Getting image source signatures"
        for d, _ in p.layers:
            yield f"Copying blob {d}" + ("" if p.pulled else " skipped: already exists")
        yield f"Copying config sha256:{_hex('cfg', p.digest)} done"
        yield "Writing manifest to image destination"
        yield _hex("cfg", p.digest)
        yield from _noise(run, i)


def buildkit(run: Run, cut: int = 0) -> Iterator[str]:
    """A build's plain progress. ``cut`` 1: without its header (``#0 building with`` and the
    ``load build definition`` vertex), as in logs of consecutive builds concatenated; 2:
    also without the ``load metadata`` vertices (a log truncated at its start); 3: without
    the header, the ``FROM`` titles cut with ``...`` (the ``resolve`` line names the image)
    and no ``DONE``/``CACHED`` for them (a build cut off while pulling)."""
    n = 1
    yield run.banner()
    if cut == 0:
        yield '#0 building with "default" instance using docker driver'
        yield ""
        yield f"#{n} [internal] load build definition from Dockerfile"
        yield f"#{n} transferring dockerfile: 612B done"
        yield f"#{n} DONE 0.0s"
        yield ""
    for p in run.pulls:
        n += 1
        if cut < 2:
            yield f"#{n} [internal] load metadata for {p.ref}"
            yield f"#{n} DONE 0.9s"
            yield ""
    for i, p in enumerate(run.pulls):
        n += 1
        pinned = f"{p.ref}@{p.digest}"
        title = f"{pinned[: len(p.ref) + 20]}..." if cut == 3 else pinned
        yield f"#{n} [build {i + 1}/4] FROM {title}"
        yield f"#{n} resolve {pinned} 0.0s done"
        if p.pulled:
            for d, size in p.layers:
                mb = size / 1e6
                yield f"#{n} {d} {mb:.2f}MB / {mb:.2f}MB 1.1s done"
                yield f"#{n} extracting {d} 0.8s done"
            if cut != 3:
                yield f"#{n} DONE 4.2s"
        elif cut != 3:
            yield f"#{n} CACHED"
        yield ""
    for line in _noise(run, n):
        yield f"#{n + 1} {line}"


def kubelet(run: Run) -> Iterator[str]:
    t = run.t
    for i, p in enumerate(run.pulls):
        t += timedelta(seconds=1)
        stamp = t.strftime("%b %d %H:%M:%S")
        klog = t.strftime("%m%d %H:%M:%S.%f")
        pod = f"{run.pipeline.rsplit('/', 1)[-1]}-7d4b9c8f6-x{i}"
        head = (
            f'{stamp} {run.runner} kubelet[1432]: I{klog}    1432 event.go:376] "Event occurred" '
            f'object="apps/{pod}" fieldPath="spec.containers{{main}}" kind="Pod" apiVersion="v1" '
            'type="Normal"'
        )
        if p.pulled:
            yield head + f' reason="Pulling" message="Pulling image \\"{p.familiar}\\""'
            yield head + (
                f' reason="Pulled" message="Successfully pulled image \\"{p.familiar}\\" in 3.2s'
                ' (3.2s including waiting)"'
            )
        else:
            yield head + (
                f' reason="Pulled" message="Container image \\"{p.familiar}\\"'
                ' already present on machine"'
            )


def distribution(run: Run) -> Iterator[str]:
    for p in run.pulls:
        stamp = run.t.astimezone(UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
        repo = p.path
        tag = p.ref.rsplit(":", 1)[1]
        agent = '"" "docker/25.0.3 go/go1.21.6"'
        ip = f"10.{2 if run.region == 'eu' else 3}.0.{int(_hex(run.runner)[:2], 16) % 250 + 2}"
        yield f'{ip} - - [{stamp}] "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1" 200 0 {agent}'
        yield f'{ip} - - [{stamp}] "GET /v2/{repo}/manifests/{p.digest} HTTP/1.1" 200 7023 {agent}'
        if p.pulled:
            for d, size in p.layers:
                yield f'{ip} - - [{stamp}] "GET /v2/{repo}/blobs/{d} HTTP/1.1" 200 {size} {agent}'


WRITERS = {
    "github": github,
    "gitlab": gitlab,
    "jenkins": jenkins,
    "docker": docker,
    "podman": podman,
    "buildkit": buildkit,
    "kubelet": kubelet,
    "distribution": distribution,
}
# Formats whose lines carry no time: one file per run, dated by its modification time.
UNTIMED = ("docker", "podman", "buildkit")


def buildkit_concatenated(runs: list[Run]) -> Iterator[str]:
    """Consecutive builds in one log: the first whole, then in turn without the header,
    truncated at the start, and cut short (``buildkit(run, cut)``), as CI systems that keep
    one log per job of several builds, or cut logs, leave them."""
    for i, run in enumerate(runs):
        yield from buildkit(run, 0 if i == 0 else 1 + (i % 3))
