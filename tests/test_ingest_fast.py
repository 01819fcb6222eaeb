"""The fast paths of ingest give the same answers as the plain ones.

Hyperscan line selection against one ``bytes.find`` pass per keyword, one-pass format
detection against the rules applied one by one, and the batched store (one lookup query and
one transaction per batch of files) against what per-file ingest guarantees: idempotence,
rotated copies counted once, appended logs continued, failed files not half stored.
"""

from __future__ import annotations

import gzip
import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from analytics import store
from analytics.ingest import Options, detect, ingest, session
from analytics.ingest.ci import GitHubParser, GitLabParser, JenkinsParser
from analytics.ingest.clients import KEYWORDS
from analytics.ingest.detect import detect_bytes
from analytics.ingest.distribution import DistributionParser
from analytics.ingest.kubelet import KubeletParser
from analytics.ingest.select import literal_set, select_find, selector

LOGS = Path(__file__).parent / "data" / "logs"
AT = datetime(2024, 5, 1, 12, tzinfo=UTC)
KEYWORD_SETS = [
    GitHubParser.keywords,
    GitLabParser.keywords,
    JenkinsParser.keywords,
    KEYWORDS,
    KubeletParser.keywords,
    DistributionParser.keywords,
]


def samples() -> list[bytes]:
    return [p.read_bytes() for p in sorted(LOGS.iterdir())]


def test_hyperscan_selects_the_same_lines_as_find() -> None:
    rng = random.Random(7)
    blocks = samples()
    joined = b"".join(blocks)
    for _ in range(50):  # random cuts: no final newline, keyword at the very start or end
        a, b = sorted(rng.randrange(len(joined)) for _ in range(2))
        blocks.append(joined[a:b])
    blocks += [b"", b"\n\n", b"Status: ", b"x Status: y Pulling from z\nDONE"]
    for keywords in KEYWORD_SETS:
        fast, slow = selector(keywords), selector(keywords, fast=False)
        for block in blocks:
            assert fast(block) == slow(block) == select_find(block, keywords)
    # Several keywords on one line give that line once.
    line = b"Status: Downloaded newer image for a:1 Pulling from b Digest: sha256:x\n"
    assert selector(KEYWORDS)(line * 2) == [(0, len(line) - 1), (len(line), 2 * len(line) - 1)]


def test_literal_set_finds_literals_and_anchored_regexes() -> None:
    find = literal_set([b"abc", b"\n#"], regexes={"start#": rb"^#", "num": rb"[0-9]{3}"})
    assert find(b"xx abc\n#1 12") == {"abc", "\n#"}
    assert find(b"#abc 123") == {"abc", "start#", "num"}
    assert find(b"") == set()


@pytest.mark.parametrize("path", sorted(LOGS.iterdir()), ids=lambda p: p.name)
def test_detection_from_bytes_and_text_agree(path: Path) -> None:
    head = path.read_bytes()[: 64 << 10]
    fmt = detect(head.decode("utf-8", "replace"))
    assert fmt is not None
    assert detect_bytes(head) == fmt
    # A shorter head that still holds the markers, and CRLF line ends, decide the same.
    assert detect_bytes(head.replace(b"\n", b"\r\n")) == fmt


def test_detection_thresholds_kept() -> None:
    stamped = "".join(f"2024-05-01T10:00:0{i}.1234567Z line {i}\n" for i in range(5))
    plain = "".join(f"line {i}\n" for i in range(5))
    assert detect(stamped + "Status: Image is up to date for a:1\n") == "github"
    # Fewer than half of the first non-blank lines stamped: not a GitHub log.
    assert detect(stamped[:80] + plain + "Status: Image is up to date for a:1\n") == "docker"
    assert detect("#1 [internal] load build definition from Dockerfile\n") == "buildkit"
    assert detect("echo\n#3 DONE 0.1s\n") == "buildkit"
    assert detect("# a comment\n") is None
    assert detect(
        '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET /v2/a/manifests/1 HTTP/1.1" 200'
    ) == ("distribution")


def _many(tmp_path: Path, n: int) -> Path:
    """``n`` distinct small job logs (and one failing file) in a directory."""
    logs = tmp_path / "logs"
    logs.mkdir()
    base = (LOGS / "docker-pull.log").read_text()
    for i in range(n):
        (logs / f"job-{i:03d}.log").write_text(f"job {i}\n" + base)
    (logs / "job-broken.gz").write_bytes(gzip.compress(base.encode() * 50)[:60])
    return logs


def test_batches_store_like_single_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = _many(tmp_path, 12)
    one = f"sqlite:///{tmp_path / 'one.db'}"
    many = f"sqlite:///{tmp_path / 'many.db'}"
    monkeypatch.setattr(session, "BATCH_FILES", 1)
    first = ingest([logs], Options(default_time=AT), url=one)
    monkeypatch.setattr(session, "BATCH_FILES", 5)  # batch boundaries inside the walk
    monkeypatch.setattr(session, "BATCH_BUCKETS", 3)  # and flushes inside a batch
    second = ingest([logs], Options(default_time=AT), url=many)
    assert first.events == second.events > 12
    assert len(second.warnings) == 1 and "job-broken.gz" in second.warnings[0]
    pd.testing.assert_frame_equal(store.usage_frame(one), store.usage_frame(many))
    again = ingest([logs], Options(default_time=AT), url=many)
    assert again.events == 0 and again.unchanged == 12
    pd.testing.assert_frame_equal(store.usage_frame(one), store.usage_frame(many))


def test_copy_in_the_same_batch_counts_once_and_appends_continue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(LOGS / "podman-pull.log", d / "a.log")
    shutil.copy(LOGS / "podman-pull.log", d / "b.log")  # a rotated copy, same batch
    report = ingest([d], Options(default_time=AT), url=url)
    assert report.events_by_format["podman"] == 3 and report.unchanged == 1
    total = int(store.usage_frame(url)["pulls"].sum())
    with open(d / "b.log", "a") as f:
        f.write(
            "Trying to pull docker.io/library/redis:7...\nWriting manifest to image destination\n"
        )
    grown = ingest([d], Options(default_time=AT), url=url)
    assert grown.events == 1 and grown.unchanged == 1
    assert int(store.usage_frame(url)["pulls"].sum()) == total + 1


def test_batched_store_on_postgres(pg_url: str, tmp_path: Path) -> None:
    # The batch's IN lookup, executemany insert and id-keyed updates on the other dialect.
    logs = _many(tmp_path, 4)
    shutil.copy(logs / "job-000.log", logs / "job-copy.log")
    first = ingest([logs], Options(default_time=AT), url=pg_url)
    assert first.unchanged == 1 and len(first.warnings) == 1
    again = ingest([logs], Options(default_time=AT), url=pg_url)
    assert again.events == 0 and again.unchanged == 5
    assert int(store.usage_frame(pg_url)["pulls"].sum()) == first.events
