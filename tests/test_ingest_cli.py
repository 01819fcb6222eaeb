"""``warmer ingest`` and ``warmer refs`` through the real click command."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from analytics import store
from warmer.cli.main import cli

DATA = Path(__file__).parent / "data"


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["--config", "/nonexistent.toml", *args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_dry_run_json_prints_one_event_per_line(tmp_path: Path) -> None:
    code, out, _ = invoke(
        "ingest",
        str(DATA / "logs" / "github-job.log"),
        "--dry-run",
        "--json",
        "--region",
        "eu",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    assert set(rows[0]) == {
        "timestamp",
        "reference",
        "digest",
        "source",
        "pipeline",
        "region",
        "pulled",
    }
    assert rows[1] == {
        "timestamp": "2024-05-01T10:00:05.713551+00:00",
        "reference": "docker.io/library/node:20-bookworm",
        "digest": "sha256:402699de92fc20f3eaa1098d108a1ff2cab5245f8984d858a772572fb932dcc0",
        "source": "github",
        "pipeline": "acme/shop/.github/workflows/ci.yml",
        "region": "eu",
        "pulled": True,
    }
    assert not (tmp_path / "x.db").exists()  # a dry run stores nothing


def test_store_summary_json_and_bad_file_warns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(bytes(range(256)) * 100)
    code, out, err = invoke(
        "ingest",
        str(bad),
        str(DATA / "logs" / "jenkins-console.log"),
        "--json",
        "--db",
        url,
        "--rule",
        "agent-us-*=us",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["events"] == 2 and summary["formats"] == {
        "jenkins": {"files": 1, "events": 2, "unused_lines": 0, "coverage": 1.0}
    }
    assert summary["unused_lines"] == 0 and summary["coverage"] == 1.0
    assert err.count("warning:") == 1 and "garbage.bin" in err
    assert set(store.usage_frame(url)["region"]) == {"us"}
    code, out, _ = invoke("ingest", str(DATA / "logs" / "jenkins-console.log"), "--db", url)
    assert code == 0 and "1 unchanged, 0 event(s)" in out


def test_bad_usage_exits_2() -> None:
    assert invoke("ingest", "/no/such/path", "--dry-run")[0] == 2
    code, _, err = invoke("ingest", str(DATA / "logs"), "--dry-run", "--rule", "nonsense")
    assert code == 2 and "nonsense" in err
    assert invoke("ingest", str(DATA / "logs"), "--dry-run", "--at", "yesterday")[0] == 2


def test_refs_json_and_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    code, out, err = invoke("refs", str(DATA / "static" / "repo"), "--json", "--db", url)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert {"file", "line", "reference", "kind"} <= set(rows[0])
    assert len(rows) == len(store.static_frame(url))
    assert err.count("warning:") == 4  # each names file:line (or file) and the rest goes on
    code, out, _ = invoke(
        "refs", str(DATA / "static" / "repo" / "docker-compose.yml"), "--no-store"
    )
    assert code == 0 and "docker-compose.yml:7" in out and "(linux/amd64)" in out
