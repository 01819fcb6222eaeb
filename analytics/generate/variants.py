"""More CI systems' renderings of the generated runs: CircleCI, Google Cloud Build, AWS
CodeBuild, Buildkite (an option of ``write_logs``).

The workload stays what it is: a run drawn for one source is only *written* in a sibling
format, for a ``SHARE``-th of that source's pipelines per variant (chosen by a hash of the
pipeline's name, not by the workload's random draw, so the workload, the backtest and the
expected demand do not change). Each writer prints what that system prints: CircleCI's
container start-up (``Starting container``, the agent's cache and ``pull stats`` lines,
``using image NAME@DIGEST``), Cloud Build's ``Step #N:`` prefix and its builder image lines,
CodeBuild's ``[Container]`` agent stamps (the three after the real logs quoted in
``tests/data/corpus``), Buildkite's ``ESC _bk;t=MS BEL`` line times and its docker plugin's
lines (after the agent's log parser and the plugin's source). CircleCI and Cloud Build
lines carry no time, so those runs go to one file per run whose modification time is the
run's time, as docker output does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, timedelta

from analytics.generate.logs import Pull, Run, _noise, docker_pull_output

# The variants a source's runs may be written in.
VARIANT_OF = {
    "github": ("circleci",),
    "jenkins": ("cloudbuild",),
    "docker": ("codebuild", "buildkite"),
}
SHARE = 3  # each variant takes every third pipeline of its source
UNTIMED_VARIANTS = ("circleci", "cloudbuild")


def variant(source: str, pipeline: str) -> str:
    """The format a pipeline's runs of ``source`` are written in: ``source`` itself, or one
    of its variants (each for a ``SHARE``-th of its pipelines)."""
    others = VARIANT_OF.get(source, ())
    h = int.from_bytes(hashlib.sha256(pipeline.encode()).digest()[:4], "big") % SHARE
    return others[h] if h < len(others) else source


def _short(p: Pull) -> str:
    """The familiar name without its tag, as ``using image NAME@DIGEST`` prints it."""
    name = p.familiar
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def circleci(run: Run) -> Iterator[str]:
    """A CircleCI job's Spin Up Environment step: each pull is a container (the primary
    image, then services)."""
    yield "====>> Spin up environment"
    yield "Build-agent version 1.0.187186-94b07954 (2023-06-27T15:43:38+0000)"
    yield "Docker Engine Version: 20.10.24"
    for p in run.pulls:
        yield f"Starting container {p.familiar}"
        if p.pulled:
            yield f"  image cache not found on this host, downloading {p.familiar}"
            yield from docker_pull_output(p)
        yield f"  using image {_short(p)}@{p.digest}"
        if p.pulled:
            size = sum(s for _, s in p.layers) / (1 << 20)
            yield f"  pull stats: download {size:.1f}MiB in 1.2s ({size / 1.2:.1f}MiB/s)"
        else:
            yield "  pull stats: Image was already available so the image was not pulled"
        yield "  time to create container: 28ms"
    yield "====>> Preparing environment variables"
    yield f"CIRCLE_REPOSITORY_URL=git@github.com:{run.pipeline or 'acme/adhoc'}.git"
    yield run.banner()
    for i, _ in enumerate(run.pulls):
        yield from _noise(run, i)


def cloudbuild(run: Run) -> Iterator[str]:
    """A Cloud Build log: each pull is a step's builder image."""
    yield f'starting build "{run.run_id:08x}-4dae-4153-93f4-e98c41a96c4b"'
    yield ""
    yield "BUILD"
    for i, p in enumerate(run.pulls):
        step = f"Step #{i}: "
        if p.pulled:
            yield f"{step}Pulling image: {p.familiar}"
            for line in docker_pull_output(p):
                yield step + line
        else:
            yield f"{step}Already have image (with digest): {p.familiar}"
        yield step + run.banner()
        for line in _noise(run, i):
            yield step + line
        yield f"Finished Step #{i}"
    yield "PUSH"
    yield "DONE"


def codebuild(run: Run) -> Iterator[str]:
    """A CodeBuild log: the agent stamps each command it runs (UTC)."""
    t = run.t.astimezone(UTC)

    def stamp(text: str) -> str:
        return f"[Container] {t:%Y/%m/%d %H:%M:%S.%f} {text}"

    yield stamp("Running on CodeBuild On-demand")
    yield stamp("Entering phase PRE_BUILD")
    yield stamp(f"Running command {run.banner()[2:]}")
    for i, p in enumerate(run.pulls):
        t += timedelta(seconds=2)
        yield stamp(f"Running command docker pull {p.familiar}")
        yield from docker_pull_output(p)
        yield from _noise(run, i)
    yield ""
    yield stamp("Phase complete: PRE_BUILD State: SUCCEEDED")


def buildkite(run: Run) -> Iterator[str]:
    """A Buildkite job running each image with the docker plugin: pulled ones with
    ``always-pull``, present ones found by ``docker run`` on the agent."""
    t = run.t.astimezone(UTC)

    def line(text: str) -> str:
        return f"\x1b_bk;t={int(t.timestamp() * 1000)}\x07{text}"

    yield line("~~~ Running global environment hook")
    yield line("\x1b[90m$\x1b[0m /buildkite/agent/hooks/environment")
    yield line(run.banner())
    slug = (run.pipeline or "adhoc").replace("/", "-")
    for i, p in enumerate(run.pulls):
        t += timedelta(seconds=2)
        if p.pulled:
            yield line(f"--- :docker: Pulling {p.familiar}")
            for out in docker_pull_output(p):
                yield line(out)
        yield line(f"--- :docker: Running command in {p.familiar}")
        yield line(
            "\x1b[90m$\x1b[0m docker run -t -i --rm --init "
            f"--label com.buildkite.pipeline_slug={slug} {p.familiar} /bin/sh -e -c make"
        )
        for out in _noise(run, i):
            yield line(out)
    yield line("~~~ Running global pre-exit hook")


WRITERS: dict[str, Callable[[Run], Iterator[str]]] = {
    "circleci": circleci,
    "cloudbuild": cloudbuild,
    "codebuild": codebuild,
    "buildkite": buildkite,
}
