"""Static references dated by git history: real repositories built with dated commits."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from analytics import store
from analytics.backtest import backtest
from analytics.frames import normalise_static, static_at, usage_from_pulls
from analytics.generate.workload import Params, Workload, generate
from analytics.generate.write import write_repos
from analytics.rank import rank
from analytics.staticrefs import StaticRef, scan_paths
from analytics.staticrefs.gitlog import git_env
from analytics.staticrefs.history import Dated, date_refs
from warmer.cli.main import cli

X = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
Y = datetime(2024, 5, 9, 15, 30, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


class Repo:
    """A git work tree in ``path`` with commits at chosen dates (no git config needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, when: datetime | None = None) -> str:
        env = git_env()
        if when is not None:
            stamp = f"@{int(when.timestamp())} +0000"
            env |= {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        ident = ["-c", "user.name=t", "-c", "user.email=t@t.invalid", "-c", "commit.gpgsign=false"]
        done = subprocess.run(
            ["git", "-C", str(self.path), *ident, *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def commit(self, when: datetime, files: dict[str, str | None], msg: str = "c") -> str:
        for rel, text in files.items():
            path = self.path / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--no-verify", "--allow-empty", "-m", msg, when=when)
        return self.git("rev-parse", "HEAD")


def dated(root: Path, max_revisions: int = 200, git: str = "git") -> tuple[list[Dated], list[str]]:
    found: list[StaticRef] = []
    scanned: list[str] = []
    assert list(scan_paths([root], found.append, scanned.append)) == []
    report = date_refs([root], found, scanned, NOW, max_revisions, git)
    return report.dated, report.notes


def by_ref(rows: list[Dated]) -> dict[tuple[str, bool], Dated]:
    return {(str(d.ref.reference).rsplit("/", 1)[-1], d.present): d for d in rows}


def test_a_from_added_on_day_x_is_first_seen_x(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    repo.commit(X - timedelta(days=3), {"README": "hi\n"})
    sha = repo.commit(X, {"Dockerfile": "FROM alpine:3.19\nRUN true\n"})
    repo.commit(X + timedelta(days=1), {"Dockerfile": "FROM alpine:3.19\nRUN false\n"})
    rows, notes = dated(tmp_path)
    assert notes == []
    [d] = rows
    assert (d.first_seen, d.last_seen, d.present, d.dated_by, d.added_in) == (
        X,
        NOW,
        True,
        "git",
        sha,
    )
    assert d.to_json()["dated_by"] == "git" and d.ref.line == 1


def test_a_replaced_from_ends_the_old_image_and_starts_the_new(tmp_path: Path) -> None:
    """The old image's last_seen and the new one's first_seen are the replacing commit's
    date, also when the image comes from an ARG default and the FROM line is untouched."""
    repo = Repo(tmp_path / "app")
    head = "ARG BASE=python:3.11\nFROM ${BASE}\n"
    repo.commit(X, {"Dockerfile": head, "compose.yaml": "services:\n  db:\n    image: redis:7\n"})
    sha = repo.commit(Y, {"Dockerfile": head.replace("3.11", "3.12")})
    rows, _ = dated(tmp_path)
    got = by_ref(rows)
    old, new = got[("python:3.11", False)], got[("python:3.12", True)]
    assert (old.first_seen, old.last_seen, old.removed_in, old.dated_by) == (X, Y, sha, "git")
    assert (new.first_seen, new.added_in) == (Y, sha)
    assert got[("redis:7", True)].first_seen == X
    assert len(rows) == 3


def test_store_and_cli_keep_removals_and_commit_dates(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    repo.commit(X, {"Dockerfile": "FROM node:20\n", "old/Dockerfile": "FROM golang:1.21\n"})
    repo.commit(Y, {"Dockerfile": "FROM node:22\n", "old/Dockerfile": None})
    url = f"sqlite:///{tmp_path / 'w.db'}"
    for _ in range(2):  # a rescan changes nothing
        code, out, err = invoke("refs", str(tmp_path / "app"), "--json", "--db", url)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        frame = store.static_frame(url)
        assert len(rows) == len(frame) == 3
        f = frame.set_index("reference")
        node20, node22 = "docker.io/library/node:20", "docker.io/library/node:22"
        golang = "docker.io/library/golang:1.21"
        assert f.loc[node20, "first_seen"] == pd.Timestamp(X)
        assert f.loc[node20, "removed"] == pd.Timestamp(Y)
        assert f.loc[golang, "removed"] == pd.Timestamp(Y)  # its file was deleted
        assert f.loc[node22, "first_seen"] == pd.Timestamp(Y) and pd.isna(f.loc[node22, "removed"])
        assert {r["dated_by"] for r in rows} == {"git"}
        assert "1 repository" in err
    st = normalise_static(store.static_frame(url))
    day = pd.Timestamp("2024-05-05")
    assert set(static_at(st, day)["tag"]) == {"20", "1.21"}
    assert set(static_at(st, pd.Timestamp("2024-05-10"))["tag"]) == {"22"}
    code, out, _ = invoke("refs", str(tmp_path / "app"), "--no-store")
    assert code == 0 and "(removed)" in out and "2024-05-02 to 2024-05-09 git" in out


def test_merges_date_by_the_default_branch_and_uncommitted_by_scan(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    repo.commit(X, {"Dockerfile": "FROM alpine:3.19\n"})
    repo.git("checkout", "-q", "-b", "feature")
    repo.commit(X + timedelta(days=1), {"compose.yaml": "services:\n  a:\n    image: redis:7\n"})
    repo.git("checkout", "-q", "main")
    merged = Y
    repo.git("merge", "-q", "--no-ff", "--no-verify", "-m", "merge", "feature", when=merged)
    (repo.path / "k8s.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\nspec:\n  containers:\n"
        "    - name: a\n      image: nginx:1.25\n"
    )
    rows, _ = dated(tmp_path)
    got = by_ref(rows)
    assert got[("redis:7", True)].first_seen == merged  # landed on the branch at the merge
    assert got[("nginx:1.25", True)].dated_by == "scan"  # not committed: scan time
    assert got[("nginx:1.25", True)].first_seen == NOW
    assert got[("alpine:3.19", True)].first_seen == X


def test_outside_git_without_git_or_history_off_dates_at_scan_time(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Dockerfile").write_text("FROM alpine:3.19\n")
    rows, notes = dated(plain)
    assert [(d.first_seen, d.dated_by) for d in rows] == [(NOW, "scan")]
    assert notes == ["1 file(s) not in a git work tree: dated at the scan time"]
    repo = Repo(tmp_path / "app")
    repo.commit(X, {"Dockerfile": "FROM alpine:3.19\n"})
    rows, notes = dated(repo.path, git="no-such-git-here")
    assert [d.dated_by for d in rows] == ["scan"] and len(notes) == 1 and "not found" in notes[0]
    rows, notes = dated(repo.path, max_revisions=0)
    assert [d.dated_by for d in rows] == ["scan"] and notes == []


def test_revisions_are_bounded_and_the_cut_is_said(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "app")
    for i in range(4):
        repo.commit(X + timedelta(days=i), {"Dockerfile": f"FROM alpine:3.19\nRUN echo {i}\n"})
    rows, notes = dated(tmp_path, max_revisions=2)
    assert [d.first_seen for d in rows] == [X + timedelta(days=2)]
    assert len(notes) == 1 and "more than 2 revisions" in notes[0]


@pytest.fixture(scope="module")
def small() -> Workload:
    return generate(Params(weeks=3, seed=4, pipelines_per_region=8))


@pytest.mark.timeout(300)
def test_generated_repositories_date_references_as_the_ground_truth(
    small: Workload, tmp_path: Path
) -> None:
    """Each generated repository's history names each image when the workload does; the
    backtest's static baseline scores on them (it was 0 with scan-time dates)."""
    write_repos(small, tmp_path)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    code, _, err = invoke("refs", str(tmp_path / "repos"), "--db", url)
    assert code == 0, err
    frame = store.static_frame(url)
    got = {
        (str(Path(f).relative_to(tmp_path / "repos")), r, a.floor("s"), b)
        for f, r, a, b in zip(
            frame["file"], frame["reference"], frame["first_seen"], frame["removed"], strict=True
        )
    }
    truth = small.static
    # A use migrated away before it started (a new pipeline's, migrated before its first
    # run) is never named in any revision: its span is empty.
    truth = truth[~(truth["removed"] <= truth["first_seen"])]
    want = {
        (f, r, a.floor("s"), b.floor("s") if not pd.isna(b) else pd.NaT)
        for f, r, a, b in zip(
            truth["file"], truth["reference"], truth["first_seen"], truth["removed"], strict=True
        )
    }
    assert {(f, r, a, str(b)) for f, r, a, b in got} == {(f, r, a, str(b)) for f, r, a, b in want}
    assert truth["removed"].notna().any()  # migrations: removals are dated too
    usage = usage_from_pulls(small.pulls)
    by_git = backtest(usage, frame, "eu", 2 << 30, small.catalogue)
    scan_url = f"sqlite:///{tmp_path / 'scan.db'}"
    code, _, err = invoke("refs", str(tmp_path / "repos"), "--db", scan_url, "--max-revisions", "0")
    assert code == 0, err
    by_scan = backtest(usage, store.static_frame(scan_url), "eu", 2 << 30, small.catalogue)

    def static_hits(days: pd.DataFrame) -> float:
        return float(days[days["strategy"] == "static"]["hit_bytes"].sum())

    assert static_hits(by_git) > 0
    assert static_hits(by_scan) == 0  # scanned after the history: named "in the future"


def test_a_newly_committed_from_predicts_the_adoption_before_the_first_pull(
    tmp_path: Path,
) -> None:
    repo = Repo(tmp_path / "svc")
    repo.commit(datetime(2024, 4, 1, tzinfo=UTC), {"Dockerfile": "FROM alpine:3.19\n"})
    committed = datetime(2024, 5, 8, 16, 0, tzinfo=UTC)
    repo.commit(
        committed,
        {"Dockerfile": "FROM golang:1.22 AS build\nRUN go build\nFROM alpine:3.19\n"},
    )
    url = f"sqlite:///{tmp_path / 'w.db'}"
    assert invoke("refs", str(repo.path), "--db", url)[0] == 0
    static = store.static_frame(url)
    first_pull = pd.Timestamp("2024-05-10")
    rows = []
    for day in pd.date_range("2024-05-01", "2024-05-14"):
        rows.append((day, 9, "eu", "docker.io/library/alpine", "3.19", 12))
        if day >= first_pull:
            rows.append((day, 10, "eu", "docker.io/library/golang", "1.22", 6))
    usage = pd.DataFrame(
        [(d, h, r, i, t, "", "docker", n, 0, 1) for d, h, r, i, t, n in rows],
        columns=["day", "hour", "region", "image", "tag", "digest", "source", "pulls",
                 "present", "pipelines"],
    )  # fmt: skip
    golang = static[static["image"] == "docker.io/library/golang"]
    assert golang["first_seen"].iloc[0] == pd.Timestamp(committed)
    assert golang["first_seen"].iloc[0] < first_pull.tz_localize("UTC")
    before = pd.Timestamp("2024-05-09")  # the day after the commit, before any pull of it
    ranked = rank(usage[usage["day"] < before], static, before, region="eu")
    row = ranked[ranked["image"] == "docker.io/library/golang"]
    assert len(row) == 1 and float(row["score"].iloc[0]) > 0
    days = backtest(usage, static, "eu", 2 << 30)
    # Ranked at midnight before its first pull day, the static strategy's warm set already
    # holds golang: every pull of both images hits.
    first = days[(days["day"] == first_pull) & (days["strategy"] == "static")].iloc[0]
    assert first["hit_pulls"] == first["pulls"] == 18
    assert os.path.isdir(repo.path / ".git")


def test_a_committed_move_off_an_image_halves_its_prediction_before_its_pulls_fall(
    tmp_path: Path,
) -> None:
    """Two services named node:20; on a Friday afternoon one moved to node:22. Ranked from
    the store the next Monday, before any pull says so, node:20 is expected at half."""
    repo = Repo(tmp_path / "svc")
    start = datetime(2024, 4, 1, tzinfo=UTC)
    repo.commit(start, {"a/Dockerfile": "FROM node:20\n", "b/Dockerfile": "FROM node:20\n"})
    repo.commit(datetime(2024, 5, 10, 15, 0, tzinfo=UTC), {"b/Dockerfile": "FROM node:22\n"})
    url = f"sqlite:///{tmp_path / 'w.db'}"
    assert invoke("refs", str(repo.path), "--db", url)[0] == 0
    static = store.static_frame(url)
    rows = [
        (day, 9, "eu", "docker.io/library/node", "20", "", "docker", 30, 0, 2)
        for day in pd.date_range("2024-04-15", "2024-05-10")
        if day.dayofweek < 5
    ]
    usage = pd.DataFrame(
        rows,
        columns=["day", "hour", "region", "image", "tag", "digest", "source", "pulls",
                 "present", "pipelines"],
    )  # fmt: skip
    monday = pd.Timestamp("2024-05-13")
    node = rank(usage, static, monday, region="eu").set_index("tag").loc["20"]
    assert float(node["score"]) == pytest.approx(15, rel=0.05)
    assert "named in 1 of the 2 files that named it" in node["reasons"]
