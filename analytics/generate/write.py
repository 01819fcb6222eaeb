"""Writing a generated workload to disk: logs per region/source/day, repositories, catalogue.

Layout under ``out``::

    logs/<region>/<source>/<YYYY-MM-DD>/<pipeline>.log[.gz]   timed formats, one file per
                                                              pipeline and day (every third
                                                              day gzipped)
    logs/<region>/<docker|podman|buildkit>/<day>/<pipeline>-<HHMMSS>-<run>.log
                                                              one file per run, mtime = run
    logs/<region>/distribution/<day>/access.log[.gz]          the regional mirror's log
    repos/<region>/<team>/<project>/...                       Dockerfile, docker-compose.yml,
                                                              .github/workflows/ci.yml,
                                                              .gitlab-ci.yml, k8s/deployment.yaml
    catalogue.json                                            images, tag history, layers
    labels.json                                               day kinds per region (ground truth)

Regions are in the paths: ingest with ``--rule 'path:*/logs/eu/*=eu'`` (and ``us``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from analytics.generate.logs import UNTIMED, WRITERS, Pull, Run, buildkit_concatenated
from analytics.generate.variants import UNTIMED_VARIANTS, variant
from analytics.generate.variants import WRITERS as VARIANT_WRITERS
from analytics.generate.workload import Pipeline, Use, Workload
from analytics.staticrefs.gitlog import git_env
from warmer.oci.reference import parse

_RUNNER = {
    "github": "{r}-runner-{n:02d}",
    "gitlab": "{r}-docker-runner-{n}",
    "jenkins": "{r}-agent-{n}",
    "kubelet": "{r}-node-{n}",
    "distribution": "{r}-client-{n}",
}


@dataclass
class Written:
    files: int = 0
    bytes: int = 0
    runs: int = 0
    per_source: dict[str, int] = field(default_factory=dict)  # bytes per format written
    pulls: dict[str, int] = field(default_factory=dict)  # pulls per format written


def _slug(pipeline: str) -> str:
    return pipeline.replace("/", "-") or "adhoc"


def _runs(w: Workload, noise: int, variants: bool) -> dict[tuple[str, str, str, str], list[Run]]:
    """Runs grouped by (region, format written, day, file key)."""
    out: dict[tuple[str, str, str, str], list[Run]] = defaultdict(list)
    p = w.pulls
    for (run_id, source), g in p.groupby(["run", "source"], sort=False):
        first = g.iloc[0]
        t = first["timestamp"].to_pydatetime()
        region, pipeline = str(first["region"]), str(first["pipeline"])
        n = (
            run_id % 9 + 1
            if source in ("distribution",)
            else int.from_bytes(pipeline.encode()[-2:] or b"0", "big") % 9 + 1
        )
        n = int(run_id) % 4 + 1 if source in ("kubelet", "distribution") else n
        runner = _RUNNER.get(str(source), "{r}-host-{n}").format(r=region, n=n)
        pulls = []
        for row in g.itertuples(index=False):
            ref = f"{row.image}:{row.tag}"
            version = w.catalogue.version_at(ref, row.timestamp.to_pydatetime())
            layers = version.layers if version else []
            pulls.append(Pull(ref, str(row.digest), bool(row.pulled), "job", layers))
        roles = {u.ref: u.role for pl in w.pipelines if pl.name == pipeline for u in pl.uses}
        for pl_pull in pulls:
            pl_pull.role = roles.get(pl_pull.ref, "job")
        run = Run(t, pipeline, region, runner, pulls, noise, int(run_id))
        day = t.strftime("%Y-%m-%d")
        source = variant(str(source), pipeline) if variants else source
        if source in UNTIMED or source in UNTIMED_VARIANTS:
            key = f"{_slug(pipeline)}-{t:%H%M%S}-{run_id}"
        elif source == "distribution":
            key = "access"
        elif source == "kubelet":
            key = runner
        else:
            key = _slug(pipeline)
        out[(region, str(source), day, key)].append(run)
    return out


def write_logs(
    w: Workload,
    out: Path,
    noise: int = 12,
    gzip_every: int = 3,
    concat_buildkit: bool = False,
    variants: bool = False,
) -> Written:
    """Write every run's log text; timed formats gzipped every ``gzip_every`` days (0: never).

    ``variants``: a third of GitHub, Jenkins and docker pipelines are written as CircleCI,
    Cloud Build, CodeBuild or Buildkite logs instead (``analytics.generate.variants``); the
    workload is the same, ``Written.pulls`` counts the pulls written per format.

    ``concat_buildkit``: a pipeline's BuildKit builds of a day go to one file
    (``<pipeline>.log``), consecutive builds without the header that separates them and
    some truncated at their start (``logs.buildkit_concatenated``).
    """
    stats = Written()
    start_day = pd.Timestamp(w.params.start).tz_convert("UTC").tz_localize(None)
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for (region, source, day, key), runs in _runs(w, noise, variants).items():
        if concat_buildkit and source == "buildkit":
            key = _slug(runs[0].pipeline)
        groups.setdefault((region, source, day, key), []).extend(runs)
    for (region, source, day, key), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r.t)
        folder = out / "logs" / region / source / day
        folder.mkdir(parents=True, exist_ok=True)
        untimed = source in UNTIMED or source in UNTIMED_VARIANTS
        gz = (
            gzip_every > 0
            and not untimed
            and (pd.Timestamp(day) - start_day).days % gzip_every == gzip_every - 1
        )
        path = folder / (key + (".log.gz" if gz else ".log"))
        if concat_buildkit and source == "buildkit":
            text = "\n".join(buildkit_concatenated(runs)) + "\n"
        else:
            writer = WRITERS.get(source) or VARIANT_WRITERS[source]
            text = "\n".join(line for run in runs for line in writer(run)) + "\n"
        data = text.encode()
        if gz:
            path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        else:
            path.write_bytes(data)
        last = runs[-1].t.timestamp()
        os.utime(path, (last, runs[0].t.timestamp() if untimed else last))
        stats.files += 1
        stats.bytes += len(data)
        stats.runs += len(runs)
        stats.per_source[source] = stats.per_source.get(source, 0) + len(data)
        stats.pulls[source] = stats.pulls.get(source, 0) + sum(len(r.pulls) for r in runs)
    return stats


def _familiar(ref: str) -> str:
    return parse(ref).familiar


def _named_at(u: Use, at: datetime | None) -> bool:
    if not u.named:
        return False
    if at is None:
        return u.until is None
    return u.since <= at and (u.until is None or at < u.until)


def repo_files(pl: Pipeline, at: datetime | None = None) -> dict[str, str]:
    """The repository files naming the pipeline's images at ``at`` (None: at the end)."""
    live = [u for u in pl.uses if _named_at(u, at)]
    by_role: dict[str, list[str]] = defaultdict(list)
    for u in live:
        by_role[u.role].append(_familiar(u.ref))
    files: dict[str, str] = {}
    if by_role["base"]:
        base = by_role["base"][0]
        # No `# syntax=` line: the workload never pulls a BuildKit frontend image, and a
        # reference named in every Dockerfile but never pulled would skew the static signal.
        files["Dockerfile"] = (
            "ARG BASE=" + base + "\n"
            "FROM ${BASE} AS build\nWORKDIR /src\nCOPY . .\nRUN make build\n\n"
            'FROM ${BASE}\nCOPY --from=build /src/out /app\nCMD ["/app/run"]\n'
        )
    if by_role["service"]:
        svc = "".join(f"  svc{i}:\n    image: {img}\n" for i, img in enumerate(by_role["service"]))
        files["docker-compose.yml"] = "services:\n" + svc
    if by_role["deploy"]:
        containers = "".join(
            f"        - name: c{i}\n          image: {img}\n"
            for i, img in enumerate(by_role["deploy"])
        )
        files["k8s/deployment.yaml"] = (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n"
            "    spec:\n      containers:\n" + containers
        )
    job = by_role["job"][0] if by_role["job"] else None
    tools = by_role["tool"]
    if pl.system == "gitlab":
        text = (f"image: {job}\n" if job else "") + "build:\n  script: [make test]\n"
        for i, tool in enumerate(tools):
            text += f"tool{i}:\n  image:\n    name: {tool}\n  script: [run]\n"
        files[".gitlab-ci.yml"] = text
    elif job or tools:
        text = "on: [push]\njobs:\n  build:\n    runs-on: [self-hosted]\n"
        if job:
            text += f"    container: {job}\n"
        text += "    steps:\n      - uses: actions/checkout@v4\n"
        for tool in tools:
            text += f"      - uses: docker://{tool}\n"
        files[".github/workflows/ci.yml"] = text
    return files


