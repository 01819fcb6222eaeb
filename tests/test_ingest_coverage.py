"""Undercount is never silent, and the generator's concatenated BuildKit logs are counted.

Ingest counts, per format and file, the lines that look like an image reference but gave
no event; ``warmer ingest`` prints the count and the coverage, ``--json`` a redacted sample
with ``file:line``, and the service exports the coverage as a Prometheus gauge.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from analytics.generate.expected import logged_pulls
from analytics.generate.workload import Params, generate
from analytics.generate.write import write_logs
from analytics.ingest import Options, ingest
from jobs.metrics import Metrics
from warmer.cli.main import cli

UNUSABLE = """$ docker pull alpine:3.19
3.19: Pulling from library/alpine
Digest: sha256:c5b1261d6d3e43071626931fc004f70149baeba2c8ec672bd4f27761f8e1ad6b
Status: Downloaded newer image for alpine:3.19
Fetching image ghcr.io/acme/runner:2.1 for the job
Pulling image registry.example.com/app:1.0 with --password hunter2
"""


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["--config", "/nonexistent.toml", *args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.timeout(300)
def test_concatenated_buildkit_logs_are_counted(tmp_path: Path) -> None:
    work = generate(Params(weeks=1, seed=11, pipelines_per_region=10))
    written = write_logs(work, tmp_path, noise=1, gzip_every=0, concat_buildkit=True, variants=True)
    logs = sorted((tmp_path / "logs").glob("*/buildkit/*/*.log"))
    texts = [p.read_text() for p in logs]
    builds = sum(t.count("+ echo 'run ") for t in texts)
    headers = sum(t.count("#0 building with") for t in texts)
    assert builds > 2 * len(logs) and headers == len(logs)  # consecutive builds, one header
    got: Counter[str] = Counter()
    report = ingest([tmp_path / "logs"], Options(), on_event=lambda e: got.update([e.source]))
    want = written.pulls  # per format written: CircleCI, Cloud Build, CodeBuild among them
    assert sum(want.values()) == sum(logged_pulls(work).values())
    assert {"circleci", "cloudbuild", "codebuild", "buildkite"} <= set(got)
    assert all(got[f] >= 0.99 * n for f, n in want.items())
    assert sum(got.values()) >= 0.99 * sum(want.values())
    assert report.unused == 0 and report.coverage == 1.0


def test_unusable_lines_are_counted_and_shown(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text(UNUSABLE)
    code, out, err = invoke("ingest", str(log), "--dry-run")
    assert code == 0 and out.count("alpine:3.19") == 1
    assert "2 line(s) look like an image reference but gave no event" in err
    assert "coverage 33.3%" in err and f"{log}:5: Fetching image ghcr.io/acme/runner:2.1" in err
    code, out, err = invoke("ingest", str(log), "--json", "--db", f"sqlite:///{tmp_path / 'w.db'}")
    summary = json.loads(out)
    assert summary["unused_lines"] == 2 and summary["coverage"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["formats"]["docker"]["unused_lines"] == 2
    assert summary["unused_files"] == {str(log): 2}
    sample = summary["unused_sample"]
    assert [(s["file"], s["line"]) for s in sample] == [(str(log), 5), (str(log), 6)]
    assert "hunter2" not in out + err and "<redacted>" in sample[1]["text"]
    assert "warning: 2 line(s)" in err  # --json: the count is said on stderr too


def test_a_file_of_no_known_format_counts_its_image_lines_as_unused(tmp_path: Path) -> None:
    (tmp_path / "job.log").write_text(UNUSABLE)
    # A CI system no parser knows: skipped, but what it names is not lost in silence.
    other = tmp_path / "other-ci.log"
    other.write_text(
        "==> Preparing the job\nfetching image ghcr.io/acme/runner:2.1 for the job\n"
        "pulling image node:20 for the build\nall done\n"
    )
    (tmp_path / "notes.txt").write_text("nothing about images here\n")
    code, out, err = invoke("ingest", str(tmp_path), "--dry-run")
    assert code == 0 and out.count("alpine:3.19") == 1  # the known file's pull
    assert (
        f"{other}: no known log format in its first lines; skipped (2 line(s) in it look like"
        " image uses" in err
    )
    assert f"{tmp_path / 'notes.txt'}: no known log format in its first lines; skipped\n" in err
    assert "4 line(s) look like an image reference but gave no event (coverage 20.0%)" in err
    assert f"{other}:2: fetching image ghcr.io/acme/runner:2.1 for the job" in err
    report = ingest([tmp_path], Options())
    summary = report.as_dict()
    assert summary["formats"]["unknown"] == {  # type: ignore[index]
        "files": 1,
        "events": 0,
        "unused_lines": 2,
        "coverage": 0.0,
    }
    assert summary["skipped_files"]["unknown_format"] == 2  # type: ignore[index]


def test_coverage_gauge(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text(UNUSABLE)
    report = ingest([log], Options())
    metrics = Metrics(f"sqlite:///{tmp_path / 'm.db'}", [])
    metrics.observe_ingest(report.as_dict())
    text = metrics.scrape().decode()
    assert 'warmer_ingest_unused_lines{format="docker"} 2.0' in text
    assert 'warmer_ingest_coverage{format="docker"} 0.3333' in text


def test_suspect_lines_same_with_and_without_hyperscan() -> None:
    from analytics.ingest.select import line_ends
    from analytics.ingest.unused import SUSPECT_PATTERNS

    block = (UNUSABLE + "STEP 1/2: FROM fedora\nnoise line\n" + "x" * 100 + "\n").encode()
    fast, slow = line_ends(SUSPECT_PATTERNS)(block), line_ends(SUSPECT_PATTERNS, fast=False)(block)
    assert fast == slow and len(fast) == 5 and all(block[e : e + 1] == b"\n" for e in fast)


def test_samples_are_redacted_and_cut() -> None:
    from analytics.ingest.unused import SAMPLE_CHARS, redact

    line = "\x1b[31mdocker login -p s3cr3t https://bob:pw@reg.example.com token=abc\x1b[0m"
    out = redact(line)
    assert "s3cr3t" not in out and "bob:pw" not in out and "abc" not in out and "\x1b" not in out
    assert len(redact("FROM x:1 " * 100)) == SAMPLE_CHARS


def test_a_binary_file_is_skipped_without_a_scan(tmp_path: Path) -> None:
    blob = tmp_path / "image.bin"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + b"pulling image node:20 for the build\n" * 3)
    report = ingest([blob], Options())
    assert [f.problem for f in report.files] == ["unknown-format"]
    assert report.unused == 0 and "look like image uses" not in (report.files[0].warning or "")


def test_a_file_of_no_known_format_is_scanned_once_and_then_only_its_new_lines(
    tmp_path: Path,
) -> None:
    # `warmer serve` ingests a directory again and again: an unknown file's lines count
    # against the coverage once, and a file that grows is scanned from where it stopped.
    logs = tmp_path / "logs"
    logs.mkdir()
    other = logs / "other-ci.log"
    head = "".join(f"==> step {i}: preparing the job\n" for i in range(60))  # over a KiB
    other.write_text(head + "fetching image ghcr.io/acme/runner:2.1 for the job\n")
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first = ingest([logs], Options(), url=url)
    assert first.unused == 1 and first.unchanged == 0
    again = ingest([logs], Options(), url=url)
    assert again.unused == 0 and again.unchanged == 1
    assert "skipped" in (again.files[0].warning or "")  # still said: nothing reads it
    with other.open("a") as f:
        f.write("pulling image node:20 for the build\npulling image redis:7 too\n")
    grown = ingest([logs], Options(), url=url)
    assert grown.unused == 2 and grown.files[0].start > 0
    assert "(2 new line(s) in it look like image uses" in (grown.files[0].warning or "")
    # Named later with --format, it is read whole by that parser, not from the scan's offset.
    named = ingest([logs], Options(format="docker"), url=url)
    assert named.files[0].start == 0 and named.files[0].format == "docker"
    assert named.files[0].stats.lines == 63
    # A file rewritten under the same head is scanned from its start again.
    other.write_text(head + "pulling image alpine:3 now\n")
    rewritten = ingest([logs], Options(), url=url)
    assert rewritten.files[0].start == 0 and rewritten.unused == 1