_GIT_IDENTITY = ["-c", "user.name=warmer generate", "-c", "user.email=generate@warmer.invalid"]


def _git(repo: Path, args: list[str], when: datetime | None = None) -> None:
    """``git -C repo ARGS`` with a fixed identity (no git config needed) and, for a commit,
    author and committer dates ``when``."""
    env = git_env()
    if when is not None:
        stamp = f"@{int(when.timestamp())} +0000"
        env |= {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    cmd = ["git", "-C", str(repo), *_GIT_IDENTITY, "-c", "commit.gpgsign=false", *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL)


def write_repos(w: Workload, out: Path, git: bool = True) -> int:
    """Each pipeline's repository under ``out/repos/<pipeline>``; returns the files written.

    With ``git`` (and a git command on the PATH), each is a git repository whose history
    is the pipeline's: a first commit when the pipeline starts, then one commit at each
    time an image reference is added (an adoption) or replaced (a migration), dated then
    (author and committer date, whole seconds, never after the use's first pull), so
    ``warmer refs`` dates each reference as the workload's ground truth (``w.static``)
    does. A repository left by an earlier generation is replaced."""
    use_git = git and shutil.which("git") is not None
    n = 0
    for pl in w.pipelines:
        repo = out / "repos" / pl.name
        if use_git and (repo / ".git").is_dir():
            shutil.rmtree(repo)  # an earlier generation's history would mix with this one
        repo.mkdir(parents=True, exist_ok=True)
        if use_git:
            _git(repo, ["init", "-q", "-b", "main"])
            _commit_history(pl, repo)
        final = repo_files(pl)
        for rel, text in final.items():
            path = repo / rel
            if not use_git:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            n += 1
    return n


def _commit_history(pl: Pipeline, repo: Path) -> None:
    """One commit per change of the files' text, at the time of the change."""
    named = [u for u in pl.uses if u.named]
    times = sorted({u.since for u in named} | {u.until for u in named if u.until is not None})
    before: dict[str, str] = {}
    for t in times:
        files = repo_files(pl, t)
        if files == before:
            continue
        for rel in before.keys() - files.keys():
            (repo / rel).unlink()
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        _git(repo, ["add", "-A", "--", *sorted(before.keys() | files.keys())])
        what = "start" if not before else "change image references"
        _git(repo, ["commit", "-q", "--no-verify", "-m", f"{pl.name}: {what}"], when=t)
        before = files


def write_meta(w: Workload, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    w.catalogue.save(out / "catalogue.json")
    labels: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for (region, day), kinds in sorted(w.labels.items()):
        labels[region][day.strftime("%Y-%m-%d")] = sorted(kinds)
    (out / "labels.json").write_text(json.dumps(labels, indent=1))


def load_labels(path: Path) -> dict[tuple[str, pd.Timestamp], set[str]]:
    data = json.loads(path.read_text())
    return {(r, pd.Timestamp(d)): set(k) for r, days in data.items() for d, k in days.items()}
